"""A fresh virtualenv, graybaggage installed from this checkout, a one-file app under ``graybaggage run``."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request

from tests import support

APP = textwrap.dedent('''
    import json, os, urllib.request
    from wsgiref.simple_server import make_server

    NEXT = os.environ.get("NEXT")

    def app(environ, start_response):
        if NEXT:  # first hop: call ourselves on /leaf, report what the leaf saw
            with urllib.request.urlopen(NEXT + "/leaf") as r:
                body = r.read()
        else:
            body = json.dumps({"lane": environ.get("HTTP_X_MSE_TAG")}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    make_server("127.0.0.1", int(os.environ["PORT"]), app).serve_forever()
''')


def test_fresh_venv_install_and_run(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    res = subprocess.run(pip + [str(support.ROOT)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    app = tmp_path / "app.py"
    app.write_text(APP)
    leaf_port, front_port = support.free_port(), support.free_port()
    procs = []
    try:
        for port, nxt in ((leaf_port, ""), (front_port, f"http://127.0.0.1:{leaf_port}")):
            procs.append(subprocess.Popen(
                [str(venv / "bin" / "graybaggage"), "run", "--", str(venv / "bin" / "python"), str(app)],
                env={"PORT": str(port), "NEXT": nxt, "PATH": str(venv / "bin")}, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            support.wait_listening(port, procs[-1])
        req = urllib.request.Request(f"http://127.0.0.1:{front_port}/", headers={"x-mse-tag": "gray"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read()) == {"lane": "gray"}
        with urllib.request.urlopen(f"http://127.0.0.1:{front_port}/", timeout=10) as r:
            assert json.loads(r.read()) == {"lane": None}
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
