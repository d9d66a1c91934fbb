"""Controller flows beyond the seed flow, against the real control plane (same fixtures and helpers as
test_live.py): timed `pause: {duration}` steps, the table-first ordering on promote and rollback (observed
through watches), a Service shared by two workloads, a lane change mid-flight, deleting a release
mid-flight with the controller running, and two GrayReleases on one Deployment.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from graybaggage_controller import desired as d
from graybaggage_controller import names as n

from .conftest import wait_for
from .test_live import (NEW, OLD, REPO, app_manifests, apply, base_rs_images, image, lane_manifest,
                        owned_objects, release_manifest, routes, run_cli, set_image, status)

#: the controller as deployed: passes driven by watch events and Plan.requeue, the 60 s timer a safety net
CONTROLLER_RESYNC = None

pytestmark = pytest.mark.k8s_local_webhook

A, B, C = "spring-cloud-a", "spring-cloud-b", "spring-cloud-c"


def start_healthy(cluster, ctl, kube, docs: list[dict], releases: list[str]) -> str:
    """Apply `docs`, wait for the Deployments to roll out, start the controller, wait until every
    release in `releases` is Healthy. Returns the namespace."""
    ns = ctl.namespace
    apply(cluster, ns, docs)
    for doc in docs:
        if doc["kind"] == "Deployment":
            cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{doc['metadata']['name']}",
                            "--timeout=60s")
    ctl.start()
    wait_for(lambda: all(status(kube, ns, r).get("phase") == "Healthy" for r in releases), 30,
             f"{releases} Healthy")
    return ns


def conditions(kube, ns, name) -> dict:
    return {c["type"]: c for c in status(kube, ns, name).get("conditions") or []}


def lane_routes(kube, ns, lane):
    from graybaggage_controller.kube import read_lane_table
    t = read_lane_table(kube, ns) or {}
    return ((t.get("lanes") or {}).get(lane) or {}).get("routes")


class Recorder:
    """Watches ConfigMaps, Services, Pods and Deployments of a namespace and keeps every event.

    Ordering is judged by resourceVersion: on this test control plane (one etcd) a resourceVersion is
    the etcd revision of the write, global across kinds, so it orders writes to different objects."""

    def __init__(self, api_client, ns: str):
        from kubernetes import client, watch
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        self.events: list[tuple[int, str, str, dict]] = []    # (rv, kind, type, object)
        self.watches: list = []
        for kind, fn in (("ConfigMap", core.list_namespaced_config_map), ("Service", core.list_namespaced_service),
                         ("Pod", core.list_namespaced_pod), ("Deployment", apps.list_namespaced_deployment)):
            rv = fn(ns).metadata.resource_version
            w = watch.Watch()
            self.watches.append(w)
            threading.Thread(target=self._run, args=(w, kind, fn, ns, rv), daemon=True).start()

    def _run(self, w, kind, fn, ns, rv):
        try:
            for ev in w.stream(fn, ns, resource_version=rv, timeout_seconds=60):
                raw = ev["raw_object"]
                self.events.append((int(raw["metadata"]["resourceVersion"]), kind, ev["type"], raw))
        except Exception as e:       # the connection ends with the test; a gap shows up as a timeout in first()
            self.error = e

    def stop(self):
        for w in self.watches:
            w.stop()

    def first(self, kind: str, pred, etype: str | None = None, what: str = "") -> int:
        """resourceVersion of the first event of `kind` matching `pred` (waits briefly for the watch)."""
        def found():
            rvs = [rv for rv, k, t, o in list(self.events)
                   if k == kind and (etype is None or t == etype) and pred(o)]
            return min(rvs) if rvs else None
        return wait_for(found, 10, f"a {kind} event: {what}", interval=0.05)

    def last(self, kind: str, pred, etype: str | None = None) -> int:
        return max(rv for rv, k, t, o in list(self.events) if k == kind and (etype is None or t == etype)
                   and pred(o))


def cm_routes(cm: dict) -> dict:
    table = json.loads((cm.get("data") or {}).get(n.TABLE_KEY) or "{}")
    return ((table.get("lanes") or {}).get("gray") or {}).get("routes") or {}


def named(name):
    return lambda o: o["metadata"]["name"] == name


def pod_image(p: dict) -> str:
    return p["spec"]["containers"][0]["image"]


# ------------------------------------------------------------------------------------------------ tests

def test_duration_steps_auto_advance(k8s_cluster, gb_controller, gb_kube):
    """`pause: {duration}` steps advance on their own: step 1 (1 gray replica), step 2 (2 gray replicas),
    then promotion, without any approval; the base never rolls before the last step has elapsed."""
    steps = [{"pause": {"duration": 2}}, {"replicas": 2, "pause": {"duration": 2}}]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube,
                       app_manifests(A) + [lane_manifest(), release_manifest("rollout-a", A, steps)], ["rollout-a"])
    t0 = time.monotonic()
    set_image(k8s_cluster, ns, A, NEW)
    trace: list[tuple] = []     # (seconds since set image, phase, step, gray spec.replicas, routes, base RS images)

    def sample():
        st = status(gb_kube, ns, "rollout-a")
        gray = gb_kube.get("Deployment", ns, f"{A}-gray")
        row = (round(time.monotonic() - t0, 2), st.get("phase"), st.get("currentStep"),
               gray and gray["spec"]["replicas"], routes(gb_kube, ns), base_rs_images(gb_kube, ns, A))
        if not trace or trace[-1][1:] != row[1:]:
            trace.append(row)
        return st.get("phase") == "Healthy" and gray is None and any(r[1] == "Paused" for r in trace)
    wait_for(sample, 30, "the steps to run out and the release to promote", interval=0.05)

    paused = [r for r in trace if r[1] == "Paused"]
    step0 = [r for r in paused if r[2] == 0]
    step1 = [r for r in paused if r[2] == 1]
    assert step0 and step1, trace
    # (the gray Deployment is scaled in the pass that advances the step; the status is written last)
    assert step0[0][3] == 1 and all(r[3] == 2 for r in step1), trace
    # routed through both steps; the route goes only once, at the end (the promoting pass drops it from
    # the table first and writes the status last)
    routed = [r[4] == {A: f"{A}-gray"} for r in paused]
    assert routed == sorted(routed, reverse=True) and step1[0][4] == {A: f"{A}-gray"}, trace
    # both pauses were waited for, without approval (stepStartedAt has 1 s resolution, so a pause may
    # end up to 1 s early) and the base made no ReplicaSet for the new template before that
    assert step1[0][0] - step0[0][0] >= 1.0 - 0.2, trace
    rolled_at = next(r[0] for r in trace if f"{REPO}/{A}:{NEW}" in r[5])
    assert rolled_at - step1[0][0] >= 1.0 - 0.2, trace
    base = gb_kube.get("Deployment", ns, A)
    assert image(base).endswith(NEW) and not base["spec"].get("paused")
    assert routes(gb_kube, ns) == {}
    assert gb_kube.get("Service", ns, A)["spec"]["selector"] == {"app": A}
    assert n.APPROVE_ANN not in d.annotations_of(gb_kube.get("GrayRelease", ns, "rollout-a"))
    print(f"\n[duration] trace: {[(r[0], r[1], r[2], r[3]) for r in trace]}")


def test_table_first_on_promote_and_rollback(k8s_cluster, gb_controller, gb_kube):
    """Approve and CLI rollback drop the member from the lane table before anything else is touched (seen
    through watches), the base Service stays pinned until the last gray pod is gone, a CLI rollback puts
    the exact stable template back; plus the CLI's detail view and wrong-phase errors."""
    docs = app_manifests(A) + app_manifests(C) + [lane_manifest(), release_manifest("rollout-a", A),
                                                   release_manifest("rollout-c", C)]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs, ["rollout-a", "rollout-c"])
    c_stable = status(gb_kube, ns, "rollout-c")["stableRevision"]
    set_image(k8s_cluster, ns, A, NEW)
    set_image(k8s_cluster, ns, C, NEW)
    wait_for(lambda: routes(gb_kube, ns) == {A: f"{A}-gray", C: f"{C}-gray"}
             and all(status(gb_kube, ns, r).get("phase") == "Paused" for r in ("rollout-a", "rollout-c")),
             30, "lane table {a, c}, both Paused")   # (the status is written after the table)

    code, out = run_cli(k8s_cluster, ns, "status")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["NAME", "WORKLOAD", "LANE", "STATUS"], out
    assert any(line.startswith("rollout-a") and "Paused" in line and "1/1" in line for line in out.splitlines()), out
    code, out = run_cli(k8s_cluster, ns, "status", "rollout-a")
    assert code == 0 and f"Routes:     {A} -> {A}-gray" in out, out

    rec = Recorder(k8s_cluster.api_client(), ns)
    try:
        # ---- approve a
        code, out = run_cli(k8s_cluster, ns, "approve", "rollout-a")
        assert code == 0, out
        wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
                 and gb_kube.get("Deployment", ns, f"{A}-gray") is None
                 and gb_kube.get("Service", ns, f"{A}-gray") is None, 30, "a promoted")
        table_drop = rec.first("ConfigMap", lambda o: A not in cm_routes(o), what="table without a")
        unpause = rec.first("Deployment", lambda o: o["metadata"]["name"] == A and not o["spec"].get("paused"),
                            what="base a unpaused")
        new_base_pod = rec.first("Pod", lambda o: o["metadata"]["labels"].get("app") == A
                                 and n.LANE_LABEL not in o["metadata"]["labels"] and pod_image(o).endswith(NEW),
                                 etype="ADDED", what="a base pod on the new image")
        unpin = rec.first("Service", lambda o: o["metadata"]["name"] == A
                          and n.POD_TEMPLATE_HASH not in o["spec"]["selector"], what="base Service a unpinned")
        gray_gone = rec.first("Deployment", named(f"{A}-gray"), etype="DELETED", what="gray a deleted")
        assert cm_routes(next(o for rv, k, t, o in rec.events if rv == table_drop and k == "ConfigMap")) == \
            {C: f"{C}-gray"}
        assert table_drop < unpause < new_base_pod, (table_drop, unpause, new_base_pod)
        assert table_drop < unpin and table_drop < gray_gone, (table_drop, unpin, gray_gone)
        assert n.APPROVE_ANN not in d.annotations_of(gb_kube.get("GrayRelease", ns, "rollout-a"))
        code, out = run_cli(k8s_cluster, ns, "rollback", "rollout-a")
        assert code == 1 and "Healthy" in out, out

        # ---- roll back c with the CLI
        code, out = run_cli(k8s_cluster, ns, "rollback", "rollout-c")
        assert code == 0, out
        wait_for(lambda: status(gb_kube, ns, "rollout-c").get("phase") == "Healthy"
                 and gb_kube.get("Deployment", ns, f"{C}-gray") is None
                 and gb_kube.get("Service", ns, C)["spec"]["selector"] == {"app": C}, 30, "c rolled back")
        table_drop = rec.first("ConfigMap", lambda o: C not in cm_routes(o), what="table without c")
        restored = rec.first("Deployment", lambda o: o["metadata"]["name"] == C
                             and pod_image(o["spec"]["template"]).endswith(OLD), what="base c template restored")
        gray_gone = rec.first("Deployment", named(f"{C}-gray"), etype="DELETED", what="gray c deleted")
        last_gray_pod = rec.last("Pod", lambda o: o["metadata"]["labels"].get("app") == C
                                 and o["metadata"]["labels"].get(n.LANE_LABEL) == "gray", etype="DELETED")
        unpin = rec.first("Service", lambda o: o["metadata"]["name"] == C
                          and n.POD_TEMPLATE_HASH not in o["spec"]["selector"], what="base Service c unpinned")
        assert table_drop < restored < gray_gone, (table_drop, restored, gray_gone)
        assert last_gray_pod < unpin, (last_gray_pod, unpin)     # pinned until no gray pod was left
    finally:
        rec.stop()
    assert routes(gb_kube, ns) == {}
    base = gb_kube.get("Deployment", ns, C)
    assert d.template_hash(base["spec"]["template"]) == c_stable and not base["spec"].get("paused")
    assert base_rs_images(gb_kube, ns, C) == {f"{REPO}/{C}:{OLD}"}       # never rolled to the canary
    assert n.ROLLBACK_ANN not in d.annotations_of(gb_kube.get("GrayRelease", ns, "rollout-c"))


def test_shared_service_is_not_pinned(k8s_cluster, gb_controller, gb_kube):
    """A Service selecting a and b (tier=java) is never pinned: pinning it by a's pod-template-hash would
    cut b off. a's own Service is pinned; the release says BasePinned=False/SharedService."""
    docs = app_manifests(A) + app_manifests(B)
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["metadata"]["labels"]["tier"] = "java"
    docs += [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "java"},
              "spec": {"selector": {"tier": "java"}, "ports": [{"port": 8080, "targetPort": 20001}]}},
             lane_manifest(), release_manifest("rollout-a", A)]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs, ["rollout-a"])
    set_image(k8s_cluster, ns, A, NEW)
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Paused"
             and (routes(gb_kube, ns) or {}).get(A) == f"{A}-gray", 30, "a Paused and routed")
    cond = conditions(gb_kube, ns, "rollout-a")["BasePinned"]
    assert cond["status"] == "False" and cond["reason"] == "SharedService", cond
    assert "java" in cond["message"] and B in cond["message"], cond
    java = gb_kube.get("Service", ns, "java")
    assert java["spec"]["selector"] == {"tier": "java"}
    assert n.ORIGINAL_SELECTOR_ANN not in (java["metadata"].get("annotations") or {})
    # the shared Service still reaches b's pods (and, as the condition says, a's pods of both versions)
    selected = gb_kube.list("Pod", ns, "tier=java")
    assert {p["metadata"]["labels"]["app"] for p in selected} == {A, B}
    assert n.POD_TEMPLATE_HASH in gb_kube.get("Service", ns, A)["spec"]["selector"]
    assert gb_kube.get("Service", ns, B)["spec"]["selector"] == {"app": B}
    assert gb_kube.get("Deployment", ns, f"{B}-gray") is None
    # approve: a's Service is released, the shared one was never touched
    assert run_cli(k8s_cluster, ns, "approve", "rollout-a")[0] == 0
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
             and gb_kube.get("Deployment", ns, f"{A}-gray") is None, 30, "a promoted")
    assert gb_kube.get("Service", ns, A)["spec"]["selector"] == {"app": A}
    assert gb_kube.get("Service", ns, "java")["spec"] == java["spec"]


def test_lane_change_then_delete_mid_flight(k8s_cluster, gb_controller, gb_kube):
    """Moving a running release to another lane replaces its gray objects and table entry; deleting it
    mid-flight (controller running) leaves the base on its stable template and removes everything."""
    docs = app_manifests(A) + [lane_manifest("gray"), lane_manifest("blue"), release_manifest("rollout-a", A)]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs, ["rollout-a"])
    stable = status(gb_kube, ns, "rollout-a")["stableRevision"]
    set_image(k8s_cluster, ns, A, NEW)
    wait_for(lambda: lane_routes(gb_kube, ns, "gray") == {A: f"{A}-gray"}, 30, "a routed in gray")

    k8s_cluster.kubectl("-n", ns, "patch", "grayrelease", "rollout-a", "--type", "merge",
                        "-p", '{"spec":{"lane":"blue"}}')
    wait_for(lambda: lane_routes(gb_kube, ns, "blue") == {A: f"{A}-blue"}
             and lane_routes(gb_kube, ns, "gray") == {}
             and gb_kube.get("Deployment", ns, f"{A}-gray") is None
             and gb_kube.get("Service", ns, f"{A}-gray") is None
             and status(gb_kube, ns, "rollout-a").get("routes") == {A: f"{A}-blue"}, 30, "a moved to lane blue")
    blue = gb_kube.get("Deployment", ns, f"{A}-blue")
    labels = blue["spec"]["template"]["metadata"]["labels"]
    assert labels[n.LANE_LABEL] == "blue" and image(blue).endswith(NEW)
    assert {"name": "GRAYBAGGAGE_LANE", "value": "blue"} in blue["spec"]["template"]["spec"]["containers"][0]["env"]
    assert gb_kube.get("Service", ns, f"{A}-blue")["spec"]["selector"] == {"app": A, n.LANE_LABEL: "blue"}
    assert not gb_kube.list("Pod", ns, f"app={A},{n.LANE_LABEL}=gray")
    st = status(gb_kube, ns, "rollout-a")
    assert st["phase"] == "Paused" and st["routes"] == {A: f"{A}-blue"}
    base = gb_kube.get("Deployment", ns, A)
    assert base["spec"]["paused"] is True and base_rs_images(gb_kube, ns, A) == {f"{REPO}/{A}:{OLD}"}

    # delete the release mid-flight while the controller runs: its finalizer puts the base back
    k8s_cluster.kubectl("delete", "grayrelease", "rollout-a", "-n", ns, "--wait=true", "--timeout=30s")
    base = gb_kube.get("Deployment", ns, A)
    assert d.template_hash(base["spec"]["template"]) == stable and not base["spec"].get("paused")
    assert n.RELEASE_LABEL not in d.labels_of(base) and n.STABLE_ANN not in d.annotations_of(base)
    assert n.PAUSED_BY_ANN not in d.annotations_of(base)
    assert base_rs_images(gb_kube, ns, A) == {f"{REPO}/{A}:{OLD}"}
    assert gb_kube.get("Deployment", ns, f"{A}-blue") is None and gb_kube.get("Service", ns, f"{A}-blue") is None
    assert gb_kube.get("Service", ns, A)["spec"]["selector"] == {"app": A}
    assert lane_routes(gb_kube, ns, "blue") == {}
    k8s_cluster.kubectl("delete", "lanes", "--all", "-n", ns, "--wait=true", "--timeout=20s")
    wait_for(lambda: owned_objects(gb_kube, ns) == [], 20, "no graybaggage objects left")


def test_second_release_on_same_deployment(k8s_cluster, gb_controller, gb_kube):
    """A second GrayRelease on an already targeted Deployment fails clearly (AlreadyTargeted) and never
    interferes: the first one still runs its canary, publishes its route once, and promotes."""
    docs = app_manifests(A) + [lane_manifest(), release_manifest("rollout-a", A)]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs, ["rollout-a"])
    apply(k8s_cluster, ns, [release_manifest("dup", A)])
    st = wait_for(lambda: status(gb_kube, ns, "dup").get("phase") == "Failed" and status(gb_kube, ns, "dup"),
                  20, "dup Failed")
    assert "rollout-a" in st["message"], st
    cond = conditions(gb_kube, ns, "dup")["Ready"]
    assert cond["status"] == "False" and cond["reason"] == "AlreadyTargeted" and "rollout-a" in cond["message"]
    assert status(gb_kube, ns, "rollout-a")["phase"] == "Healthy"
    assert d.labels_of(gb_kube.get("Deployment", ns, A))[n.RELEASE_LABEL] == "rollout-a"

    set_image(k8s_cluster, ns, A, NEW)
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Paused"
             and routes(gb_kube, ns) == {A: f"{A}-gray"}, 30, "rollout-a Paused and routed")
    assert status(gb_kube, ns, "dup")["phase"] == "Failed"
    assert len(gb_kube.list("Deployment", ns, n.OWNER_LABEL)) == 1
    code, out = run_cli(k8s_cluster, ns, "approve", "dup")
    assert code == 1 and "Failed" in out, out
    assert run_cli(k8s_cluster, ns, "approve", "rollout-a")[0] == 0
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Healthy"
             and gb_kube.get("Deployment", ns, f"{A}-gray") is None, 30, "rollout-a promoted")
    assert image(gb_kube.get("Deployment", ns, A)).endswith(NEW)
    assert status(gb_kube, ns, "dup")["phase"] == "Failed"


def test_deleting_the_second_release_leaves_the_first_alone(k8s_cluster, gb_controller, gb_kube):
    """Deleting the AlreadyTargeted duplicate while the first release is mid-flight must not touch the
    base Deployment the first release owns."""
    docs = app_manifests(A) + [lane_manifest(), release_manifest("rollout-a", A), release_manifest("dup", A)]
    ns = start_healthy(k8s_cluster, gb_controller, gb_kube, docs[:-1], ["rollout-a"])
    apply(k8s_cluster, ns, docs[-1:])
    wait_for(lambda: status(gb_kube, ns, "dup").get("phase") == "Failed", 20, "dup Failed")
    set_image(k8s_cluster, ns, A, NEW)
    wait_for(lambda: status(gb_kube, ns, "rollout-a").get("phase") == "Paused"
             and routes(gb_kube, ns) == {A: f"{A}-gray"}, 30, "rollout-a Paused and routed")
    before = gb_kube.get("Deployment", ns, A)
    k8s_cluster.kubectl("delete", "grayrelease", "dup", "-n", ns, "--wait=false")

    def settled():      # the duplicate is gone (its finalizer ran its cleanup pass), or the base was touched
        base = gb_kube.get("Deployment", ns, A)
        return (gb_kube.get("GrayRelease", ns, "dup") is None or not image(base).endswith(NEW)
                or d.labels_of(base).get(n.RELEASE_LABEL) != "rollout-a") and base
    base = wait_for(settled, 20, "the duplicate to be finalized")
    assert image(base).endswith(NEW) and base["spec"].get("paused") is True, base["spec"]
    assert d.labels_of(base).get(n.RELEASE_LABEL) == "rollout-a"
    assert d.annotations_of(base).get(n.STABLE_ANN) == d.annotations_of(before).get(n.STABLE_ANN)
    assert status(gb_kube, ns, "rollout-a")["phase"] == "Paused"
    assert routes(gb_kube, ns) == {A: f"{A}-gray"}
