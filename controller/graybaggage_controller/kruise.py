"""Kruise mode: lanes from a user's own Kruise Rollout + TrafficRouting objects (pure; I/O in kruise_io.py).

Kruise Rollout (openkruise/rollouts) makes the canary Deployment `<deploy>-xxxxx` on `kubectl set image`
but does no per-hop routing. From the Rollouts, TrafficRoutings, Deployments, ReplicaSets, Pods and Services
of one namespace, `plan()` derives what graybaggage adds so the seed's lanes work:

- a lane per Rollout: its tag from the TrafficRouting's `requestHeaderModifier.set` (the value of the lane
  header), else from `patchPodTemplateMetadata` labels (`alicloud.service.tag`, `opensergo.io/canary-<tag>`);
- lane Services `<svc>-<tag>` for every Service selecting the workload, selecting the canary's
  `pod-template-hash` (the canary Deployment has the SAME selector as the base, so only the hash tells
  its pods apart);
- the lane-table routes `<svc> -> <svc>-<tag>` once the canary has a ready pod, and not any more once the
  Rollout is Finalising / Cancelling / Completed or (TrafficRouting mode) its progressing finalizer left
  the TrafficRouting: Kruise resumes the base only after that, so the lane leaves the table first;
- base Services pinned to the newest base ReplicaSet with a ready pod from the moment Kruise's webhook pauses the
  base on a new template while any canary pod exists (Kruise's TrafficRouting mode leaves them selecting the
  canary pods too); unpinned once no canary pod is left, or as soon as the Rollout is approved to promote,
  in the pass that drops the lane and before Kruise resumes the base (so the rolling base can never leave the
  Service empty); never pinned when the Rollout itself has
  `trafficRoutings` (Kruise pins then).

Nothing here writes Kruise's objects: never the Deployment's pause, never the canary's template (Kruise finds
its canary by template equality).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

from . import desired as d
from . import names as n

Obj = dict[str, Any]

GROUP = "rollouts.kruise.io"
TRAFFIC_ROUTING_ANN = "rollouts.kruise.io/trafficrouting"
CANARY_DEPLOYMENT_LABEL = "rollouts.kruise.io/canary-deployment"
#: Kruise's webhook labels the base Deployment with it (and pauses it) when its template changes
STABLE_REVISION_LABEL = "rollouts.kruise.io/stable-revision"
PROGRESSING_FINALIZER = "progressing.rollouts.kruise.io/"
#: on the lane Services graybaggage makes for a Rollout (value: the Rollout's name)
ROLLOUT_LABEL = "graybaggage.io/kruise-rollout"
#: PINNED_BY_ANN value prefix on a base Service pinned in Kruise mode
PIN_PREFIX = "kruise:"
LEAVING_REASONS = ("Finalising", "Cancelling", "Completed")
_TAG = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass
class RolloutView:
    """What graybaggage makes of one Rollout (for conditions, logs and `kubectl graybaggage status`)."""
    rollout: str
    deployment: str
    tag: str | None
    traffic_routing: str | None
    canary: str | None          # canary Deployment name
    canary_hash: str | None
    member: bool                # in the lane table
    reason: str                 # why (not) a member, one word
    message: str


@dataclasses.dataclass
class Plan:
    lanes: dict[str, dict[str, str]]                 # tag -> routes {svc: svc-tag}
    services: list[Obj]                              # lane Services wanted
    delete_services: list[str]                       # our lane Services no longer wanted
    pins: dict[str, Obj]                             # base Service name -> merge patch (pin or unpin)
    views: list[RolloutView]
    managed: dict[str, str]                          # Deployment name -> Rollout name


def _meta(o: Mapping[str, Any] | None) -> Obj:
    return (o or {}).get("metadata") or {}


def workload_name(rollout: Mapping[str, Any]) -> str | None:
    """The Deployment a Rollout targets: v1beta1 `spec.workloadRef` or v1alpha1 `spec.objectRef.workloadRef`."""
    spec = rollout.get("spec") or {}
    ref = spec.get("workloadRef") or (spec.get("objectRef") or {}).get("workloadRef") or {}
    if ref.get("kind", "Deployment") != "Deployment" or not str(ref.get("apiVersion", "apps/v1")).startswith("apps/"):
        return None
    return ref.get("name") or None


def canary_strategy(rollout: Mapping[str, Any]) -> Obj:
    return ((rollout.get("spec") or {}).get("strategy") or {}).get("canary") or {}


def traffic_routing_name(rollout: Mapping[str, Any]) -> str | None:
    """The annotation (what v0.5/v0.6 read), else v1beta1 `spec.strategy.canary.trafficRoutingRef`."""
    ann = (_meta(rollout).get("annotations") or {}).get(TRAFFIC_ROUTING_ANN)
    if ann:
        return ann
    ref = canary_strategy(rollout).get("trafficRoutingRef")
    if isinstance(ref, str):
        return ref or None
    if isinstance(ref, Mapping):
        return ref.get("name") or None
    return None


def header_tag(traffic_routing: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(header, tag) from the TrafficRouting's `strategy.requestHeaderModifier.set` (first entry)."""
    strategy = ((traffic_routing or {}).get("spec") or {}).get("strategy") or {}
    for entry in ((strategy.get("requestHeaderModifier") or {}).get("set") or []):
        if isinstance(entry, Mapping) and entry.get("name") and entry.get("value"):
            return str(entry["name"]).lower(), str(entry["value"])
    return None, None


def label_tag(rollout: Mapping[str, Any]) -> str | None:
    """The tag from patchPodTemplateMetadata: `alicloud.service.tag`, else `opensergo.io/canary-<tag>`."""
    labels = (canary_strategy(rollout).get("patchPodTemplateMetadata") or {}).get("labels") or {}
    if labels.get("alicloud.service.tag"):
        return str(labels["alicloud.service.tag"])
    for key in sorted(labels):
        if key.startswith("opensergo.io/canary-") and len(key) > len("opensergo.io/canary-"):
            return key[len("opensergo.io/canary-"):]
    return None


def rollout_tag(rollout: Mapping[str, Any], traffic_routing: Mapping[str, Any] | None) -> str | None:
    _header, tag = header_tag(traffic_routing)
    tag = tag or label_tag(rollout)
    return tag if tag and len(tag) <= 63 and _TAG.match(tag) else None


def progress_reason(rollout: Mapping[str, Any]) -> str:
    """The Progressing condition's reason (Initializing / InRolling / Paused / Finalising / Cancelling /
    Completed), or '' when there is none."""
    for c in (rollout.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing":
            return str(c.get("reason") or "")
    return ""


def canary_status(rollout: Mapping[str, Any]) -> Obj:
    return ((rollout.get("status") or {}).get("canaryStatus")) or {}


def managed_deployments(rollouts: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Deployment name -> Rollout name, for every Rollout (not being deleted) targeting a Deployment."""
    out: dict[str, str] = {}
    for r in sorted(rollouts, key=lambda o: _meta(o).get("name") or ""):
        w = workload_name(r)
        if w and not _meta(r).get("deletionTimestamp"):
            out.setdefault(w, _meta(r)["name"])
    return out


def _owner_names(obj: Mapping[str, Any], kind: str) -> set[str]:
    return {ref.get("name") for ref in _meta(obj).get("ownerReferences") or [] if ref.get("kind") == kind}


def stable_hash(base: str, replicasets: Iterable[Mapping[str, Any]]) -> str | None:
    """pod-template-hash of the newest ReplicaSet of Deployment `base` that has a ready pod."""
    best = None
    for rs in replicasets:
        if base not in _owner_names(rs, "Deployment"):
            continue
        if int((rs.get("status") or {}).get("readyReplicas") or 0) < 1:
            continue
        h = (_meta(rs).get("labels") or {}).get(n.POD_TEMPLATE_HASH)
        if not h:
            continue
        key = (_meta(rs).get("creationTimestamp") or "", _meta(rs).get("name") or "")
        if best is None or key > best[0]:
            best = (key, h)
    return best[1] if best else None


def canary_pods_left(base_deploy: Mapping[str, Any], replicasets: Iterable[Mapping[str, Any]],
                     pods: Iterable[Mapping[str, Any]]) -> int:
    """Pods selected by the base Deployment's selector that do not belong to one of its ReplicaSets."""
    base = _meta(base_deploy).get("name")
    selector = (((base_deploy.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    base_rs = {_meta(rs).get("name") for rs in replicasets if base in _owner_names(rs, "Deployment")}
    count = 0
    for p in pods:
        if not d.selects(selector, _meta(p).get("labels") or {}):
            continue
        if _owner_names(p, "ReplicaSet") & base_rs:
            continue
        count += 1
    return count


def lane_service(svc: Mapping[str, Any], rollout: str, tag: str, canary_hash: str) -> Obj:
    """`<svc>-<tag>`: the Service's ports, its original selector plus the canary's pod-template-hash."""
    ports = [{k: p[k] for k in ("name", "port", "targetPort", "protocol", "appProtocol") if k in p}
             for p in (svc.get("spec") or {}).get("ports") or []]
    selector = d.original_selector(svc)
    selector[n.POD_TEMPLATE_HASH] = canary_hash
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": d.lane_name(_meta(svc)["name"], tag), "namespace": _meta(svc).get("namespace"),
                     "labels": {ROLLOUT_LABEL: rollout, n.LANE_LABEL: tag, n.MANAGED_BY_LABEL: n.MANAGED_BY}},
        "spec": {"type": "ClusterIP", "ports": ports, "selector": selector},
    }


def _user_services(services: Iterable[Mapping[str, Any]]) -> list[Obj]:
    return [dict(s) for s in services if not (_meta(s).get("labels") or {}).get(ROLLOUT_LABEL)]


def plan(rollouts: Iterable[Mapping[str, Any]], traffic_routings: Iterable[Mapping[str, Any]],
         deployments: Iterable[Mapping[str, Any]], replicasets: Iterable[Mapping[str, Any]],
         pods: Iterable[Mapping[str, Any]], services: Iterable[Mapping[str, Any]]) -> Plan:
    rollouts = sorted(rollouts, key=lambda o: _meta(o).get("name") or "")
    trs = {_meta(t).get("name"): t for t in traffic_routings}
    deploys = {_meta(x).get("name"): x for x in deployments}
    replicasets, pods, services = list(replicasets), list(pods), list(services)
    user_svcs = _user_services(services)
    ours = {_meta(s)["name"]: s for s in services if (_meta(s).get("labels") or {}).get(ROLLOUT_LABEL)}

    lanes: dict[str, dict[str, str]] = {}
    wanted: dict[str, Obj] = {}
    pins: dict[str, Obj] = {}
    pinned_by_us: set[str] = set()
    views: list[RolloutView] = []
    managed = managed_deployments(rollouts)

    for r in rollouts:
        name = str(_meta(r).get("name") or "")
        w = workload_name(r)
        base = deploys.get(w) if w else None
        tr_name = traffic_routing_name(r)
        tr = trs.get(tr_name) if tr_name else None
        tag = rollout_tag(r, tr)
        canaries = sorted((x for x in deploys.values()
                           if (_meta(x).get("labels") or {}).get(CANARY_DEPLOYMENT_LABEL) == w and w),
                          key=lambda x: _meta(x).get("creationTimestamp") or "")
        canary = canaries[-1] if canaries else None
        cs = canary_status(r)
        chash = cs.get("podTemplateHash") or None
        ready = int(cs.get("canaryReadyReplicas") or 0)
        reason = progress_reason(r)
        view = RolloutView(name, w or "", tag, tr_name, _meta(canary).get("name") if canary else None, chash,
                           False, "", "")
        views.append(view)
        if base is None:
            view.reason, view.message = "NoWorkload", f"Deployment {w!r} not found"
            continue
        if tr_name and tr is None:
            view.reason, view.message = "NoTrafficRouting", f"TrafficRouting {tr_name!r} not found"
        if tag is None:
            view.reason = view.reason or "NoTag"
            view.message = view.message or ("no lane tag: neither the TrafficRouting's requestHeaderModifier.set "
                                            "nor patchPodTemplateMetadata labels name one")
            continue
        pod_labels = (((base.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        svcs = d.workload_services(user_svcs, pod_labels)

        finalizer_ok = tr is None or (PROGRESSING_FINALIZER + name) in (_meta(tr).get("finalizers") or [])
        steps = canary_strategy(r).get("steps") or []
        # approved on the last step: Kruise finalises next (v0.5.0 resumes the base right away), leave now
        approved_last = (cs.get("currentStepState") in ("StepReady", "Completed")
                         and int(cs.get("currentStepIndex") or 0) >= len(steps) > 0)
        leaving = reason in LEAVING_REASONS or approved_last
        if approved_last and reason not in LEAVING_REASONS:
            reason = "Approved"
        if canary is not None and chash:
            for svc in svcs:
                body = lane_service(svc, name, tag, chash)
                wanted[body["metadata"]["name"]] = body
        if canary is None or not chash:
            view.reason, view.message = "NoCanary", "no canary Deployment"
        elif leaving:
            view.reason, view.message = reason, f"Rollout is {reason}: the lane left the table"
        elif not finalizer_ok:
            view.reason, view.message = "NotInTrafficRouting", (
                f"no finalizer {PROGRESSING_FINALIZER}{name} on TrafficRouting {tr_name}")
        elif ready < 1:
            view.reason, view.message = "CanaryNotReady", "waiting for a ready canary pod"
        else:
            view.member, view.reason = True, "Member"
            view.message = f"lane {tag}: " + ", ".join(f"{_meta(s)['name']} -> {d.lane_name(_meta(s)['name'], tag)}"
                                                       for s in svcs)
            routes = lanes.setdefault(tag, {})
            for svc in svcs:
                routes[_meta(svc)["name"]] = d.lane_name(_meta(svc)["name"], tag)

        # base Services: pinned to the stable pods while a canary pod exists (not when Kruise pins itself)
        if canary_strategy(r).get("trafficRoutings"):
            continue
        left = canary_pods_left(base, replicasets, pods)
        stable = stable_hash(w or "", replicasets)
        # paused by Kruise's webhook on a new template: the canary is coming, pin before its first pod
        coming = bool((base.get("spec") or {}).get("paused")) and bool(
            (_meta(base).get("labels") or {}).get(STABLE_REVISION_LABEL))
        busy = canary is not None or left > 0 or coming
        # promotion (approved; not a rollback): let go of the pin in the pass that drops the lane, before Kruise
        # resumes the base. Following the newest ready base ReplicaSet, and even unpinning once the base was
        # resumed, lost the race on a loaded machine (the deployment controller emptied the old ReplicaSet
        # before our pass: 0 endpoints); unpinned, the Service keeps the old and new base pods and, until Kruise
        # deletes it, the canary, which runs the version being promoted
        if reason in ("Finalising", "Completed", "Approved"):
            busy = False
        for svc in svcs:
            sname = _meta(svc)["name"]
            pinned_by = (_meta(svc).get("annotations") or {}).get(n.PINNED_BY_ANN)
            if pinned_by and not pinned_by.startswith(PIN_PREFIX):
                continue          # a GrayRelease's pin: not ours
            if busy and stable:
                patch = d.pin_patch(svc, stable, PIN_PREFIX + name)
                pinned_by_us.add(sname)
                if patch:
                    pins[sname] = patch
            elif pinned_by and busy:
                pinned_by_us.add(sname)     # keep the pin until a stable ReplicaSet has a ready pod again

    # unpin base Services we pinned that no Rollout wants pinned any more
    for svc in user_svcs:
        sname = _meta(svc)["name"]
        pinned_by = (_meta(svc).get("annotations") or {}).get(n.PINNED_BY_ANN) or ""
        if pinned_by.startswith(PIN_PREFIX) and sname not in pinned_by_us:
            patch = d.unpin_patch(svc)
            if patch:
                pins[sname] = patch

    services_out = [b for name_, b in sorted(wanted.items())
                    if name_ not in ours or d.service_differs(ours[name_], b)]
    delete = sorted(set(ours) - set(wanted))
    return Plan(lanes, services_out, delete, pins, views, managed)


def manager_down(status: int, message: str) -> str | None:
    """Why Kruise Rollout's manager looks down, from the API server's answer to a read of Rollouts in a version
    other than the stored one (that read goes through Kruise's conversion webhook, served by its manager);
    None when the answer does not say so (any other error is not about the manager)."""
    text = " ".join(str(message or "").split())
    if int(status or 0) < 500 or "conversion webhook" not in text:
        return None
    for needle, says in (("connection refused", "its webhook refuses connections"),
                         ("no endpoints available", "its webhook Service has no endpoints"),
                         ("timeout", "its webhook timed out"), ("deadline exceeded", "its webhook timed out")):
        if needle in text.lower():
            return says
    return "its conversion webhook fails: " + text[:200]


def summary(p: Plan) -> str:
    """One line for the log: each Rollout's reason (and tag when it is a member), the lane table's Kruise lanes."""
    parts = [f"{v.rollout} {v.reason}" + (f" {v.tag}" if v.member else "") for v in p.views]
    return ", ".join(parts) or "no Rollouts"


def merge_lanes(table: Mapping[str, Any], lanes: Mapping[str, Mapping[str, str]]) -> Obj:
    """The lane table with Kruise lanes added: a tag a Lane object already has gets the routes merged in
    (the Lane's fallback and entry stay); a new tag gets `fallback: base`."""
    out = dict(table)
    merged = {k: dict(v) for k, v in (table.get("lanes") or {}).items()}
    for tag, routes in sorted(lanes.items()):
        entry = merged.setdefault(tag, {"fallback": "base", "routes": {}})
        entry["routes"] = {**dict(entry.get("routes") or {}), **dict(routes)}
    out["lanes"] = merged
    return out


def release_conflict(release: Mapping[str, Any], managed: Mapping[str, str]) -> str | None:
    """A message when a GrayRelease targets a Deployment a Kruise Rollout manages (None: no conflict)."""
    spec = release.get("spec") or {}
    ref = spec.get("workloadRef") or (spec.get("objectRef") or {}).get("workloadRef") or {}
    name = ref.get("name") if isinstance(ref, Mapping) else None
    if name and name in managed:
        return (f"Deployment {name!r} is managed by Kruise Rollout {managed[name]!r}: graybaggage follows that "
                f"Rollout (Kruise mode) and does not release it a second time; delete this GrayRelease")
    return None
