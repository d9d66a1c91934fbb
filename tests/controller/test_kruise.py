"""Kruise mode, the pure part (controller/graybaggage_controller/kruise.py): one row per rule."""

import json

import pytest

from graybaggage_controller import kruise as k
from graybaggage_controller import names as n

NS = "default"


def rollout(name="rollout-a", deploy="spring-cloud-a", *, tr="higress-traffic", v1beta1=True, reason="Paused",
            ready=1, chash="c0ffee", labels=None, traffic_routings=None, ref=None, step=1, state="StepPaused"):
    spec = {"strategy": {"canary": {"steps": [{"pause": {}, "replicas": 1}],
                                    "patchPodTemplateMetadata": {"labels": labels if labels is not None else {
                                        "alicloud.service.tag": "gray", "opensergo.io/canary-gray": "gray"}}}}}
    wref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy}
    if v1beta1:
        spec["workloadRef"] = wref
    else:
        spec["objectRef"] = {"workloadRef": wref}
    if traffic_routings:
        spec["strategy"]["canary"]["trafficRoutings"] = traffic_routings
    if ref:
        spec["strategy"]["canary"]["trafficRoutingRef"] = ref
    r = {"metadata": {"name": name, "namespace": NS, "annotations": {k.TRAFFIC_ROUTING_ANN: tr} if tr else {}},
         "spec": spec, "status": {"phase": "Progressing",
                                  "conditions": [{"type": "Progressing", "reason": reason}] if reason else [],
                                  "canaryStatus": {"podTemplateHash": chash, "canaryReadyReplicas": ready,
                                                   "currentStepIndex": step, "currentStepState": state}}}
    return r


def traffic_routing(name="higress-traffic", members=("rollout-a",), header=("x-mse-tag", "gray"), ingress=None):
    strategy = {"matches": [{"headers": [{"type": "Exact", "name": "User-Agent", "value": "xiaoming"}]}]}
    if header:
        strategy["requestHeaderModifier"] = {"set": [{"name": header[0], "value": header[1]}]}
    return {"metadata": {"name": name, "namespace": NS,
                         "finalizers": [k.PROGRESSING_FINALIZER + m for m in members]},
            "spec": {"objectRef": [dict({"service": "spring-cloud-a"}, **(
                {"ingress": {"name": ingress[0], "classType": ingress[1]}} if ingress else {}))],
                     "strategy": strategy}}


def deployment(name="spring-cloud-a", app=None, canary_of=None, paused_by_kruise=False):
    app = app or (canary_of or name)
    labels = {k.CANARY_DEPLOYMENT_LABEL: canary_of} if canary_of else {}
    if paused_by_kruise:
        labels[k.STABLE_REVISION_LABEL] = "stable1"
    return {"metadata": {"name": name, "namespace": NS, "labels": labels, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"selector": {"matchLabels": {"app": app}}, "paused": paused_by_kruise,
                     "template": {"metadata": {"labels": {"app": app}}}}}


def rs(name, owner, h, ready=2, created="2026-01-01T00:00:00Z"):
    return {"metadata": {"name": name, "namespace": NS, "labels": {n.POD_TEMPLATE_HASH: h},
                         "creationTimestamp": created,
                         "ownerReferences": [{"kind": "Deployment", "name": owner}]},
            "status": {"readyReplicas": ready}}


def pod(name, rs_name, app="spring-cloud-a", h="x"):
    return {"metadata": {"name": name, "namespace": NS, "labels": {"app": app, n.POD_TEMPLATE_HASH: h},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": rs_name}]}}


def service(name="spring-cloud-a", app=None, pinned_by=None, pin_hash=None):
    sel = {"app": app or name}
    meta = {"name": name, "namespace": NS, "annotations": {}}
    if pinned_by:
        meta["annotations"] = {n.PINNED_BY_ANN: pinned_by, n.ORIGINAL_SELECTOR_ANN: json.dumps(sel)}
        sel = dict(sel, **{n.POD_TEMPLATE_HASH: pin_hash or "stable1"})
    return {"metadata": meta, "spec": {"ports": [{"name": "http", "port": 20001, "targetPort": 20001,
                                                  "protocol": "TCP"}], "selector": sel}}


def world(**over):
    """The seed mid-release: rollout-a Paused with one ready canary pod."""
    w = {"rollouts": [rollout()], "trs": [traffic_routing()],
         "deploys": [deployment(), deployment("spring-cloud-a-2h5kc", canary_of="spring-cloud-a")],
         "rss": [rs("spring-cloud-a-stable1", "spring-cloud-a", "stable1"),
                 rs("spring-cloud-a-2h5kc-c0ffee", "spring-cloud-a-2h5kc", "c0ffee", ready=1)],
         "pods": [pod("a-1", "spring-cloud-a-stable1", h="stable1"), pod("a-g", "spring-cloud-a-2h5kc-c0ffee",
                                                                        h="c0ffee")],
         "svcs": [service()]}
    w.update(over)
    return w


def run(w):
    return k.plan(w["rollouts"], w["trs"], w["deploys"], w["rss"], w["pods"], w["svcs"])


NO_CANARY = dict(deploys=[deployment()], rss=[rs("spring-cloud-a-stable1", "spring-cloud-a", "stable1")],
                 pods=[pod("a-1", "spring-cloud-a-stable1", h="stable1")])


# ---- lane tag and references: (rule, rollout, traffic routing, expected tag)
@pytest.mark.parametrize("rule,ro,tr,tag", [
    ("tag from the TrafficRouting's requestHeaderModifier.set value", rollout(labels={}), traffic_routing(), "gray"),
    ("header beats labels", rollout(labels={"alicloud.service.tag": "blue"}), traffic_routing(), "gray"),
    ("no header: alicloud.service.tag label", rollout(), traffic_routing(header=None), "gray"),
    ("no header: opensergo.io/canary-<tag> key", rollout(labels={"opensergo.io/canary-blue": "blue"}), None, "blue"),
    ("not a DNS-1123 label: no tag", rollout(labels={"alicloud.service.tag": "Gray_1"}), None, None),
    ("nothing names a tag", rollout(labels={}), traffic_routing(header=None), None),
])
def test_rollout_tag(rule, ro, tr, tag):
    assert k.rollout_tag(ro, tr) == tag, rule


@pytest.mark.parametrize("rule,ro,want", [
    ("annotation (what v0.5/v0.6 read)", rollout(), "higress-traffic"),
    ("v1beta1 trafficRoutingRef without the annotation", rollout(tr=None, ref="tr2"), "tr2"),
    ("trafficRoutingRef as an object", rollout(tr=None, ref={"name": "tr3"}), "tr3"),
    ("annotation wins over the ref", rollout(ref="tr2"), "higress-traffic"),
    ("neither", rollout(tr=None), None),
])
def test_traffic_routing_name(rule, ro, want):
    assert k.traffic_routing_name(ro) == want, rule


@pytest.mark.parametrize("rule,ro,want", [
    ("v1beta1 spec.workloadRef", rollout(), "spring-cloud-a"),
    ("v1alpha1 spec.objectRef.workloadRef", rollout(v1beta1=False), "spring-cloud-a"),
    ("not a Deployment", {"spec": {"workloadRef": {"apiVersion": "apps.kruise.io/v1alpha1", "kind": "CloneSet",
                                                   "name": "x"}}}, None),
])
def test_workload_name(rule, ro, want):
    assert k.workload_name(ro) == want, rule


# ---- membership: (rule, world overrides, member?, reason)
@pytest.mark.parametrize("rule,over,member,reason", [
    ("ready canary + progressing finalizer: member", {}, True, "Member"),
    ("InRolling is as good as Paused", {"rollouts": [rollout(reason="InRolling")]}, True, "Member"),
    ("no ready canary pod yet: not yet", {"rollouts": [rollout(ready=0)]}, False, "CanaryNotReady"),
    ("Finalising (approved): out before Kruise resumes the base", {"rollouts": [rollout(reason="Finalising")]},
     False, "Finalising"),
    ("approved on the last step (StepReady), before Kruise says Finalising: out",
     {"rollouts": [rollout(state="StepReady")]}, False, "Approved"),
    ("StepReady on an earlier step: still a member", {"rollouts": [rollout(state="StepReady", step=0)]}, True,
     "Member"),
    ("Cancelling (rolled back): out", {"rollouts": [rollout(reason="Cancelling")]}, False, "Cancelling"),
    ("Completed: out", {"rollouts": [rollout(reason="Completed")]}, False, "Completed"),
    ("Rollout being deleted (Kruise finalises, resumes the base): out",
     {"rollouts": [dict(rollout(), metadata=dict(rollout()["metadata"], deletionTimestamp="2026-01-02T00:00:00Z"))]},
     False, "Terminating"),
    ("phase Terminating: out", {"rollouts": [dict(rollout(), status=dict(rollout()["status"], phase="Terminating"))]},
     False, "Terminating"),
    ("finalizer gone from the TrafficRouting: out", {"trs": [traffic_routing(members=())]}, False,
     "NotInTrafficRouting"),
    ("no TrafficRouting reference: no finalizer needed", {"rollouts": [rollout(tr=None)], "trs": []}, True, "Member"),
    ("no canary Deployment", NO_CANARY, False, "NoCanary"),
    ("no tag", {"rollouts": [rollout(labels={})], "trs": [traffic_routing(header=None)]}, False, "NoTag"),
    ("workload missing", {"deploys": []}, False, "NoWorkload"),
])
def test_membership(rule, over, member, reason):
    p = run(world(**over))
    v = p.views[0]
    assert (v.member, v.reason) == (member, reason), rule
    assert (p.lanes == {"gray": {"spring-cloud-a": "spring-cloud-a-gray"}}) == member, rule


def test_lane_service_selects_the_canary_hash():
    p = run(world())
    (svc,) = p.services
    assert svc["metadata"]["name"] == "spring-cloud-a-gray"
    assert svc["spec"]["selector"] == {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: "c0ffee"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 20001, "targetPort": 20001, "protocol": "TCP"}]
    assert svc["metadata"]["labels"][k.ROLLOUT_LABEL] == "rollout-a"


def test_lane_service_unchanged_is_not_rewritten_and_unwanted_is_deleted():
    first = run(world()).services[0]
    first = dict(first, metadata=dict(first["metadata"], resourceVersion="7"))
    assert run(world(svcs=[service(), first])).services == []
    p = run(world(svcs=[service(), first], **NO_CANARY))
    assert p.delete_services == ["spring-cloud-a-gray"]


def test_lane_service_kept_while_leaving():
    """Finalising: out of the table, but the Service stays until the canary is gone (in-flight calls)."""
    p = run(world(rollouts=[rollout(reason="Finalising")]))
    assert [s["metadata"]["name"] for s in p.services] == ["spring-cloud-a-gray"] and p.lanes == {}


# ---- base Service pinning: (rule, world overrides, expected patch selector or None for no patch)
PIN_STABLE = {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: "stable1"}


@pytest.mark.parametrize("rule,over,want", [
    ("canary exists: pin to the stable ReplicaSet's hash", {}, PIN_STABLE),
    ("already pinned by us: no patch", {"svcs": [service(pinned_by="kruise:rollout-a")]}, None),
    ("Rollout with trafficRoutings: Kruise pins, we don't",
     {"rollouts": [rollout(traffic_routings=[{"service": "spring-cloud-a"}])]}, None),
    ("pinned by a GrayRelease: not ours to touch", {"svcs": [service(pinned_by="my-release")]}, None),
    ("no canary and no canary pod: unpin", dict(NO_CANARY, svcs=[service(pinned_by="kruise:rollout-a")]),
     {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: None}),
    ("Kruise's webhook paused the base on a new template, no canary yet: pin already",
     dict(NO_CANARY, deploys=[deployment(paused_by_kruise=True)]), PIN_STABLE),
    ("paused by someone else (no stable-revision label), no canary: no pin",
     dict(NO_CANARY, deploys=[dict(deployment(), spec=dict(deployment()["spec"], paused=True))]), None),
    ("canary Deployment gone but a canary pod left: stay pinned",
     dict(NO_CANARY, pods=[pod("a-1", "spring-cloud-a-stable1", h="stable1"), pod("a-g", "gone-rs", h="c0ffee")],
          svcs=[service(pinned_by="kruise:rollout-a")]), None),
    ("promotion: the newest base ReplicaSet with a ready pod wins",
     {"rss": [rs("spring-cloud-a-stable1", "spring-cloud-a", "stable1"),
              rs("spring-cloud-a-new2", "spring-cloud-a", "new2", ready=1, created="2026-01-02T00:00:00Z")],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: "new2"}),
    ("promotion: a newer ReplicaSet with no ready pod does not take the pin",
     {"rss": [rs("spring-cloud-a-stable1", "spring-cloud-a", "stable1"),
              rs("spring-cloud-a-new2", "spring-cloud-a", "new2", ready=0, created="2026-01-02T00:00:00Z")],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, None),
    ("approved and Kruise resumed the base: unpin (a rolling base must never empty the Service)",
     {"rollouts": [rollout(reason="Finalising")], "svcs": [service(pinned_by="kruise:rollout-a")]},
     {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: None}),
    ("approved, the base still paused: unpin already (waiting for Kruise's resume lost the race: 0 endpoints)",
     {"rollouts": [rollout(reason="Finalising")], "deploys": [deployment(paused_by_kruise=True),
                                                              deployment("spring-cloud-a-2h5kc",
                                                                         canary_of="spring-cloud-a")],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: None}),
    ("approved on the last step (StepReady), the base still paused: unpin already",
     {"rollouts": [rollout(state="StepReady")], "deploys": [deployment(paused_by_kruise=True),
                                                           deployment("spring-cloud-a-2h5kc",
                                                                      canary_of="spring-cloud-a")],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: None}),
    ("paused mid-rollout (StepPaused), not approved: stay pinned",
     {"rollouts": [rollout()], "deploys": [deployment(paused_by_kruise=True),
                                           deployment("spring-cloud-a-2h5kc", canary_of="spring-cloud-a")],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, None),
    ("Rollout deleted mid-release (Kruise resumes the base on the new template): unpin, as on approval",
     {"rollouts": [dict(rollout(), status=dict(rollout()["status"], phase="Terminating"))],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, {"app": "spring-cloud-a", n.POD_TEMPLATE_HASH: None}),
    ("rolled back (Cancelling), base resumed: stay pinned while canary pods run",
     {"rollouts": [rollout(reason="Cancelling")], "svcs": [service(pinned_by="kruise:rollout-a")]}, None),
    ("no base ReplicaSet with a ready pod: keep the pin as it is",
     {"rss": [rs("spring-cloud-a-stable1", "spring-cloud-a", "stable1", ready=0)],
      "svcs": [service(pinned_by="kruise:rollout-a")]}, None),
])
def test_pins(rule, over, want):
    p = run(world(**over))
    got = p.pins.get("spring-cloud-a")
    assert (got["spec"]["selector"] if got else None) == want, rule


def test_pin_records_the_original_selector_and_the_rollout():
    ann = run(world()).pins["spring-cloud-a"]["metadata"]["annotations"]
    assert json.loads(ann[n.ORIGINAL_SELECTOR_ANN]) == {"app": "spring-cloud-a"}
    assert ann[n.PINNED_BY_ANN] == "kruise:rollout-a"


def test_untouched_service_and_deployment():
    """b (no Rollout on it) gets nothing: no lane Service, no pin, no route."""
    w = world(deploys=world()["deploys"] + [deployment("spring-cloud-b")],
              svcs=[service(), service("spring-cloud-b")])
    p = run(w)
    assert "spring-cloud-b" not in p.pins
    assert all(s["metadata"]["name"] != "spring-cloud-b-gray" for s in p.services)
    assert p.managed == {"spring-cloud-a": "rollout-a"}


def test_two_rollouts_one_lane():
    w = world(rollouts=[rollout(), rollout("rollout-c", "spring-cloud-c", chash="cafe")],
              trs=[traffic_routing(members=("rollout-a", "rollout-c"))],
              deploys=world()["deploys"] + [deployment("spring-cloud-c"),
                                            deployment("spring-cloud-c-btk88", canary_of="spring-cloud-c")],
              svcs=[service(), service("spring-cloud-c")])
    assert run(w).lanes == {"gray": {"spring-cloud-a": "spring-cloud-a-gray",
                                     "spring-cloud-c": "spring-cloud-c-gray"}}


@pytest.mark.parametrize("rule,table,lanes,want", [
    ("new tag: fallback base", {"version": 1, "namespace": NS, "lanes": {}}, {"gray": {"a": "a-gray"}},
     {"gray": {"fallback": "base", "routes": {"a": "a-gray"}}}),
    ("a Lane's tag: routes merged, its fallback and entry kept",
     {"version": 1, "namespace": NS, "lanes": {"gray": {"fallback": "strict", "routes": {"b": "b-gray"},
                                                         "entry": {"rules": []}}}},
     {"gray": {"a": "a-gray"}},
     {"gray": {"fallback": "strict", "routes": {"a": "a-gray", "b": "b-gray"}, "entry": {"rules": []}}}),
    ("no Kruise lanes: unchanged", {"version": 1, "namespace": NS, "lanes": {"x": {"routes": {}}}}, {},
     {"x": {"routes": {}}}),
])
def test_merge_lanes(rule, table, lanes, want):
    assert k.merge_lanes(table, lanes)["lanes"] == want, rule


@pytest.mark.parametrize("rule,release,conflict", [
    ("GrayRelease on a Kruise-managed Deployment", {"spec": {"workloadRef": {"name": "spring-cloud-a"}}}, True),
    ("GrayRelease on another Deployment", {"spec": {"workloadRef": {"name": "spring-cloud-b"}}}, False),
])
def test_release_conflict(rule, release, conflict):
    msg = k.release_conflict(release, {"spring-cloud-a": "rollout-a"})
    assert (msg is not None) == conflict, rule
    if conflict:
        assert "rollout-a" in msg and "Kruise" in msg


@pytest.mark.parametrize("status,message,want", [
    (500, 'conversion webhook for rollouts.kruise.io/v1beta1, Kind=Rollout failed: Post "https://127.0.0.1:1/convert'
          '?timeout=30s": dial tcp 127.0.0.1:1: connect: connection refused', "its webhook refuses connections"),
    (500, 'conversion webhook for rollouts.kruise.io/v1beta1, Kind=Rollout failed: Post "https://kruise-rollout-'
          'webhook-service.kruise-rollout.svc:443/convert?timeout=30s": no endpoints available for service',
     "its webhook Service has no endpoints"),
    (500, "conversion webhook for rollouts.kruise.io/v1beta1, Kind=Rollout failed: context deadline exceeded",
     "its webhook timed out"),
    (500, "conversion webhook for x failed: x509: certificate signed by unknown authority",
     "its conversion webhook fails: conversion webhook for x failed: x509: certificate signed by unknown authority"),
    (500, "etcdserver: request timed out", None),           # not about Kruise
    (403, "conversion webhook ... connection refused", None),  # a refusal by RBAC is not the manager
    (404, "the server could not find the requested resource", None),
])
def test_manager_down(status, message, want):
    assert k.manager_down(status, message) == want


# ---- a Lane's entry route follows Kruise members (Reconciler.sync_entries reads the table WITH the Kruise lanes)
ENTRY_LANE = {"apiVersion": "graybaggage.io/v1alpha1", "kind": "Lane",
              "metadata": {"name": "gray", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
              "spec": {"tag": "gray", "header": "x-mse-tag",
                       "entry": {"service": "spring-cloud-a", "route": {"httpRoute": {"name": "spring-cloud-a"}},
                                 "matches": [{"headers": [{"type": "Exact", "name": "User-Agent",
                                                           "value": "xiaoming"}]}]}}}


@pytest.mark.parametrize("rule,kruise_lanes,backend,active", [
    ("Kruise canary of the entry service: the entry sends xiaoming to its lane Service",
     {"gray": {"spring-cloud-a": "spring-cloud-a-gray", "spring-cloud-c": "spring-cloud-c-gray"}},
     "spring-cloud-a-gray", True),
    ("Kruise canary of another service only: entry active (dyes), backend the base Service",
     {"gray": {"spring-cloud-c": "spring-cloud-c-gray"}}, "spring-cloud-a", True),
    ("no Kruise lane: entry idle", {}, "spring-cloud-a", False),
])
def test_entry_follows_kruise_lanes(rule, kruise_lanes, backend, active, monkeypatch):
    from graybaggage_controller import entry
    from graybaggage_controller.reconcile import Reconciler

    class Kube:
        def list(self, kind, ns, selector=None):
            return {"Lane": [ENTRY_LANE], "Service": [service("spring-cloud-a")]}.get(kind, [])

    seen = []

    class Provider:
        handles = (entry.base.HTTPROUTE, None)

        def __init__(self, kube, namespace):
            pass

        def ensure(self, intents):
            seen.extend(intents)
            return {}

    monkeypatch.setattr(entry, "PROVIDERS", [Provider])
    rec = Reconciler(Kube())
    rec.table_hook = lambda ns, table: k.merge_lanes(table, kruise_lanes)
    rec.sync_entries(NS)
    assert [(it.backend, it.active) for it in seen] == [(backend, active)], rule


# ---- entry: Kruise's canary Ingress taken over (kruise.entry_plan)
def ingress(name="spring-cloud-a", backend="spring-cloud-a", annotations=None, owner=None):
    meta = {"name": name, "namespace": NS, "resourceVersion": "7", "annotations": dict(annotations or {})}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": {"ingressClassName": "higress", "rules": [{"host": "springa.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": backend, "port": {"number": 20001}}}}]}}]}}


KRUISE_OWNER = {"apiVersion": "rollouts.kruise.io/v1alpha1", "kind": "TrafficRouting", "name": "higress-traffic",
                "controller": True}
KRUISE_CANARY_ANN = {"nginx.ingress.kubernetes.io/canary": "true",
                     "nginx.ingress.kubernetes.io/canary-by-header": "User-Agent",
                     "nginx.ingress.kubernetes.io/canary-by-header-value": "xiaoming"}


def kruise_canary(backend="spring-cloud-a", annotations=None):
    """What Kruise's higress.lua leaves on `<ingress>-canary` (a copy of the stable Ingress, stable backend)."""
    return ingress("spring-cloud-a-canary", backend, {**KRUISE_CANARY_ANN, **(annotations or {})}, KRUISE_OWNER)


A_GRAY = {"gray": {"spring-cloud-a": "spring-cloud-a-gray", "spring-cloud-c": "spring-cloud-c-gray"}}
C_GRAY = {"gray": {"spring-cloud-c": "spring-cloud-c-gray"}}
SEED_TR = traffic_routing(members=("rollout-a", "rollout-c"), ingress=("spring-cloud-a", "higress"))
UPDATE, REMOVE = k.HIGRESS_UPDATE, k.HIGRESS_REMOVE


def entry(ingresses, lanes, rollouts=None, trs=None):
    return k.entry_plan(rollouts or [rollout()], [SEED_TR] if trs is None else trs, ingresses, lanes)


def settle(ingresses, lanes, **kw):
    """The Ingresses after the plan's writes (what the API server then holds)."""
    writes, _ = entry(ingresses, lanes, **kw)
    return [writes.get(i["metadata"]["name"], i) for i in ingresses]


def backend(ing):
    return ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]


def ann(ing):
    return {a: v for a, v in ing["metadata"]["annotations"].items() if a != k.ENTRY_ANN}


def routed(lanes=A_GRAY, canary=None, stable=None, **kw):
    return settle([stable or ingress(), canary or kruise_canary()], lanes, **kw)


@pytest.mark.parametrize("rule,ingresses,lanes,kw,canary_ann,canary_backend,stable_ann,state", [
    ("higress, the entry Service has a member: header control + lane Service backend; stable strips the header",
     [ingress(), kruise_canary()], A_GRAY, {}, {**KRUISE_CANARY_ANN, UPDATE: "x-mse-tag gray"}, "spring-cloud-a-gray",
     {REMOVE: "x-mse-tag,baggage"}, "Routed"),
    ("higress, a member elsewhere in the lane only (c): header control, backend stays the (pinned) stable Service",
     [ingress(), kruise_canary()], C_GRAY, {}, {**KRUISE_CANARY_ANN, UPDATE: "x-mse-tag gray"}, "spring-cloud-a",
     {REMOVE: "x-mse-tag,baggage"}, "Dyeing"),
    ("no lane in the table: nothing changed", [ingress(), kruise_canary()], {}, {}, KRUISE_CANARY_ANN,
     "spring-cloud-a", {}, "Idle"),
    ("lane left the table: both undone exactly (Kruise's annotations and backend, the stable as it was)",
     routed(), {}, {}, KRUISE_CANARY_ANN, "spring-cloud-a", {}, "Idle"),
    ("member left, lane still has c: backend back to the stable Service, header kept",
     routed(), C_GRAY, {}, {**KRUISE_CANARY_ANN, UPDATE: "x-mse-tag gray"}, "spring-cloud-a",
     {REMOVE: "x-mse-tag,baggage"}, "Dyeing"),
    ("the user's own header control kept beside ours (update: one line per header; remove: a comma list)",
     [ingress(annotations={REMOVE: "x-debug"}), kruise_canary(annotations={UPDATE: "x-env prod"})], A_GRAY, {},
     {**KRUISE_CANARY_ANN, UPDATE: "x-env prod\nx-mse-tag gray"}, "spring-cloud-a-gray",
     {REMOVE: "x-debug,x-mse-tag,baggage"}, "Routed"),
    ("... and put back exactly on the undo",
     routed(canary=kruise_canary(annotations={UPDATE: "x-env prod"}), stable=ingress(annotations={REMOVE: "x-debug"})),
     {}, {}, {**KRUISE_CANARY_ANN, UPDATE: "x-env prod"}, "spring-cloud-a", {REMOVE: "x-debug"}, "Idle"),
    ("the TrafficRouting's header name is the one set", [ingress(), kruise_canary()], A_GRAY,
     {"trs": [traffic_routing(members=("rollout-a",), header=("x-lane", "gray"), ingress=("spring-cloud-a", "higress"))]},
     {**KRUISE_CANARY_ANN, UPDATE: "x-lane gray"}, "spring-cloud-a-gray", {REMOVE: "x-lane,baggage"}, "Routed"),
    ("ingress-nginx: backend only (no header-set annotation), stable untouched, the view says so",
     [ingress(), kruise_canary()], A_GRAY,
     {"trs": [traffic_routing(members=("rollout-a",), ingress=("spring-cloud-a", "nginx"))]},
     KRUISE_CANARY_ANN, "spring-cloud-a-gray", {}, "HeaderNotSet"),
    ("another class (mse: MSE's agent routes): left to Kruise", [ingress(), kruise_canary()], A_GRAY,
     {"trs": [traffic_routing(members=("rollout-a",), ingress=("spring-cloud-a", "mse"))]},
     KRUISE_CANARY_ANN, "spring-cloud-a", {}, "Unsupported"),
    ("<ingress>-canary not owned by Kruise: not touched (stable still strips)",
     [ingress(), dict(kruise_canary(), metadata=dict(kruise_canary()["metadata"], ownerReferences=[]))], A_GRAY, {},
     KRUISE_CANARY_ANN, "spring-cloud-a", {REMOVE: "x-mse-tag,baggage"}, "NotKruise"),
    ("a Lane's entry already manages the stable Ingress: no second strip",
     [ingress(annotations={n.ENTRY_ROUTING_ANN: "{}"}), kruise_canary()], A_GRAY, {},
     {**KRUISE_CANARY_ANN, UPDATE: "x-mse-tag gray"}, "spring-cloud-a-gray", {n.ENTRY_ROUTING_ANN: "{}"}, "Routed"),
    ("a Rollout's own trafficRoutings: Kruise's <svc>-canary backend switched too",
     [ingress(), kruise_canary(backend="spring-cloud-a-canary")], A_GRAY,
     {"rollouts": [rollout(tr=None, traffic_routings=[{"service": "spring-cloud-a", "ingress": {
         "name": "spring-cloud-a", "classType": "higress"}}])], "trs": []},
     {**KRUISE_CANARY_ANN, UPDATE: "x-mse-tag gray"}, "spring-cloud-a-gray", {REMOVE: "x-mse-tag,baggage"}, "Routed"),
    ("... and back to Kruise's <svc>-canary on the undo",
     routed(canary=kruise_canary(backend="spring-cloud-a-canary"),
            rollouts=[rollout(tr=None, traffic_routings=[{"service": "spring-cloud-a", "ingress": {
                "name": "spring-cloud-a", "classType": "higress"}}])], trs=[]), {},
     {"rollouts": [rollout(tr=None, traffic_routings=[{"service": "spring-cloud-a", "ingress": {
         "name": "spring-cloud-a", "classType": "higress"}}])], "trs": []},
     KRUISE_CANARY_ANN, "spring-cloud-a-canary", {}, "Idle"),
    ("Rollout being deleted: its Ingresses undone (while Kruise finalises, before the lane Service goes)",
     routed(), A_GRAY,
     {"rollouts": [dict(rollout(), metadata=dict(rollout()["metadata"], deletionTimestamp="2026-01-02T00:00:00Z"))]},
     KRUISE_CANARY_ANN, "spring-cloud-a", {}, None),
    ("no Rollout left at all: whatever carries our record undone", routed(), {}, {"rollouts": [], "trs": []},
     KRUISE_CANARY_ANN, "spring-cloud-a", {}, None),
])
def test_entry(rule, ingresses, lanes, kw, canary_ann, canary_backend, stable_ann, state):
    stable, canary = settle(ingresses, lanes, **kw)
    assert (ann(canary), backend(canary)) == (canary_ann, canary_backend), rule
    assert ann(stable) == stable_ann and backend(stable) == "spring-cloud-a", rule
    views = entry(ingresses, lanes, **kw)[1]
    assert [v.state for v in views] == ([state] if state else []), rule
    if not canary_ann.get(UPDATE) and canary_backend == backend(ingresses[1]) and ann(canary) == ann(ingresses[1]):
        assert k.ENTRY_ANN not in canary["metadata"]["annotations"], rule


@pytest.mark.parametrize("rule,lanes", [("member", A_GRAY), ("dyeing", C_GRAY), ("idle", {})])
def test_entry_converges(rule, lanes):
    """A second pass over its own result writes nothing (a restarted controller converges; no fight)."""
    once = settle([ingress(), kruise_canary()], lanes)
    assert entry(once, lanes)[0] == {}, rule


def test_entry_undo_of_a_restored_object_is_kruises():
    """Set, then undone: byte for byte the objects before (only the resourceVersion aside)."""
    before = [ingress(annotations={REMOVE: "x-debug"}), kruise_canary(annotations={UPDATE: "x-env prod"})]
    after = settle(settle(before, A_GRAY), {})
    assert after == before


def test_entry_canary_copied_from_a_stripped_stable_is_undone_there():
    """Kruise makes a new canary Ingress as a copy of the stable one, our strip and its record included: the copy's
    strip is undone on the canary (it sets the header; it must not remove it too), its own record replaces it."""
    stable, _ = routed()
    copied = kruise_canary(annotations={a: v for a, v in stable["metadata"]["annotations"].items()})
    _, canary = settle([stable, copied], A_GRAY)
    assert ann(canary) == {**KRUISE_CANARY_ANN, UPDATE: "x-mse-tag gray"}
    _, canary = settle([stable, canary], {})
    assert ann(canary) == KRUISE_CANARY_ANN and k.ENTRY_ANN not in canary["metadata"]["annotations"]


def test_entry_kruise_changing_its_annotations_is_no_conflict():
    """Kruise's script rewrites only its canary keys: our keys stay and nothing needs writing."""
    _, canary = routed()
    canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-by-header-value"] = "xiaohong"
    assert entry([routed()[0], canary], A_GRAY)[0] == {}


@pytest.mark.parametrize("bad", ["{not json", "[]", '{"annotations": "x"}'])
def test_entry_bad_record_never_crashes(bad):
    """A record someone edited: what was there before is unknown, so that Ingress is left alone and said so."""
    _, canary = routed()
    canary["metadata"]["annotations"][k.ENTRY_ANN] = bad
    for lanes in (A_GRAY, {}):
        writes, views = entry([routed()[0], canary], lanes)
        assert "spring-cloud-a-canary" not in writes
        assert [v.state for v in views if v.canary == "spring-cloud-a-canary"][-1] == "BadRecord"


def test_entry_through_plan():
    """plan() derives the entry from its own lane table: a member's canary Ingress is routed to its lane Service."""
    w = world(trs=[traffic_routing(ingress=("spring-cloud-a", "higress"))])
    p = k.plan(w["rollouts"], w["trs"], w["deploys"], w["rss"], w["pods"], w["svcs"], [ingress(), kruise_canary()])
    assert backend(p.ingresses["spring-cloud-a-canary"]) == "spring-cloud-a-gray"
    assert [(v.canary, v.state) for v in p.entries] == [("spring-cloud-a-canary", "Routed")]
    p = k.plan([rollout(reason="Finalising")], w["trs"], w["deploys"], w["rss"], w["pods"], w["svcs"],
               [routed(lanes={"gray": {"spring-cloud-a": "spring-cloud-a-gray"}})[0],
                routed(lanes={"gray": {"spring-cloud-a": "spring-cloud-a-gray"}})[1]])
    assert p.lanes == {} and backend(p.ingresses["spring-cloud-a-canary"]) == "spring-cloud-a"
