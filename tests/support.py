"""Real processes on 127.0.0.1 for traffic tests: start, wait until listening, stop (whole process group)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
HOP = ROOT / "tests" / "apps" / "hop.py"
BIN = Path(sys.executable).parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on now, never the same one twice in this test process: a port is
    released before its server binds it, and six calls in a row once returned one port twice (b and c-gray
    of one seed: b failed to bind, c-gray answered in its place and the chain skipped b)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free 127.0.0.1 port not handed out before")


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections for the duration: bound but never listening, so no server
    started meanwhile (on port 0 or a :func:`free_port`) can be handed the same port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Service:
    """A hop process. ``url`` is its base URL; ``log`` its combined stdout/stderr so far."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int, logfile: Path) -> None:
        self.name, self.proc, self.port, self.logfile = name, proc, port, logfile
        self.url = f"http://127.0.0.1:{port}"

    @property
    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as r:
            return json.loads(r.read())["stats"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    stop = kill


def launcher(how: str) -> list[str]:
    """The command prefix that switches graybaggage on without code."""
    if how == "graybaggage-run":
        return [str(BIN / "graybaggage"), "run", "--"]
    if how == "opentelemetry-instrument":
        return [str(BIN / "opentelemetry-instrument"), "--distro", "graybaggage"]
    if how == "none":
        return []
    raise ValueError(how)


def start(name: str, env: dict[str, str], how: str = "graybaggage-run", port: int | None = None,
          cmd: list[str] | None = None, logdir: Path | None = None) -> Service:
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_", "HOP_"))}
    full_env.update({"HOP_NAME": name, "HOP_PORT": str(port), "PYTHONUNBUFFERED": "1",
                     "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    full_env.update(env)
    logdir = logdir or Path(tempfile.mkdtemp(prefix="gb-svc-"))
    logfile = logdir / f"{name}-{port}.log"
    out = open(logfile, "wb")
    command = launcher(how) + (cmd or [str(BIN / "python"), str(HOP)])
    proc = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(ROOT))
    out.close()
    svc = Service(name, proc, port, logfile)
    try:
        wait_listening(port, proc)
    except Exception as exc:
        svc.kill()
        raise RuntimeError(f"{name} failed to start: {exc}\n--- log ---\n{svc.log[-3000:]}") from None
    return svc


@contextlib.contextmanager
def services(*specs: tuple[str, dict[str, str]], how: str = "graybaggage-run") -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        for name, env in specs:
            started.append(start(name, env, how))
        yield started
    finally:
        for s in started:
            s.kill()


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 15) -> dict:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def chain_of(resp: dict) -> list[dict]:
    """Flatten a hop response into the list of hops, first to last."""
    out = []
    while resp:
        out.append(resp)
        resp = resp.get("next")
    return out


def served(resp: dict) -> str:
    """The human chain, e.g. ``a[gray] -> b[base] -> c[gray]``."""
    return " -> ".join(h["served"] for h in chain_of(resp))


def lane_reader_env(cluster, ns: str, tmp: Path, configmap: str = "graybaggage-lanes") -> dict[str, str]:
    """What a pod gets: a ServiceAccount allowed get/list/watch on exactly the lane-table ConfigMap.

    Creates it in ``ns`` on ``cluster`` (the tests/k8s fixture) and returns the library's env for it:
    API server, token file, CA file, namespace and ConfigMap name.
    """
    import base64

    kc = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cl = kc["clusters"][0]["cluster"]
    ca = tmp / "ca.crt"
    if "certificate-authority-data" in cl:
        ca.write_bytes(base64.b64decode(cl["certificate-authority-data"]))
    else:
        ca.write_bytes(Path(cl["certificate-authority"]).read_bytes())
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: lane-reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: lane-reader}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [{configmap}]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: lane-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: lane-reader}}
subjects: [{{kind: ServiceAccount, name: lane-reader, namespace: {ns}}}]
""")
    token = tmp / "token"
    token.write_text(cluster.kubectl("create", "token", "lane-reader", "-n", ns).stdout.strip())
    return {"GRAYBAGGAGE_K8S_SERVER": cl["server"], "GRAYBAGGAGE_K8S_TOKEN_FILE": str(token),
            "GRAYBAGGAGE_K8S_CA_FILE": str(ca), "GRAYBAGGAGE_NAMESPACE": ns,
            "GRAYBAGGAGE_LANE_TABLE_CONFIGMAP": configmap}
