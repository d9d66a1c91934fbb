"""Celery queues in the lane table, against the real control plane (same fixtures and helpers as
test_live.py / test_flow_live_extra.py).

A Celery worker Deployment (no Service) annotated `graybaggage.io/celery-queues` gets
`lanes.gray.queues = {"version": 1, "celery": [...]}` in the ConfigMap once its gray Deployment has a ready
pod; approve / rollback drop the queues in a table write that comes before the gray Deployment is deleted
(seen through watches, ordered by resourceVersion). A bad annotation gives a condition and a Warning Event,
never a broken table. Then a library process reading that ConfigMap (the library's Kubernetes source, a
least-privilege token) sends a Celery task in lane gray to `<queue>-gray` while the table lists the queue,
and to the base queue once it does not (a real redis-server as broker; no worker needed: the test reads the
broker's lists).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from graybaggage_controller import names as n
from graybaggage_controller.kube import read_lane_table
from tests import support

from .conftest import wait_for
from .test_flow_live_extra import Recorder, conditions, named, start_healthy
from .test_live import NEW, app_manifests, lane_manifest, release_manifest, run_cli, set_image, status

#: the controller as deployed: passes driven by watch events and Plan.requeue, the 60 s timer a safety net
CONTROLLER_RESYNC = None

pytestmark = pytest.mark.k8s_local_webhook

A, W = "spring-cloud-a", "celery-worker"
QUEUES = {"version": 1, "celery": ["default", "emails"]}


def worker_manifest(name: str = W, queues: str = "emails, default") -> dict:
    dep = app_manifests(name)[1]                     # the Deployment only: a worker has no Service
    dep["metadata"]["annotations"] = {n.CELERY_QUEUES_ANN: queues}
    return dep


def gray_lane(kube, ns) -> dict | None:
    return ((read_lane_table(kube, ns) or {}).get("lanes") or {}).get("gray")


def cm_lane(cm: dict) -> dict:
    return (json.loads((cm.get("data") or {}).get(n.TABLE_KEY) or "{}").get("lanes") or {}).get("gray") or {}


def test_configmap_carries_queues_while_the_gray_worker_is_ready_and_drops_them_first(
        k8s_cluster, gb_controller, gb_kube):
    docs = app_manifests(A) + [worker_manifest(), lane_manifest(), release_manifest("rollout-a", A),
                               release_manifest("rollout-w", W)]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs, ["rollout-a", "rollout-w"])
    assert "queues" not in gray_lane(gb_kube, ns)        # no gray worker yet: nothing listed
    rec = Recorder(k8s_cluster.api_client(), ns)
    try:
        # ---- canary: the queues enter once the gray worker has a ready pod
        set_image(k8s_cluster, ns, A, NEW)
        set_image(k8s_cluster, ns, W, NEW)
        wait_for(lambda: gray_lane(gb_kube, ns) == {"fallback": "base", "routes": {A: f"{A}-gray"}, "queues": QUEUES}
                 and all(status(gb_kube, ns, r).get("phase") == "Paused" for r in ("rollout-a", "rollout-w")),
                 30, "lane gray with a's route and the worker's queues, both Paused")
        assert status(gb_kube, ns, "rollout-w")["queues"] == ["default", "emails"]
        assert "queues" not in status(gb_kube, ns, "rollout-a")
        assert conditions(gb_kube, ns, "rollout-w")[n.CELERY_QUEUES_CONDITION]["status"] == "True"
        assert n.CELERY_QUEUES_CONDITION not in conditions(gb_kube, ns, "rollout-a")      # opt-in
        ready = rec.first("Deployment", lambda o: o["metadata"]["name"] == f"{W}-gray"
                          and (o.get("status") or {}).get("availableReplicas", 0) >= 1, what="gray worker ready")
        listed = rec.first("ConfigMap", lambda o: "queues" in cm_lane(o), what="table lists the queues")
        assert ready < listed, (ready, listed)

        # ---- approve the worker: the queues leave (a's route stays) before the gray worker is deleted
        code, out = run_cli(k8s_cluster, ns, "approve", "rollout-w")
        assert code == 0, out
        wait_for(lambda: status(gb_kube, ns, "rollout-w").get("phase") == "Healthy"
                 and gb_kube.get("Deployment", ns, f"{W}-gray") is None, 30, "worker promoted")
        dropped = rec.first("ConfigMap", lambda o: listed < int(o["metadata"]["resourceVersion"])
                            and "queues" not in cm_lane(o), what="table without queues")
        gone = rec.first("Deployment", named(f"{W}-gray"), etype="DELETED", what="gray worker deleted")
        assert dropped < gone, (dropped, gone)
        assert cm_lane(next(o for rv, k, t, o in rec.events if rv == dropped and k == "ConfigMap")) == \
            {"fallback": "base", "routes": {A: f"{A}-gray"}}
        assert "queues" not in status(gb_kube, ns, "rollout-w")
    finally:
        rec.stop()
    rec = Recorder(k8s_cluster.api_client(), ns)      # a fresh watch (each one lasts 60 s)
    try:
        # ---- a bad annotation on a: a condition and a Warning Event, the table keeps its good shape
        k8s_cluster.kubectl("-n", ns, "annotate", "--overwrite", f"deployment/{A}",
                            f"{n.CELERY_QUEUES_ANN}=tasks,bad name")
        cond = wait_for(lambda: conditions(gb_kube, ns, "rollout-a").get(n.CELERY_QUEUES_CONDITION, {})
                        .get("reason") == "InvalidAnnotation" and conditions(gb_kube, ns, "rollout-a")
                        [n.CELERY_QUEUES_CONDITION], 30, "CeleryQueues=False on rollout-a")
        assert cond["status"] == "False" and "'bad name'" in cond["message"], cond
        event = wait_for(lambda: next((e for e in gb_kube.list("Event", ns)
                                       if e.get("reason") == "InvalidCeleryQueues"
                                       and e["involvedObject"]["name"] == "rollout-a"), None),
                         30, "a Warning event InvalidCeleryQueues")
        assert event["type"] == "Warning" and "'bad name'" in event["message"], event
        assert gray_lane(gb_kube, ns) == {"fallback": "base", "routes": {A: f"{A}-gray"}}
        assert status(gb_kube, ns, "rollout-a").get("phase") == "Paused"

        # ---- fixed: the queue enters (a's gray pod is ready); rollback: queue and route leave in one write
        k8s_cluster.kubectl("-n", ns, "annotate", "--overwrite", f"deployment/{A}", f"{n.CELERY_QUEUES_ANN}=tasks")
        wait_for(lambda: gray_lane(gb_kube, ns) == {"fallback": "base", "routes": {A: f"{A}-gray"},
                                                    "queues": {"version": 1, "celery": ["tasks"]}},
                 30, "a's queue listed")
        code, out = run_cli(k8s_cluster, ns, "rollback", "rollout-a")
        assert code == 0, out
        wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
                 and gb_kube.get("Deployment", ns, f"{A}-gray") is None, 30, "a rolled back")
        last_listed = rec.last("ConfigMap", lambda o: "queues" in cm_lane(o))
        dropped = rec.first("ConfigMap", lambda o: last_listed < int(o["metadata"]["resourceVersion"]),
                            what="the table after the last one listing queues")
        assert cm_lane(next(o for rv, k, t, o in rec.events if rv == dropped and k == "ConfigMap")) == \
            {"fallback": "base", "routes": {}}        # route and queue left in the same write
        gone = rec.first("Deployment", named(f"{A}-gray"), etype="DELETED", what="gray a deleted")
        assert dropped < gone, (dropped, gone)
    finally:
        rec.stop()
    assert gray_lane(gb_kube, ns) == {"fallback": "base", "routes": {}}


LIBRARY_PRODUCER = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import graybaggage
from graybaggage import _runtime
from opentelemetry import baggage, context

graybaggage.instrument()
from tests.apps.celery_app import record    # after instrument(), as `graybaggage run` would

src = _runtime.get().table_source
print(json.dumps({"source": src.describe()}), flush=True)
last, no = -1, 0
while True:
    gen = src.generation
    if gen != last:           # one gray task per table the library swapped in
        last, table = gen, src.value
        listed = table.lane_has_queue("gray", "tasks")
        token = context.attach(baggage.set_baggage("x-mse-tag", "gray"))
        try:
            record.delay(no, "gray")
        finally:
            context.detach(token)
        print(json.dumps({"gen": gen, "no": no, "listed": listed}), flush=True)
        no += 1
    time.sleep(0.01)
"""


def test_a_library_producer_follows_the_published_queues(k8s_cluster, gb_controller, gb_kube, tmp_path):
    redis = pytest.importorskip("redis")
    pytest.importorskip("celery")
    server = shutil.which("redis-server")
    if not server:
        pytest.skip("redis-server is not installed (tests/deps.sh, run by scripts/test, installs it)")
    port = support.free_port()
    broker = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                               "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    lib = None
    try:
        support.wait_listening(port, broker)
        url = f"redis://127.0.0.1:{port}/0"
        r = redis.Redis.from_url(url)
        docs = [worker_manifest(W, "tasks"), lane_manifest(), release_manifest("rollout-w", W)]
        ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs, ["rollout-w"])

        env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_"))}
        env.update(support.lane_reader_env(k8s_cluster, ns, tmp_path, n.TABLE_CONFIGMAP), PYTHONUNBUFFERED="1",
                   CELERY_BROKER=url)
        errlog = tmp_path / "library.log"
        with open(errlog, "wb") as err:
            lib = subprocess.Popen([sys.executable, "-c", LIBRARY_PRODUCER], env=env, stdout=subprocess.PIPE,
                                   stderr=err, text=True, start_new_session=True, cwd=str(support.ROOT))
        from .test_library_live import Lines
        out = Lines(lib.stdout)

        def sent(listed: bool):
            def seen():
                assert lib.poll() is None, errlog.read_text()[-3000:]
                return next((o for _, o in list(out.items) if o.get("listed") is listed), None)
            return wait_for(seen, 60, f"the library to send a gray task with the queue listed={listed}")

        def where(no: int) -> str | None:
            """The broker list holding task `no` (Celery's Redis transport: one list per queue)."""
            for queue in ("tasks", "tasks-gray"):
                for raw in r.lrange(queue, 0, -1):
                    msg = json.loads(raw)
                    if msg["headers"].get("argsrepr", "").startswith(f"({no},"):
                        return queue
            return None

        base_task = sent(False)              # the table has lane gray, no queue yet
        set_image(k8s_cluster, ns, W, NEW)
        routed_task = sent(True)
        assert gray_lane(gb_kube, ns)["queues"] == {"version": 1, "celery": ["tasks"]}
        code, text = run_cli(k8s_cluster, ns, "rollback", "rollout-w")
        assert code == 0, text
        wait_for(lambda: status(gb_kube, ns, "rollout-w").get("phase") == "Healthy", 30, "worker rolled back")
        after = wait_for(lambda: next((o for _, o in list(out.items)
                                       if o.get("listed") is False and o["no"] > routed_task["no"]), None),
                         60, "a gray task after the queue left the table")
        got = {o["no"]: (o["listed"], where(o["no"])) for _, o in list(out.items) if "no" in o}
        assert got[base_task["no"]] == (False, "tasks"), got
        assert got[routed_task["no"]] == (True, "tasks-gray"), got
        assert got[after["no"]] == (False, "tasks"), got
        assert all(q == ("tasks-gray" if listed else "tasks") for listed, q in got.values()), got
        print(f"\n[celery queues] gray tasks by table: {got}")
    finally:
        if lib is not None and lib.poll() is None:
            os.killpg(lib.pid, 9)
            lib.wait(5)
        broker.terminate()
        broker.wait(10)
