"""Celery with a real Redis broker on 127.0.0.1: lanes ride in task headers and follow lane queues.

One base worker and one gray worker (``GRAYBAGGAGE_LANE=gray``), a producer sending from 8 threads, all started
with ``graybaggage run``; the apps (tests/apps/celery_app.py, celery_producer.py) never import graybaggage.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("celery")
redis = pytest.importorskip("redis")

from tests import support  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")
TASKS = int(os.environ.get("GRAYBAGGAGE_CELERY_TASKS", "1000"))


def table(revision: int, gray_queue: bool) -> str:
    lane: dict = {"routes": {}}
    if gray_queue:
        lane["queues"] = {"version": 1, "celery": ["tasks"]}
    return json.dumps({"version": 1, "revision": str(revision), "lanes": {"gray": lane}})


def wait_for(what: str, check, timeout: float = 120.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:] if log else ''}")


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, tmp: Path) -> None:
        self.log = tmp / f"{name}.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_"))}
        full.update({"PYTHONUNBUFFERED": "1", "PATH": f"{support.BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        full.update(env)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=str(support.ROOT))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, wait: float = 60) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def broker(tmp_path):
    if not REDIS_SERVER:
        pytest.skip("redis-server is not installed (tests/deps.sh, run by scripts/test, installs it)")
    port = support.free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    support.wait_listening(port, proc)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def worker(name: str, broker: str, tmp: Path, env: dict, concurrency: int = 4) -> Proc:
    cmd = [str(support.BIN / "graybaggage"), "run", "--", str(support.BIN / "python"), "-m", "celery", "-A",
           "tests.apps.celery_app", "worker", "-P", "threads", "-c", str(concurrency), "-Q", "tasks", "-n", f"{name}@%h",
           "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
    p = Proc(name, cmd, {"CELERY_BROKER": broker, **env}, tmp)
    wait_for(f"{name} worker ready", lambda: " ready." in p.text(), proc=p.proc, log=p.log)
    return p


def status_revision(pid: int, status_dir: Path) -> str | None:
    f = status_dir / f"{pid}.json"
    try:
        text = f.read_text()
    except OSError:
        return None
    return text


def test_tasks_follow_their_lane_and_gray_work_returns_to_base_when_the_gray_worker_goes(broker, tmp_path):
    r = redis.Redis.from_url(broker)
    status = tmp_path / "status"
    lanes = tmp_path / "lanes.json"
    lanes.write_text(table(1, gray_queue=True))
    common = {"GRAYBAGGAGE_LANE_TABLE_FILE": str(lanes), "GRAYBAGGAGE_STATUS_DIR": str(status),
              "GRAYBAGGAGE_FALLBACK_DOWN_SECONDS": "10"}
    base = worker("base", broker, tmp_path, common)
    # a slow gray worker: tasks are still queued for it when it stops
    gray = worker("gray", broker, tmp_path, {**common, "GRAYBAGGAGE_LANE": "gray", "TASK_SLEEP": "0.03"}, concurrency=2)
    assert "consuming tasks-gray (not the base queues tasks)" in gray.text(), gray.text()[-2000:]
    go = tmp_path / "go"
    producer = Proc("producer", [str(support.BIN / "graybaggage"), "run", "--", str(support.BIN / "python"),
                                 str(support.ROOT / "tests" / "apps" / "celery_producer.py")],
                    {"CELERY_BROKER": broker, "TASKS": str(TASKS), "THREADS": "8", "GO_FILE": str(go), **common},
                    tmp_path)
    try:
        half = TASKS // 2
        # mid-run: part of the first half has run, the rest is still queued
        wait_for("a fifth of the tasks to run", lambda: r.llen("results") >= TASKS // 5, proc=base.proc, log=base.log)
        # the lane goes away: the table first (what the controller publishes), then the gray worker stops. From
        # the table change on, a gray task may run on base (epoch 2); before it, never.
        r.set("epoch", 2)
        lanes.write_text(table(2, gray_queue=False))
        for p in (producer, gray):
            wait_for(f"{p.log.stem} to load revision 2",
                     lambda p=p: '"revision": "2"' in (status_revision(p.proc.pid, status) or ""), log=p.log)
        gray.stop(signal.SIGTERM)
        assert gray.proc.returncode == 0, gray.text()[-3000:]
        wait_for("the producer's first half", lambda: "sent-1" in producer.text(), proc=None, log=producer.log)
        go.write_text("go")
        wait_for("the producer's second half", lambda: "sent-2" in producer.text(), log=producer.log)
        wait_for(f"{TASKS} results", lambda: r.llen("results") >= TASKS, proc=base.proc, log=base.log)
        records = [json.loads(x) for x in r.lrange("results", 0, -1)]
    finally:
        producer.stop()
        gray.stop()
        base.stop()
    numbers = [x["no"] for x in records]
    assert sorted(numbers) == list(range(TASKS)), "lost or duplicated tasks"  # none lost, none twice
    for x in records:  # every task saw its lane, in baggage and in its headers
        assert x["ctx"] == x["sent"] and x["header"] == x["sent"], x
        if x["sent"] == "gray":
            assert "x-mse-tag=gray" in (x["baggage"] or ""), x
    base_on_gray = [x for x in records if x["worker"] == "gray" and x["sent"] is None]
    gray_on_base_before = [x for x in records if x["worker"] == "base" and x["sent"] == "gray" and x["epoch"] == 1]
    gray_on_gray = [x for x in records if x["worker"] == "gray"]
    gray_after = [x for x in records if x["sent"] == "gray" and x["epoch"] == 2 and x["worker"] == "base"]
    assert not base_on_gray, base_on_gray[:5]
    assert not gray_on_base_before, gray_on_base_before[:5]
    assert gray_on_gray, "the gray worker ran no task"
    assert gray_after
    second_half_gray = [x for x in records if x["sent"] == "gray" and x["no"] >= half]
    assert all(x["worker"] == "base" for x in second_half_gray)
    moved = [ln for ln in gray.text().splitlines() if "waiting task(s) from tasks-gray to tasks" in ln]
    assert len(moved) == 1 and " moved 0 " not in moved[0], moved  # the hand-back really ran
    assert r.llen("tasks-gray") == 0 and r.llen("tasks") == 0
    n_moved = int(moved[0].split(" moved ")[1].split()[0])
    print(f"\n{TASKS} tasks from 8 threads: {len(gray_on_gray)} gray tasks on the gray worker and 0 base tasks; "
          f"0 gray tasks on the base worker before the lane went away; {len(gray_after)} gray tasks on base after it "
          f"({n_moved} handed back from tasks-gray when the gray worker stopped); 0 lost, 0 twice")


BAD_HEADERS = [
    ("empty", {"x-mse-tag": ""}),
    ("64 chars", {"x-mse-tag": "a" * 64}),
    ("16 KB", {"x-mse-tag": "a" * 16384}),
    ("uppercase", {"x-mse-tag": "GRAY"}),
    ("punctuation", {"x-mse-tag": "gray!"}),
    ("NUL byte", {"x-mse-tag": "gray\x00"}),
    ("unicode", {"x-mse-tag": "灰度"}),
    ("looks like a host", {"x-mse-tag": "c-gray.default.svc.cluster.local"}),
    ("comma list", {"x-mse-tag": "gray,blue"}),
    ("not a string", {"x-mse-tag": 42}),
    ("a list", {"x-mse-tag": ["gray"]}),
    ("baggage uppercase", {"baggage": "x-mse-tag=GRAY"}),
    ("baggage duplicate key", {"baggage": "x-mse-tag=gray,x-mse-tag=blue"}),
    ("baggage 200 members", {"baggage": ",".join(f"k{i}=v" for i in range(200)) + ",x-mse-tag=gray"}),
    ("baggage not a string", {"baggage": {"x-mse-tag": "gray"}}),
    ("invalid header beats valid baggage", {"x-mse-tag": "GRAY", "baggage": "x-mse-tag=gray"}),
]


def test_bad_task_headers_run_on_base_and_a_task_calls_carry_its_lane(broker, tmp_path):
    """Task headers sent by hand (a producer without graybaggage): bad values run on base, logged once per kind;
    a valid lane runs in it, and the task's own HTTP call carries it (both carriers) to the lane's instance."""
    from celery import Celery

    r = redis.Redis.from_url(broker)
    with support.services(("c", {"HOP_KIND": "wsgi"}), ("c", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray"})) as (c, cg):
        lanes = tmp_path / "lanes.json"
        lanes.write_text(json.dumps({"version": 1, "lanes": {"gray": {"routes": {
            f"127.0.0.1:{c.port}": f"127.0.0.1:{cg.port}"}}}}))
        w = worker("base", broker, tmp_path, {"GRAYBAGGAGE_LANE_TABLE_FILE": str(lanes), "GRAYBAGGAGE_LANES": "gray,blue"})
        try:
            app = Celery("sender", broker=broker)
            app.conf.task_default_queue = "tasks"
            for no, (_name, headers) in enumerate(BAD_HEADERS):
                app.send_task("lanes.record", args=(no, None), headers=headers)
            app.send_task("lanes.record", args=(100, "gray"), headers={"x-mse-tag": "gray"})
            app.send_task("lanes.record", args=(101, "gray"), headers={"baggage": "k=v,x-mse-tag=gray"})
            app.send_task("lanes.call", args=(0, c.url + "/x"), headers={"x-mse-tag": "gray"})
            app.send_task("lanes.call", args=(1, c.url + "/x"))
            wait_for("every task", lambda: r.llen("results") >= len(BAD_HEADERS) + 2 and r.llen("calls") >= 2,
                     proc=w.proc, log=w.log)
        finally:
            w.stop()
        records = {x["no"]: x for x in map(json.loads, r.lrange("results", 0, -1))}
        calls = {x["no"]: x for x in map(json.loads, r.lrange("calls", 0, -1))}
    for no, (name, _headers) in enumerate(BAD_HEADERS):
        assert records[no]["ctx"] is None, (name, records[no])
    assert records[100]["ctx"] == "gray" and records[101]["ctx"] == "gray"
    assert calls[0]["ctx"] == "gray" and calls[0]["served"] == "c[gray]", calls[0]
    assert calls[0]["hop_header"] == "gray" and "x-mse-tag=gray" in calls[0]["hop_baggage"], calls[0]
    assert calls[1]["ctx"] is None and calls[1]["served"] == "c[base]" and calls[1]["hop_header"] is None
    lines = [ln for ln in w.text().splitlines() if "graybaggage: ignoring a lane in " in ln]
    assert 4 <= len(lines) == len(set(lines)), lines
    assert "Traceback" not in w.text(), w.text()[-3000:]
