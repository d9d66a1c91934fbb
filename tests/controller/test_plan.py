"""Table-driven tests of the pure release planner `plan.plan_release(Observed) -> Plan` (no cluster, no I/O).

Each row is one transition or one ordering rule: an `Observed` built from a few named facts (`world(...)`),
and what the plan must say: its actions in order (described as short words: "pin a", "create Deployment
a-gray", "table", ...), the phase, the routes it publishes. A small in-memory simulator then walks the seed
flow (set image -> Paused -> approve / rollback / delete -> Healthy) pass by pass, and checks the traffic
invariants at every pass: a base Service never selects a gray pod, and no route (lane table or entry
HTTPRoute) points at a lane Service that is gone.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from graybaggage_controller import desired as d
from graybaggage_controller import names as n
from graybaggage_controller.plan import Action, Observed, iso, plan_release

NS = "demo"
REL = "rollout-a"
T0 = 1_800_000_000.0


def _template(image: str) -> dict:
    return {"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "a", "image": image}]}}


TEMPLATES = {"old": _template("a:1"), "new": _template("a:2")}
HASH = {k: d.template_hash(v) for k, v in TEMPLATES.items()}
PTH = {"old": "pth-old", "new": "pth-new"}
LANE_SVC = "a-gray"
GRAY = "a-gray"


def paused_status(step: int = 0, routes: bool = True, started: float = T0, phase: str = "Paused") -> dict:
    return {"phase": phase, "stableRevision": HASH["old"], "canaryRevision": HASH["new"], "currentStep": step,
            "stepStartedAt": iso(started), "routes": {"a": LANE_SVC} if routes else {}}


def promoting_status(routes: bool = False) -> dict:
    return paused_status(routes=routes, phase="Promoting")


def approved(step: int = 0) -> dict:
    return {n.APPROVE_ANN: f"{HASH['new']}/{step}"}


def world(*, template="new", stable="old", paused=True, paused_by="webhook", targeted=True, rolled=True,
          pinned=False, gray=None, gray_replicas=1, gray_avail=None, lane_svc=False, gray_pods=None, status=None, ann=None,
          steps=None, deleting=False, lane=True, base=True, other_targeting=None, stable_pods=True,
          tag="gray", extra_services=(), extra_deployments=(), foreign_gray=False, stale_gray=None,
          entry=None, now=T0 + 1, celery=None, service=True, **extra: Any) -> Observed:
    """An Observed from named facts. gray: None | "creating" | "available"; entry: (backend, generation,
    observedGeneration or None for a route without status) of the lane's entry HTTPRoute; celery: the base
    Deployment's graybaggage.io/celery-queues annotation; service=False: no Service selects the workload (a
    Celery worker)."""
    gr = {"apiVersion": n.API_VERSION, "kind": "GrayRelease",
          "metadata": {"name": REL, "namespace": NS, "uid": "uid-rel", "generation": 1,
                       "annotations": dict(ann or {})},
          "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"},
                   "lane": tag, "replicas": gray_replicas},
          "status": copy.deepcopy(status or {})}
    if steps is not None:
        gr["spec"]["steps"] = steps
    if deleting:
        gr["metadata"]["deletionTimestamp"] = iso(T0)
    bann = {}
    if stable:
        bann[n.STABLE_ANN] = HASH[stable]
    if paused_by and paused:
        bann[n.PAUSED_BY_ANN] = paused_by
    if celery is not None:
        bann[n.CELERY_QUEUES_ANN] = celery
    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "a", "namespace": NS, "uid": "uid-a", "generation": 3,
                        "labels": {n.RELEASE_LABEL: REL} if targeted else {}, "annotations": bann},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
                    "template": copy.deepcopy(TEMPLATES[template]), "paused": paused},
           "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2 if rolled else 1,
                      "availableReplicas": 2}}
    rss = []
    for i, key in enumerate(("old", "new")):
        if key == "new" and template == "old" and stable == "old":
            continue
        t = copy.deepcopy(TEMPLATES[key])
        t["metadata"]["labels"][n.POD_TEMPLATE_HASH] = PTH[key]
        up = key == "old" and stable_pods
        rss.append({"metadata": {"name": f"a-{PTH[key]}", "namespace": NS, "labels": {"app": "a", n.POD_TEMPLATE_HASH: PTH[key]},
                                 "annotations": {"deployment.kubernetes.io/revision": str(i + 1)},
                                 "ownerReferences": [{"uid": "uid-a", "kind": "Deployment", "name": "a"}]},
                    "spec": {"replicas": 2 if up else 0, "template": t,
                             "selector": {"matchLabels": {"app": "a", n.POD_TEMPLATE_HASH: PTH[key]}}},
                    "status": {"availableReplicas": 2 if up else 0}})
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": NS},
           "spec": {"selector": {"app": "a"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                                         "protocol": "TCP"}]}}
    if pinned:
        p = d.pin_patch(svc, PTH["old"], REL)
        svc["metadata"]["annotations"] = p["metadata"]["annotations"]
        svc["spec"]["selector"] = {k: v for k, v in p["spec"]["selector"].items() if v is not None}
    services = [svc] if service else []
    services += copy.deepcopy(list(extra_services))
    if lane_svc:
        services.append(d.lane_service(svc, gr, tag))
    lane_obj = {"apiVersion": n.API_VERSION, "kind": "Lane",
                "metadata": {"name": tag, "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"tag": tag}}
    gray_obj = None
    if gray:
        gray_obj = d.gray_deployment(dep, gr, lane_obj, tag, gray_replicas)
        gray_obj["metadata"]["generation"] = 1
        up = (gray_replicas if gray_avail is None else gray_avail) if gray == "available" else 0
        gray_obj["status"] = {"observedGeneration": 1, "updatedReplicas": gray_replicas, "availableReplicas": up}
        if foreign_gray:
            gray_obj["metadata"]["ownerReferences"] = []
    deployments = [dep, *copy.deepcopy(list(extra_deployments))]
    if gray_obj is not None:
        deployments.append(gray_obj)
    if stale_gray:
        old = d.gray_deployment(dep, gr, lane_obj, stale_gray, 1)
        deployments.append(old)
    if gray_pods is None:
        gray_pods = gray_replicas if gray == "available" else 0
    if entry is not None:
        extra.setdefault("entry_routes", [http_route(*entry)])
    return Observed(release=gr, base=dep if base else None, replicasets=rss if base else [], gray=gray_obj,
                    gray_pods=gray_pods, services=services, lane=lane_obj if lane else None, now=now,
                    other_targeting=other_targeting, deployments=deployments, **extra)


def http_route(backend: str, generation: int, observed: int | None) -> dict:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "a-entry", "namespace": NS, "generation": generation},
             "spec": {"rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}}
    if observed is not None:
        route["status"] = {"parents": [{"parentRef": {"name": "public-gw"}, "conditions": [
            {"type": "Accepted", "status": "True", "observedGeneration": observed},
            {"type": "ResolvedRefs", "status": "True", "observedGeneration": observed}]}]}
    return route


# ---------------------------------------------------------------------------------------------- describing plans

def describe(act: Action) -> str:
    """An action as a short word and its object: what a row expects."""
    if act.verb == "table":
        return "table"
    if act.verb == "patch-release":
        return "clear-annotations"
    if act.verb in ("create", "update", "delete"):
        return f"{act.verb} {act.kind} {act.name}"
    if act.verb == "jsonpatch":
        return f"restore {act.name}"
    body = act.body or {}
    if act.kind == "Service":
        sel = (body.get("spec") or {}).get("selector") or {}
        return f"{'pin' if sel.get(n.POD_TEMPLATE_HASH) else 'unpin'} {act.name}"
    spec = body.get("spec") or {}
    meta = body.get("metadata") or {}
    anns, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    if spec.get("paused") is True:
        return f"pause {act.name}"
    if anns.get(n.STABLE_ANN) and spec.get("paused") is False:
        return f"promote {act.name}"
    if spec.get("paused") is False:
        return f"unpause {act.name}"
    if n.RELEASE_LABEL in labels and labels[n.RELEASE_LABEL] is None:
        return f"untarget {act.name}"
    if labels.get(n.RELEASE_LABEL) or anns.get(n.STABLE_ANN):
        return f"target {act.name}"
    if n.PAUSED_BY_ANN in anns:
        return f"unmark {act.name}"
    return f"patch {act.kind} {act.name}"  # pragma: no cover


def acts(plan) -> list[str]:
    return [describe(a) for a in plan.actions]


@dataclasses.dataclass
class Row:
    name: str
    obs: Observed
    actions: list[str] | None = None       # exact, in order
    phase: str | None = None
    routes: dict | None = None
    absent: tuple[str, ...] = ()             # action words that must not appear
    before: tuple[tuple[str, str], ...] = ()  # (a, b): a comes before b
    check: Any = None                         # extra predicate on the plan
    queues: list | None = None                # the Celery queues it publishes (plan.queues and status.queues)


ROUTED = {"a": LANE_SVC}

ROWS = [
    # ---- the seed flow, step by step
    Row("first pass: target the Deployment and record the stable template",
        world(template="old", stable=None, paused=False, targeted=False, status={}),
        actions=["target a", "table"], phase="Healthy", routes={}),
    Row("healthy and idle: nothing to do",
        world(template="old", paused=False, status={"phase": "Healthy", "stableRevision": HASH["old"]}),
        actions=["table"], phase="Healthy", routes={}),
    Row("set image (paused by the webhook): pin, then create gray Deployment and lane Service, then table",
        world(status={"phase": "Healthy", "stableRevision": HASH["old"]}),
        actions=["pin a", f"create Deployment {GRAY}", f"create Service {LANE_SVC}", "table"],
        phase="Progressing", routes={}),
    Row("gray created, not available yet: not published",
        world(pinned=True, gray="creating", lane_svc=True, status=paused_status(routes=False, phase="Progressing")),
        actions=["table"], phase="Progressing", routes={}),
    Row("gray available: published in the lane table, Paused waiting for approval",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(routes=False, phase="Progressing")),
        actions=["table"], phase="Paused", routes=ROUTED),
    Row("paused: a steady state (same plan again)",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status()),
        actions=["table"], phase="Paused", routes=ROUTED),
    Row("an approval for another step is ignored",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(), ann=approved(step=3)),
        actions=["table"], phase="Paused", routes=ROUTED),
    Row("one of two gray pods lost while published: kept routed while one replica is available",
        world(pinned=True, gray="available", gray_replicas=2, gray_avail=1, lane_svc=True, status=paused_status()),
        actions=["table"], phase="Paused", routes=ROUTED),
    Row("every gray pod lost while published: unpublished (lane traffic falls back to base)",
        world(pinned=True, gray="creating", lane_svc=True, status=paused_status()),
        actions=["table"], phase="Progressing", routes={}),
    Row("approve: the lane table entry goes first, the base stays paused and pinned, gray objects stay",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(), ann=approved()),
        phase="Promoting", routes={},
        before=(("table", "promote a"),),
        absent=(f"delete Deployment {GRAY}", f"delete Service {LANE_SVC}")),
    Row("promote, nothing of the gray left and nothing pinned: record the stable template, unpause the base",
        world(status=promoting_status(), ann=approved()),
        actions=["table", "promote a"], phase="Promoting"),
    Row("promoted base rolled out and nothing left: Healthy, approval annotation cleared",
        world(template="new", stable="new", paused=False, paused_by=None, status=promoting_status(),
              ann=approved()),
        actions=["table", "clear-annotations"], phase="Healthy", routes={}),

    # ---- restarts: a pass after any partial pass (actions applied, status not written) converges
    Row("restart after pinning, before the gray Deployment exists: create it, do not pin again",
        world(pinned=True, status={"phase": "Healthy", "stableRevision": HASH["old"]}),
        actions=[f"create Deployment {GRAY}", f"create Service {LANE_SVC}", "table"], phase="Progressing"),
    Row("restart after the gray objects were created, status never written: Paused, nothing created twice",
        world(pinned=True, gray="available", lane_svc=True, status={"phase": "Healthy"}),
        actions=["table"], phase="Paused", routes=ROUTED),
    Row("restart after an approval's first pass (status not written): the approval is read again",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(), ann=approved()),
        phase="Promoting", routes={}),
    Row("restart after rollback restored the template: gray deleted once the base has settled",
        world(template="old", paused=False, paused_by=None, pinned=True, gray="available", lane_svc=True,
              status={**paused_status(routes=False), "phase": "RollingBack"}),
        actions=["table", f"delete Deployment {GRAY}", f"delete Service {LANE_SVC}"],
        phase="RollingBack", absent=("unpin a",)),

    # ---- webhook bypassed / stable pods gone / shared Service / conflicts
    Row("webhook bypassed: pause the base now, before anything else",
        world(paused=False, paused_by=None, status={"phase": "Healthy"}),
        actions=["pause a", "pin a", f"create Deployment {GRAY}", f"create Service {LANE_SVC}", "table"],
        phase="Progressing",
        check=lambda p: any(e[1] == "WebhookBypassed" for e in p.events)),
    Row("webhook bypassed and the rollout finished: stable pods gone, the base Service is not pinned",
        world(paused=False, paused_by=None, stable_pods=False, status={"phase": "Healthy"}),
        actions=["pause a", f"create Deployment {GRAY}", f"create Service {LANE_SVC}", "table"],
        check=lambda p: any(c["reason"] == "StablePodsMissing" for c in p.status["conditions"])),
    Row("shared Service (selects another workload too): not pinned, condition says so",
        world(status={"phase": "Healthy"},
              extra_deployments=[{"metadata": {"name": "a-batch"},
                                  "spec": {"template": {"metadata": {"labels": {"app": "a"}}}}}]),
        actions=[f"create Deployment {GRAY}", f"create Service {LANE_SVC}", "table"], phase="Progressing",
        check=lambda p: any(c["reason"] == "SharedService" for c in p.status["conditions"])),
    Row("second release on one Deployment: Failed, touches nothing",
        world(status={}, other_targeting="rollout-first"),
        actions=["table"], phase="Failed", routes={}),
    Row("gray Deployment name taken by someone else: Failed, not touched",
        world(pinned=True, gray="available", foreign_gray=True, status={"phase": "Progressing"}),
        phase="Failed", absent=(f"create Deployment {GRAY}", f"delete Deployment {GRAY}",
                                f"update Deployment {GRAY}")),
    Row("no Lane for the tag: still rolls, condition LaneFound=False",
        world(lane=False, status={"phase": "Healthy"}),
        phase="Progressing", check=lambda p: any(c["reason"] == "LaneNotFound" for c in p.status["conditions"])),
    Row("lane changed mid-flight: the old lane's gray Deployment is deleted",
        world(pinned=True, gray="available", lane_svc=True, stale_gray="blue", status=paused_status()),
        phase="Paused", check=lambda p: "delete Deployment a-blue" in acts(p)),
    Row("workload missing: Failed, what is ours is cleaned",
        world(base=False, gray="available", lane_svc=True, status=paused_status(routes=False)),
        phase="Failed", check=lambda p: f"delete Deployment {GRAY}" in acts(p)),

    # ---- rollback
    Row("rollback: table first, restore the stable template; gray objects and pins stay this pass",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(),
              ann={n.ROLLBACK_ANN: HASH["new"]}),
        actions=["table", "restore a", "unmark a"], phase="RollingBack", routes={}),
    Row("rollback: gray pods still terminating: the base Services stay pinned",
        world(template="old", paused=False, paused_by=None, pinned=True, gray_pods=1,
              status={**paused_status(routes=False), "phase": "RollingBack"}, ann={n.ROLLBACK_ANN: HASH["new"]}),
        actions=["table"], phase="RollingBack"),
    Row("rollback: no gray pod left: unpin, clear the annotation",
        world(template="old", paused=False, paused_by=None, pinned=True, gray_pods=0,
              status={**paused_status(routes=False), "phase": "RollingBack"}, ann={n.ROLLBACK_ANN: HASH["new"]}),
        actions=["table", "unpin a", "clear-annotations"], phase="RollingBack"),
    Row("rollback done: Healthy",
        world(template="old", paused=False, paused_by=None, status={"phase": "RollingBack"}),
        actions=["table"], phase="Healthy"),

    # ---- deletion mid-flight
    Row("deleted while Paused: table first, base back on its stable template; gray stays this pass",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(), deleting=True),
        actions=["table", "restore a", "unmark a"], routes={},
        check=lambda p: not p.done),
    Row("deleted: base settled: gray objects go, pins stay while gray pods run",
        world(template="old", paused=False, paused_by=None, pinned=True, gray="available", lane_svc=True,
              status={**paused_status(routes=False), "phase": "RollingBack"}, deleting=True),
        actions=["table", f"delete Deployment {GRAY}", f"delete Service {LANE_SVC}"],
        check=lambda p: not p.done),
    Row("deleted: no gray pod left: unpin, untarget the base; done",
        world(template="old", paused=False, paused_by=None, pinned=True,
              status={**paused_status(routes=False), "phase": "RollingBack"}, deleting=True),
        actions=["table", "unpin a", "untarget a"], check=lambda p: not p.done),
    Row("deleted: nothing of ours left: done (the finalizer can go)",
        world(template="old", paused=False, paused_by=None, targeted=False, stable=None,
              status={"phase": "RollingBack"}, deleting=True),
        actions=["table"], check=lambda p: p.done),

    # ---- timed pauses
    Row("timed pause running: Paused, requeued for the rest of the pause",
        world(pinned=True, gray="available", lane_svc=True, steps=[{"pause": {"duration": 60}}, {"pause": {}}],
              status=paused_status(), now=T0 + 20),
        actions=["table"], phase="Paused", routes=ROUTED,
        check=lambda p: p.status["currentStep"] == 0 and p.requeue == pytest.approx(40, abs=1)),
    Row("timed pause over: next step, started when the pause ended",
        world(pinned=True, gray="available", lane_svc=True, steps=[{"pause": {"duration": 60}}, {"pause": {}}],
              status=paused_status(), now=T0 + 61),
        actions=["table"], phase="Paused", routes=ROUTED,
        check=lambda p: p.status["currentStep"] == 1 and p.status["stepStartedAt"] == iso(T0 + 60)),
    Row("last timed pause over: promotes without an approval",
        world(pinned=True, gray="available", lane_svc=True, steps=[{"pause": {"duration": 10}}],
              status=paused_status(), now=T0 + 11),
        phase="Promoting", routes={}),
    Row("approved step 1 of 2: next step, the gray Deployment scaled to its replicas, kept routed",
        world(pinned=True, gray="available", lane_svc=True,
              steps=[{"pause": {}}, {"pause": {}, "replicas": 2}], status=paused_status(), ann=approved(0)),
        phase="Paused", routes=ROUTED, check=lambda p: p.status["currentStep"] == 1
        and any(a.verb == "update" and a.body["spec"]["replicas"] == 2 for a in p.actions)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_plan_release(row: Row):
    plan = plan_release(copy.deepcopy(row.obs))
    words = acts(plan)
    if row.actions is not None:
        assert words == row.actions
    if row.phase is not None:
        assert plan.status["phase"] == row.phase, plan.status["message"]
    if row.routes is not None:
        assert plan.routes == row.routes and plan.status["routes"] == row.routes
    if row.queues is not None:
        assert plan.queues == row.queues and (plan.status["queues"] or []) == row.queues, plan.status
    for word in row.absent:
        assert word not in words, words
    for a, b in row.before:
        assert a in words and (b not in words or words.index(a) < words.index(b)), words
    if row.check is not None:
        assert row.check(plan), (words, plan.status)
    # pure: the same observation plans the same again (a restarted controller decides the same)
    assert acts(plan_release(copy.deepcopy(row.obs))) == words


# ---------------------------------------------------------------------------------------------- ordering rules
# Promote (issue 13's finding on the real data plane): the base Services stay pinned and the base stays paused
# until no gray pod exists; each step waits for the previous one (one step per pass, re-derived from what is
# observed, so a restart anywhere resumes).

PROMOTE_ORDER = "promote: table, gray objects, no gray pod, unpin, then the base rolls (issue 15)"

ORDER_ROWS = [
    Row("promote (a): the first pass only drops the lane-table entry",
        world(pinned=True, gray="available", lane_svc=True, status=paused_status(), ann=approved()),
        actions=["table"], phase="Promoting", routes={}),
    Row("promote (c): the entry is gone from the table: delete the gray Deployment and lane Service",
        world(pinned=True, gray="available", lane_svc=True, status=promoting_status(), ann=approved()),
        actions=["table", f"delete Deployment {GRAY}", f"delete Service {LANE_SVC}"], phase="Promoting"),
    Row("promote (d): gray pods still terminating: base stays pinned and paused",
        world(pinned=True, gray_pods=2, status=promoting_status(), ann=approved()),
        actions=["table"], phase="Promoting"),
    Row("promote (e): no gray pod left: unpin the base Services, base still paused",
        world(pinned=True, gray_pods=0, status=promoting_status(), ann=approved()),
        actions=["table", "unpin a"], phase="Promoting"),
    Row("promote (b): the entry HTTPRoute still names the lane Service: nothing is deleted",
        world(pinned=True, gray="available", lane_svc=True, status=promoting_status(), ann=approved(),
              entry=(LANE_SVC, 4, 4)),
        actions=["table"], phase="Promoting"),
    Row("promote (b): entry route changed, the gateway has not acknowledged its generation: wait",
        world(pinned=True, gray="available", lane_svc=True, status=promoting_status(), ann=approved(),
              entry=("a", 5, 4)),
        actions=["table"], phase="Promoting", check=lambda p: "acknowledge" in p.status["message"]),
    Row("promote (b): entry route acknowledged: the gray objects go",
        world(pinned=True, gray="available", lane_svc=True, status=promoting_status(), ann=approved(),
              entry=("a", 5, 5)),
        actions=["table", f"delete Deployment {GRAY}", f"delete Service {LANE_SVC}"], phase="Promoting"),
    Row("promote (b): an entry route without status (gateway reports nothing) does not block",
        world(pinned=True, gray="available", lane_svc=True, status=promoting_status(), ann=approved(),
              entry=("a", 5, None)),
        actions=["table", f"delete Deployment {GRAY}", f"delete Service {LANE_SVC}"], phase="Promoting"),
    Row("promote (b): a canary Ingress still sending to the lane Service: wait",
        world(pinned=True, gray="available", lane_svc=True, status=promoting_status(), ann=approved(),
              entry_routes=[{"kind": "Ingress", "metadata": {"name": "a-gray-canary", "generation": 1},
                             "spec": {"rules": [{"http": {"paths": [
                                 {"backend": {"service": {"name": LANE_SVC, "port": {"number": 80}}}}]}}]}}]),
        actions=["table"], phase="Promoting"),
    Row("rollback (b): base settled but the entry route not acknowledged: gray objects stay",
        world(template="old", paused=False, paused_by=None, pinned=True, gray="available", lane_svc=True,
              status={**paused_status(routes=False), "phase": "RollingBack"}, ann={n.ROLLBACK_ANN: HASH["new"]},
              entry=("a", 5, 4)),
        actions=["table"], phase="RollingBack"),
    Row("rollback (a): the first pass after a restart still sees routes published: gray objects stay",
        world(template="old", paused=False, paused_by=None, pinned=True, gray="available", lane_svc=True,
              status={**paused_status(), "phase": "RollingBack"}, ann={n.ROLLBACK_ANN: HASH["new"]}),
        actions=["table"], phase="RollingBack", routes={}),
    Row("deleted (b): the entry route still names the lane Service: gray objects stay",
        world(template="old", paused=False, paused_by=None, pinned=True, gray="available", lane_svc=True,
              status={**paused_status(routes=False), "phase": "RollingBack"}, deleting=True,
              entry=(LANE_SVC, 4, 4)),
        actions=["table"], check=lambda p: not p.done),
    Row("promote: the base rolls after (f): stays Promoting until rolled out",
        world(template="new", stable="new", paused=False, paused_by=None, rolled=False,
              status=promoting_status(), ann=approved()),
        actions=["table"], phase="Promoting", routes={}),
]


@pytest.mark.parametrize("row", ORDER_ROWS, ids=[r.name for r in ORDER_ROWS])
def test_promote_order(row: Row):
    test_plan_release(row)


# ---------------------------------------------------------------------------------------------- Celery queues
# The base Deployment's graybaggage.io/celery-queues annotation: its queues enter the lane table only while the
# gray Deployment has a ready pod (the rule of the routes) and leave in the same table write as the routes, before
# any gray object goes (producers stop sending to <queue>-gray before the gray workers stop).

QUEUES = ["default", "emails"]
CELERY = "emails,default"


def _cond(plan, ctype: str) -> dict | None:
    return next((c for c in plan.status["conditions"] if c["type"] == ctype), None)


def _queued(status: dict, queues=QUEUES) -> dict:
    return {**status, "queues": list(queues)}


def _no_event(reason: str):
    return lambda p: all(e[1] != reason for e in p.events)


BAD = "default,bad name"

QUEUE_ROWS = [
    Row("no annotation: no queues, no CeleryQueues condition (opt-in)",
        world(gray="available", lane_svc=True, pinned=True, status=paused_status()),
        phase="Paused", routes=ROUTED, queues=[],
        check=lambda p: _cond(p, n.CELERY_QUEUES_CONDITION) is None and "queues" not in
        {k for k, v in p.status.items() if v is not None}),
    Row("annotation, gray available: the queues are published with the routes",
        world(gray="available", lane_svc=True, pinned=True, status=paused_status(), celery=CELERY),
        phase="Paused", routes=ROUTED, queues=QUEUES,
        check=lambda p: _cond(p, n.CELERY_QUEUES_CONDITION)["status"] == "True"),
    Row("annotation, gray Deployment just created (no ready pod): no queues",
        world(gray="creating", lane_svc=True, pinned=True, status={}, celery=CELERY),
        phase="Progressing", routes={}, queues=[]),
    Row("annotation, gray pods all unready after publishing: queues (and routes) leave",
        world(gray="available", gray_avail=0, lane_svc=True, pinned=True, status=_queued(paused_status()),
              celery=CELERY),
        phase="Progressing", routes={}, queues=[]),
    Row("annotation, one of two gray pods ready after publishing: queues stay (kept, as routes)",
        world(gray="available", gray_replicas=2, gray_avail=1, service=False,
              status=_queued(paused_status(routes=False)), celery=CELERY),
        phase="Paused", routes={}, queues=QUEUES),
    Row("annotation, one of two gray pods ready, never published: not yet (fully available first)",
        world(gray="available", gray_replicas=2, gray_avail=1, service=False, status={}, celery=CELERY),
        phase="Progressing", routes={}, queues=[]),
    Row("a Celery worker without a Service: queues published, no routes",
        world(gray="available", service=False, status={}, celery=CELERY),
        phase="Paused", routes={}, queues=QUEUES,
        check=lambda p: _cond(p, "LaneServices")["reason"] == "NoService"),
    Row("bad annotation: no queue published, routes still are, CeleryQueues=False and a Warning event",
        world(gray="available", lane_svc=True, pinned=True, status=paused_status(), celery=BAD),
        phase="Paused", routes=ROUTED, queues=[],
        check=lambda p: _cond(p, n.CELERY_QUEUES_CONDITION)["reason"] == "InvalidAnnotation"
        and "'bad name'" in _cond(p, n.CELERY_QUEUES_CONDITION)["message"]
        and [e[:2] for e in p.events] == [("Warning", "InvalidCeleryQueues")]),
    Row("bad annotation already reported: no second event",
        world(gray="available", lane_svc=True, pinned=True, celery=BAD, status={**paused_status(), "conditions": [
            {"type": n.CELERY_QUEUES_CONDITION, "status": "False", "reason": "InvalidAnnotation",
             "message": d.celery_queues({"metadata": {"annotations": {n.CELERY_QUEUES_ANN: BAD}}}, "gray")[1]}]}),
        phase="Paused", routes=ROUTED, queues=[], check=_no_event("InvalidCeleryQueues")),
    Row("bad annotation on a published lane: its queues leave the table",
        world(gray="available", lane_svc=True, pinned=True, status=_queued(paused_status()), celery=BAD),
        phase="Paused", routes=ROUTED, queues=[]),
    Row("annotation removed while paused: the queues leave, the routes stay",
        world(gray="available", lane_svc=True, pinned=True, status=_queued(paused_status())),
        phase="Paused", routes=ROUTED, queues=[]),
    Row("promote (a): queues leave with the routes in the first pass; nothing is deleted",
        world(pinned=True, gray="available", lane_svc=True, status=_queued(paused_status()), ann=approved(),
              celery=CELERY),
        actions=["table"], phase="Promoting", routes={}, queues=[]),
    Row("promote (a), a worker without a Service: published queues alone hold the gray Deployment",
        world(gray="available", service=False, status=_queued(promoting_status()), ann=approved(), celery=CELERY),
        actions=["table"], phase="Promoting", routes={}, queues=[]),
    Row("promote (c): queues gone from the table: the gray worker Deployment goes",
        world(gray="available", service=False, status=promoting_status(), ann=approved(), celery=CELERY),
        actions=["table", f"delete Deployment {GRAY}"], phase="Promoting", routes={}, queues=[]),
    Row("rollback (a): queues leave first, the gray worker stays this pass",
        world(template="old", paused=False, paused_by=None, gray="available", service=False,
              status={**_queued(paused_status(routes=False)), "phase": "RollingBack"},
              ann={n.ROLLBACK_ANN: HASH["new"]}, celery=CELERY),
        actions=["table"], phase="RollingBack", routes={}, queues=[]),
    Row("deleted: queues leave first, the gray worker stays this pass",
        world(template="old", paused=False, paused_by=None, gray="available", service=False,
              status={**_queued(paused_status(routes=False)), "phase": "RollingBack"}, deleting=True, celery=CELERY),
        actions=["table"], routes={}, queues=[], check=lambda p: not p.done),
]


@pytest.mark.parametrize("row", QUEUE_ROWS, ids=[r.name for r in QUEUE_ROWS])
def test_celery_queue_rules(row: Row):
    test_plan_release(row)


# ---------------------------------------------------------------------------------------------- the flow, simulated

def _apply(state: dict, plan) -> dict:
    """What the API server would hold after the plan's actions (and its status) were applied."""
    s = dict(state)
    for w in acts(plan):
        if w == "table":
            s["published"] = dict(plan.routes)
            s["published_queues"] = list(plan.queues)
            if s.get("entry") is not None:       # the entry route follows the table (reconcile's sync_entries)
                backend, gen, seen = s["entry"]
                want = plan.routes.get("a", "a")
                if want != backend:
                    s["entry"], s["gateway_lag"] = (want, gen + 1, seen), 2
        elif w == "pin a":
            s["pinned"] = True
        elif w == "unpin a":
            s["pinned"] = False
        elif w == f"create Deployment {GRAY}":
            s["gray"] = "creating"
        elif w == f"create Service {LANE_SVC}":
            s["lane_svc"] = True
        elif w == f"delete Deployment {GRAY}":
            s["gray"], s["terminating"] = None, 1
        elif w == f"delete Service {LANE_SVC}":
            s["lane_svc"] = False
        elif w == "promote a":
            s.update(stable=s["template"], paused=False, paused_by=None, rolled=False)
        elif w == "restore a":
            s.update(template=s["stable"], paused=False)
        elif w in ("unmark a", "unpause a"):
            s.update(paused_by=None, paused=False if w == "unpause a" else s["paused"])
        elif w == "pause a":
            s.update(paused=True, paused_by="controller")
        elif w == "target a":
            s.update(targeted=True, stable=s["stable"] or s["template"])
        elif w == "untarget a":
            s.update(targeted=False, stable=None)
        elif w == "clear-annotations":
            s["ann"] = {}
        elif not w.startswith("update "):
            raise AssertionError(f"the simulator does not know {w!r}")
    s["status"] = copy.deepcopy(plan.status)
    return s


def _tick(s: dict) -> dict:
    """The cluster converging between two passes: gray pods start / terminate, the base rolls."""
    s = dict(s)
    if s["gray"] == "creating":
        s["gray"], s["gray_pods"] = "available", s["gray_replicas"]
    elif s["gray"] is None and s["gray_pods"]:
        if s["terminating"]:
            s["terminating"] -= 1
        else:
            s["gray_pods"] = 0
    if not s["paused"]:
        s["rolled"] = True
    if s.get("entry") is not None and s["gateway_lag"]:   # the gateway catches up with the route, slowly
        s["gateway_lag"] -= 1
        if not s["gateway_lag"]:
            backend, gen, _ = s["entry"]
            s["entry"], s["gateway_backend"] = (backend, gen, gen), backend
    return s


def _violations(s: dict) -> list[str]:
    out = []
    if s["gray_pods"] and not s["pinned"]:
        out.append("a base Service selects gray pods")
    if s["published"] and not s["lane_svc"]:
        out.append("the lane table routes to a lane Service that is gone")
    if s["published"] and s["gray"] != "available":
        out.append("the lane table routes to a gray Deployment that is not available")
    if s.get("published_queues") and s["gray"] != "available":
        out.append("the lane table lists Celery queues of a gray Deployment that is not available")
    if s.get("entry") is not None and LANE_SVC in (s["entry"][0], s["gateway_backend"]) and not s["lane_svc"]:
        out.append("the entry route (or the gateway's copy of it) names a lane Service that is gone")
    return out


SIM_ONLY = ("published", "published_queues", "terminating", "gateway_backend", "gateway_lag")


def _run(s: dict, until, passes: int = 30) -> tuple[dict, list[str], list[list[str]]]:
    world_keys = {k: v for k, v in s.items() if k not in SIM_ONLY}
    trace, bad = [], []
    for _ in range(passes):
        plan = plan_release(world(**world_keys))
        trace.append(acts(plan))
        s = _apply(s, plan)
        bad += [f"pass {len(trace)} {trace[-1]}: {v}" for v in _violations(s)]
        if until(s, plan):
            return s, bad, trace
        s = _tick(s)
        world_keys = {k: v for k, v in s.items() if k not in SIM_ONLY}
    raise AssertionError(f"did not converge: {trace}")


FLOWS = [(False, None), (True, None), (False, CELERY), (True, CELERY)]
FLOW_IDS = ["no-entry", "entry-route", "celery-queues", "entry-route-celery-queues"]


def _healthy_then_set_image(entry: bool = False, celery: str | None = None) -> dict:
    s = dict(template="old", stable="old", paused=False, paused_by=None, targeted=True, rolled=True, pinned=False,
             gray=None, gray_replicas=1, lane_svc=False, gray_pods=0, status={"phase": "Healthy"}, ann={},
             published={}, terminating=0, deleting=False, entry=("a", 1, 1) if entry else None,
             gateway_backend="a", gateway_lag=0, celery=celery, published_queues=[])
    s, bad, _ = _run(s, lambda s, p: p.status["phase"] == "Healthy")
    assert bad == []
    s.update(template="new", paused=True, paused_by="webhook")       # kubectl set image, paused by the webhook
    s, bad, _ = _run(s, lambda s, p: p.status["phase"] == "Paused" and not s["gateway_lag"])
    assert bad == [] and s["published"] == ROUTED and s["pinned"]
    assert s["published_queues"] == (QUEUES if celery else [])
    assert s["entry"] is None or s["gateway_backend"] == LANE_SVC
    return s


@pytest.mark.parametrize("entry, celery", FLOWS, ids=FLOW_IDS)
def test_flow_approve_keeps_base_off_gray_pods(entry, celery):
    s = _healthy_then_set_image(entry, celery)
    s["ann"] = approved()
    s, bad, trace = _run(s, lambda s, p: p.status["phase"] == "Healthy")
    assert bad == [], trace
    assert (s["template"], s["stable"], s["paused"], s["pinned"], s["gray"], s["gray_pods"]) == \
        ("new", "new", False, False, None, 0)


@pytest.mark.parametrize("entry, celery", FLOWS, ids=FLOW_IDS)
def test_flow_rollback_keeps_base_off_gray_pods(entry, celery):
    s = _healthy_then_set_image(entry, celery)
    s["ann"] = {n.ROLLBACK_ANN: HASH["new"]}
    s, bad, trace = _run(s, lambda s, p: p.status["phase"] == "Healthy")
    assert bad == [], trace
    assert (s["template"], s["stable"], s["paused"], s["pinned"], s["gray"], s["gray_pods"]) == \
        ("old", "old", False, False, None, 0)


@pytest.mark.parametrize("entry, celery", FLOWS, ids=FLOW_IDS)
def test_flow_delete_mid_flight_keeps_base_off_gray_pods(entry, celery):
    s = _healthy_then_set_image(entry, celery)
    s["deleting"] = True
    s, bad, trace = _run(s, lambda s, p: p.done)
    assert bad == [], trace
    assert (s["template"], s["paused"], s["pinned"], s["gray"], s["gray_pods"], s["targeted"]) == \
        ("old", False, False, None, 0, False)


@pytest.mark.parametrize("route, lane_services, pending", [
    (http_route("a", 3, 3), {LANE_SVC}, None),
    (http_route("a", 3, None), {LANE_SVC}, None),
    (http_route("a", 3, 2), {LANE_SVC}, "acknowledge"),
    (http_route(LANE_SVC, 3, 3), {LANE_SVC}, "still routes to a-gray"),
    (http_route(LANE_SVC, 3, 3), set(), None),
    ({"kind": "HTTPRoute", "metadata": {"name": "x", "generation": 2},
      "status": {"parents": [{"conditions": [{"type": "Accepted"}]}]}}, set(), None),   # no observedGeneration
], ids=["acked", "no-status", "stale", "names-lane-svc", "names-nothing-of-ours", "conditions-without-generation"])
def test_entry_pending(route, lane_services, pending):
    from graybaggage_controller.plan import entry_pending
    got = entry_pending([route], lane_services)
    assert (got is None) if pending is None else (pending in got)
