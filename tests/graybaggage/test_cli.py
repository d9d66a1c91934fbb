"""The graybaggage command: routes, route, run (as a user runs it: a real subprocess)."""
from __future__ import annotations

import json
import os
import subprocess

from tests import support

TABLE = {"version": 1, "namespace": "default", "revision": "7", "lanes": {
    "gray": {"fallback": "base", "routes": {"spring-cloud-a": "spring-cloud-a-gray",
                                            "spring-cloud-c.default:20001": "spring-cloud-c-gray.default:20001"}},
    "blue": {"fallback": "strict", "routes": {}}}}


def gb(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GRAYBAGGAGE_")}
    full.update(env)
    return subprocess.run([str(support.BIN / "graybaggage"), *args], capture_output=True, text=True, env=full,
                          timeout=60)


def test_routes_prints_table_and_source(tmp_path):
    f = tmp_path / "lanes.json"
    f.write_text(json.dumps(TABLE))
    res = gb("routes", GRAYBAGGAGE_LANE_TABLE_FILE=str(f))
    assert res.returncode == 0, res.stderr
    assert f"source:    file {f}" in res.stdout
    assert "revision: 7" in res.stdout
    assert "gray         base      spring-cloud-a" in res.stdout
    assert "spring-cloud-c-gray.default:20001" in res.stdout
    assert "blue         strict    (no routes)" in res.stdout
    js = json.loads(gb("routes", "--json", GRAYBAGGAGE_LANE_TABLE_FILE=str(f)).stdout)
    assert js["source"] == "file" and js["table"] == TABLE


def test_routes_reports_broken_source(tmp_path):
    res = gb("routes", GRAYBAGGAGE_LANE_TABLE='{"version": 3, "lanes": {}}')
    assert res.returncode == 1
    assert "ERROR: version: expected 1, got 3" in res.stdout
    res = gb("routes")
    assert "every call stays on base" in res.stdout and res.returncode == 0


def test_route_explains_decisions():
    env = {"GRAYBAGGAGE_LANE_TABLE": json.dumps(TABLE)}
    out = gb("route", "--lane", "gray", "http://spring-cloud-a.default.svc.cluster.local:20001/a", **env).stdout
    assert "spring-cloud-a-gray.default.svc.cluster.local:20001" in out and "fallback: base" in out
    out = gb("route", "--lane", "gray", "http://spring-cloud-b:20001/b", **env).stdout
    assert "no instance of spring-cloud-b:20001: stays on base" in out
    out = gb("route", "--lane", "green", "http://spring-cloud-a:20001/", **env).stdout
    assert "'green' is not in the table" in out
    out = gb("route", "--lane", "Bad!", "http://spring-cloud-a:20001/", **env).stdout
    assert "is rejected" in out
    res = gb("route", "--lane", "gray", "not a url", **env)
    assert res.returncode == 2 and "'not a url' is not a host name" in res.stderr, res.stderr
    res = gb("route", "--lane", "gray", "ftp://spring-cloud-a/", **env)
    assert res.returncode == 2 and "unsupported scheme 'ftp'" in res.stderr, res.stderr


def test_run_errors_are_clear():
    res = gb("run")
    assert res.returncode == 2 and "missing the program" in res.stderr
    res = gb("run", "--", "definitely-not-a-command-xyz")
    assert res.returncode == 127 and "command not found" in res.stderr


_PROBE = r"""
import json, os, subprocess, sys
from graybaggage.distro import GraybaggageDistro as D
child = subprocess.run([sys.executable, "-c",
    "import json, os; from graybaggage.distro import GraybaggageDistro as D; "
    "print(json.dumps([D.mode, os.environ.get('OTEL_PYTHON_DISTRO')]))"], capture_output=True, text=True).stdout
print(json.dumps({"mode": D.mode, "distro_env": os.environ.get("OTEL_PYTHON_DISTRO"),
                  "pythonpath": os.environ.get("PYTHONPATH", "").split(os.pathsep), "cwd": os.getcwd(),
                  "child": json.loads(child)}))
"""


def _probe(tmp_path, **env: str) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GRAYBAGGAGE_")) and k != "PYTHONPATH"}
    res = subprocess.run([str(support.BIN / "graybaggage"), "run", "--", str(support.BIN / "python"), str(script)],
                         capture_output=True, text=True, env={**clean, **env}, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_run_leaves_no_distro_variable_behind_and_children_start_the_same_way(tmp_path):
    from graybaggage import _auto

    out = _probe(tmp_path)
    assert out["mode"] == "lanes" and out["distro_env"] is None  # instrumented, and the variable is gone
    assert out["pythonpath"][:2] == [os.path.dirname(_auto.__file__), str(tmp_path)], out  # hook, then cwd
    assert out["child"] == ["lanes", None], out  # a Python subprocess is switched on the same way


def test_run_keeps_a_distro_the_user_chose(tmp_path):
    out = _probe(tmp_path, OTEL_PYTHON_DISTRO="graybaggage", PYTHONPATH="/nonexistent-gb-test")
    assert out["mode"] == "lanes" and out["distro_env"] == "graybaggage"
    assert out["pythonpath"][-1] == "/nonexistent-gb-test"


def test_run_pythonpath_is_idempotent():
    from graybaggage import _auto
    from graybaggage.cli import run_pythonpath

    hook = os.path.dirname(_auto.__file__)
    once = run_pythonpath("/a:/b", "/w")
    assert once == os.pathsep.join([hook, "/w", "/a", "/b"])
    assert run_pythonpath(once, "/w") == once  # graybaggage run inside graybaggage run: no growth


def test_version_and_host_port_targets():
    res = gb("--version")
    assert res.returncode == 0 and res.stdout.strip() == "graybaggage 0.1.0"
    table = {"version": 1, "lanes": {"gray": {"routes": {"127.0.0.1:18003": "127.0.0.1:18013"}}}}
    out = gb("route", "--lane", "gray", "127.0.0.1:18003", GRAYBAGGAGE_LANE_TABLE=json.dumps(table)).stdout
    assert "lane 'gray': 127.0.0.1:18003 -> 127.0.0.1:18013  => http://127.0.0.1:18013" in out, out


def test_output_to_a_closed_pipe_exits_quietly(tmp_path):
    big = {"version": 1, "lanes": {f"l{i}": {"routes": {f"svc-{j}": f"svc-{j}-l{i}" for j in range(300)}}
                                   for i in range(20)}}
    f = tmp_path / "lanes.json"
    f.write_text(json.dumps(big))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYBAGGAGE_")}
    env["GRAYBAGGAGE_LANE_TABLE_FILE"] = str(f)
    for args in ("routes", "routes --json"):
        res = subprocess.run(f"{support.BIN / 'graybaggage'} {args} | head -1; echo \"rc=${{PIPESTATUS[0]}}\"",
                             shell=True, executable="/bin/bash", capture_output=True, text=True, env=env, timeout=60)
        assert res.stderr == "", res.stderr  # no BrokenPipeError traceback
        assert res.stdout.splitlines()[-1] in ("rc=0", "rc=141"), res.stdout
