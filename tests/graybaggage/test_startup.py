"""A service says that lanes are on: one start-up line in every server's log at default log levels, a
did-you-mean for a typo'd variable, and ``graybaggage routes/route --pid`` agreeing with the running process
(its status file), including after its table file broke or was deleted. Real processes."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests import support

PY = str(support.BIN / "python")
APPS = str(support.ROOT / "tests" / "apps")


def _servers(port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    return {
        "uvicorn": ([PY, "-m", "uvicorn", "--app-dir", APPS, "--host", "127.0.0.1", "--port", str(port), "hop:asgi_app"], {}),
        "gunicorn": ([str(support.BIN / "gunicorn"), "--chdir", APPS, "-b", f"127.0.0.1:{port}", "-w", "2", "hop:wsgi_app"], {}),
        "flask": ([str(support.BIN / "flask"), "--app", "hop:make_flask", "run", "--port", str(port)],
                  {"PYTHONPATH": APPS}),
        "django": ([PY, support.HOP], {"HOP_KIND": "django"}),
    }


def _run_cmd(cmd: list[str]) -> list[str]:
    return [str(support.BIN / "graybaggage"), "run", "--", *cmd]


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn", "flask", "django"])
def test_startup_line_in_every_server_log_at_default_levels(server, tmp_path):
    port = support.free_port()
    cmd, env = _servers(port)[server]
    table = tmp_path / "lanes.json"
    table.write_text(json.dumps({"version": 1, "revision": "9", "lanes": {"gray": {"routes": {"a": "a-gray"}}}}))
    svc = support.start(server, {**env, "GRAYBAGGAGE_LANE_TABLE_FILE": str(table),
                                 "GRAYBAGGAGE_STATUS_DIR": str(tmp_path / "status")},
                        how="none", port=port, cmd=_run_cmd(cmd))
    try:
        support.get(svc.url + "/stats" if server != "django" else svc.url + "/x")
        lines = [ln for ln in svc.log.splitlines() if "graybaggage: on (graybaggage run)" in ln]
        assert len(lines) == 1, svc.log  # one line per process (gunicorn: its master, before forking workers)
        line = lines[0]
        assert "mode=lanes" in line and f"lane-table=file {table} (ok, 1 lane, 1 route, revision 9)" in line, line
        assert "hooks=flask,django,starlette,uvicorn,wsgi_servers,requests" in line and "status=" in line, line
    finally:
        svc.kill()


def test_quiet_silences_the_line_and_a_typo_gets_a_did_you_mean(tmp_path):
    env = {"HOP_KIND": "wsgi", "GRAYBAGGAGE_QUIET": "1", "GRAYBAGGAGE_LANE_TABEL_FILE": str(tmp_path / "x.json"),
           "GRAYBAGGAGE_DISABLED_INTEGRATIONS": "flsk", "GRAYBAGGAGE_STATUS_DIR": str(tmp_path)}
    svc = support.start("quiet", env)
    try:
        support.get(svc.url + "/x")
        assert "graybaggage: on" not in svc.log
        assert ("graybaggage: unknown variable GRAYBAGGAGE_LANE_TABEL_FILE is ignored; did you mean "
                "GRAYBAGGAGE_LANE_TABLE_FILE?") in svc.log, svc.log
        assert "unknown integration 'flsk' is ignored; did you mean flask?" in svc.log
    finally:
        svc.kill()


def test_conflicting_table_sources_are_reported(tmp_path):
    env = {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE_TABLE": '{"version": 1, "lanes": {}}',
           "GRAYBAGGAGE_LANE_TABLE_FILE": str(tmp_path / "lanes.json"), "GRAYBAGGAGE_STATUS_DIR": str(tmp_path)}
    svc = support.start("conflict", env)
    try:
        support.get(svc.url + "/x")
        assert ("GRAYBAGGAGE_LANE_TABLE and GRAYBAGGAGE_LANE_TABLE_FILE are set; the lane table comes from "
                "GRAYBAGGAGE_LANE_TABLE only") in svc.log, svc.log
    finally:
        svc.kill()


def gb(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GRAYBAGGAGE_")}
    full.update(env)
    return subprocess.run([str(support.BIN / "graybaggage"), *args], capture_output=True, text=True, env=full,
                          timeout=60)


def _wait(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_routes_and_route_ask_the_running_service_and_agree_with_its_traffic(tmp_path):
    c = support.start("c", {"HOP_KIND": "wsgi"})
    c_gray = support.start("c-gray", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray"})
    table = tmp_path / "lanes.json"
    good = {"version": 1, "revision": "3", "lanes": {"gray": {"routes": {f"127.0.0.1:{c.port}": f"127.0.0.1:{c_gray.port}"}}}}
    table.write_text(json.dumps(good))
    status = tmp_path / "status"
    b = support.start("b", {"HOP_KIND": "flask", "HOP_NEXT": c.url, "GRAYBAGGAGE_LANE_TABLE_FILE": str(table),
                            "GRAYBAGGAGE_STATUS_DIR": str(status)})
    pid = str(b.proc.pid)  # graybaggage run execs the program: same pid

    def leaf() -> str:
        return support.chain_of(support.get(b.url + "/x", {"x-mse-tag": "gray"}))[-1]["served"]

    def route() -> subprocess.CompletedProcess:
        return gb("route", "--pid", pid, "--status-dir", str(status), "--lane", "gray", f"127.0.0.1:{c.port}")

    try:
        listed = gb("status", "--status-dir", str(status))
        assert pid in listed.stdout and "ok, 1 routes" in listed.stdout, listed.stdout
        res = gb("routes", "--pid", pid, "--status-dir", str(status))
        assert res.returncode == 0 and f"127.0.0.1:{c_gray.port}" in res.stdout and "revision: 3" in res.stdout, res
        assert f"as routed by the running process {pid}" in res.stdout
        assert leaf() == "c-gray[gray]" and f"=> http://127.0.0.1:{c_gray.port}" in route().stdout

        # the file breaks: the service keeps its last good table; the CLI says so and agrees with the traffic
        table.write_text("{ not json")
        _wait(lambda: json.loads(gb("routes", "--json", "--pid", pid, "--status-dir", str(status)).stdout)["error"],
              "the service to report the broken file")
        own = gb("route", "--lane", "gray", f"127.0.0.1:{c.port}", GRAYBAGGAGE_LANE_TABLE_FILE=str(table),
                 GRAYBAGGAGE_STATUS_DIR=str(status))
        assert own.returncode == 1 and "cannot be read" in own.stdout and "--pid" in own.stdout, own
        res = route()
        assert "routes on its last good table (revision 3)" in res.stdout, res.stdout
        assert f"=> http://127.0.0.1:{c_gray.port}" in res.stdout and leaf() == "c-gray[gray]"

        # the file is deleted: an empty table, as for a deleted ConfigMap; CLI and traffic both say base
        table.unlink()
        _wait(lambda: "stays on base" in route().stdout, "the deleted file to empty the table")
        assert leaf() == "c[base]"
        assert "does not exist" in json.loads(gb("routes", "--json", "--pid", pid, "--status-dir",
                                                 str(status)).stdout)["error"]
    finally:
        for s in (b, c, c_gray):
            s.kill()
    assert gb("route", "--pid", pid, "--status-dir", str(status), "--lane", "gray", "c:1").returncode == 2
