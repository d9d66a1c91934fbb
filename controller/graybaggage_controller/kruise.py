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

Entry (`entry_plan()`): graybaggage takes over Kruise's own canary Ingress `<ingress>-canary` rather than adding a
second one. Kruise makes it (a copy of the stable Ingress, backend the STABLE Service in the TrafficRouting mode,
`<svc>-canary` with a Rollout's own `trafficRoutings`) and keeps only its canary annotations on it; graybaggage adds
what MSE's agent did:

- Higress (from its source: a header-matched canary route drops the stable route's header control and applies
  the canary Ingress's own, so the stable's strip never removes the tag the canary sets): while the lane has a
  member anywhere (a tag in the lane table), `higress.io/request-header-control-update:
  <header> <tag>` on the canary Ingress (the requests Kruise's match sends to the canary get the lane header, so
  every later hop follows the lane), and `higress.io/request-header-control-remove: <header>,baggage` on the
  stable Ingress (a forged tag from outside is stripped, as for a Lane's Higress entry); while the entry Service
  itself has a member, the canary Ingress's backend `<svc>-<tag>` (graybaggage's lane Service) instead of the
  stable Service, which graybaggage pins to the stable pods;
- ingress-nginx: the backend only. ingress-nginx has no annotation that sets a request header (only
  `configuration-snippet`, often disabled and never written by graybaggage), so the header is not set: xiaoming
  reaches `<svc>-<tag>` but later hops see no tag and go to base. The entry view says so (HeaderNotSet); a Lane
  with a Gateway API entry sets the header;
- any other class (mse, aliyun-alb): nothing (MSE's agent does the routing itself).

Why not the Lua override (ConfigMap `kruise-rollout-configuration`, key `lua.traffic.routing.ingress.higress`):
it is one script per class for the whole cluster, lives in Kruise's namespace (graybaggage would write a Kruise
object), cannot know the lane Service or whether the lane has a ready member (its input is the Rollout step), and a
Kruise upgrade that changes its built-in script would be masked. Kruise merge-patches only the annotations its
script returns and never rewrites the canary Ingress's spec, so both edits sit beside Kruise's without a fight.
Every change is recorded in `graybaggage.io/kruise-entry` on the Ingress it changed (JSON: each annotation's
previous value, each backend's previous Service), and the desired object is always built from the undone one:
a restarted controller converges to the same object, the undo is exact, and a copy of the stable Ingress's record
that Kruise copies onto a new canary Ingress is undone there. The undo comes in the pass that drops the lane from
the table (before it: the writes come first), and on approval, rollback or Rollout deletion (Terminating) the
Ingresses go back before the lane Service can go.

Nothing here writes Kruise's objects' spec or status: never the Deployment's pause, never the canary's template
(Kruise finds its canary by template equality); the canary Ingress is the one Kruise object graybaggage edits, and
only as above.
"""

from __future__ import annotations

import copy
import dataclasses
import json
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
LEAVING_REASONS = ("Finalising", "Cancelling", "Completed", "Terminating")
#: reasons that promote the canary's version (Kruise resumes the base on the new template): unpin then
PROMOTING_REASONS = ("Finalising", "Completed", "Approved", "Terminating")
#: on an Ingress graybaggage changed in Kruise mode: JSON {"annotations": {key: previous value or null},
#: "backends": {lane Service: previous Service}}
ENTRY_ANN = "graybaggage.io/kruise-entry"
HIGRESS_UPDATE = "higress.io/request-header-control-update"
HIGRESS_REMOVE = "higress.io/request-header-control-remove"
CANARY_INGRESS_SUFFIX = "-canary"
#: the lane header when the TrafficRouting names none (graybaggage.config.DEFAULT_HEADER)
DEFAULT_HEADER = "x-mse-tag"
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
    ingresses: dict[str, Obj] = dataclasses.field(default_factory=dict)   # Ingress name -> object to write
    entries: list["EntryView"] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class EntryView:
    """What graybaggage does with one Ingress a Kruise TrafficRouting (or a Rollout's trafficRoutings) names."""
    ingress: str                # the stable Ingress
    canary: str                 # Kruise's canary Ingress
    class_type: str
    service: str
    tag: str | None
    state: str                  # one word: Routed / Dyeing / Idle / HeaderNotSet / NoCanary / NotKruise / Unsupported
    message: str


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
    Completed), `Terminating` for a Rollout being deleted (Kruise then finalises and resumes the base), or ''."""
    if _meta(rollout).get("deletionTimestamp") or (rollout.get("status") or {}).get("phase") == "Terminating":
        return "Terminating"
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
         pods: Iterable[Mapping[str, Any]], services: Iterable[Mapping[str, Any]],
         ingresses: Iterable[Mapping[str, Any]] = ()) -> Plan:
    rollouts = sorted(rollouts, key=lambda o: _meta(o).get("name") or "")
    traffic_routings = list(traffic_routings)
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
        if reason in PROMOTING_REASONS:
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
    writes, entries = entry_plan(rollouts, traffic_routings, ingresses, lanes)
    return Plan(lanes, services_out, delete, pins, views, managed, writes, entries)


# ---------------------------------------------------------------------------------------------- entry

def _entry_record(ing: Mapping[str, Any]) -> Obj | None:
    """The record on an Ingress ({} without one); None when it cannot be read (someone edited it)."""
    raw = (_meta(ing).get("annotations") or {}).get(ENTRY_ANN)
    if raw is None:
        return {"annotations": {}, "backends": {}}
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("annotations", {}), dict) \
            or not isinstance(rec.get("backends", {}), dict):
        return None
    return {"annotations": rec.get("annotations") or {}, "backends": rec.get("backends") or {}}


def _paths(ing: Obj) -> list[Obj]:
    return [p for rule in (ing.get("spec") or {}).get("rules") or [] for p in ((rule.get("http") or {}).get("paths")
                                                                               or [])]


def undo_entry(ing: Mapping[str, Any]) -> Obj:
    """The Ingress as it was before graybaggage changed it: every recorded annotation back to its previous value
    (removed when it had none), every recorded backend back to its previous Service, the record removed."""
    out = copy.deepcopy(dict(ing))
    ann = dict(_meta(out).get("annotations") or {})
    if ENTRY_ANN not in ann:
        return out
    rec = _entry_record(ing) or {"annotations": {}, "backends": {}}
    for key, old in rec["annotations"].items():
        if old is None:
            ann.pop(key, None)
        else:
            ann[key] = str(old)
    ann.pop(ENTRY_ANN, None)
    out["metadata"] = dict(out.get("metadata") or {}, annotations=ann)
    for p in _paths(out):
        svc = (p.get("backend") or {}).get("service") or {}
        if svc.get("name") in rec["backends"]:
            svc["name"] = str(rec["backends"][svc["name"]])
    return out


def apply_entry(base: Mapping[str, Any], annotations: Mapping[str, str], backends: Mapping[str, str]) -> Obj:
    """`base` (an undone Ingress) with `annotations` set and each path backend named a key of `backends` switched
    to its value, every change recorded in ENTRY_ANN (no record when nothing changed)."""
    out = copy.deepcopy(dict(base))
    ann = dict(_meta(out).get("annotations") or {})
    rec: Obj = {"annotations": {}, "backends": {}}
    for key, value in sorted(annotations.items()):
        if ann.get(key) != value:
            rec["annotations"][key] = ann.get(key)
            ann[key] = value
    for p in _paths(out):
        svc = (p.get("backend") or {}).get("service") or {}
        new = backends.get(svc.get("name") or "")
        if new and new != svc.get("name"):
            rec["backends"][new] = svc["name"]
            svc["name"] = new
    if rec["annotations"] or rec["backends"]:
        ann[ENTRY_ANN] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    out["metadata"] = dict(out.get("metadata") or {}, annotations=ann)
    return out


def header_update(current: str | None, header: str, tag: str) -> str:
    """Higress's `request-header-control-update` (one `Name Value` per line) with `header tag` set, other lines kept."""
    lines = [ln for ln in str(current or "").splitlines()
             if ln.strip() and ln.split()[0].lower() != header.lower()]
    return "\n".join(lines + [f"{header} {tag}"])


def header_remove(current: str | None, headers: Iterable[str]) -> str:
    """Higress's `request-header-control-remove` (comma list) with `headers` added when missing."""
    items = [h.strip() for h in str(current or "").split(",") if h.strip()]
    have = {h.lower() for h in items}
    return ",".join(items + [h for h in headers if h.lower() not in have])


def _kruise_owned(ing: Mapping[str, Any]) -> bool:
    return any(str(ref.get("apiVersion") or "").startswith(GROUP + "/")
               for ref in _meta(ing).get("ownerReferences") or [])


@dataclasses.dataclass
class _EntryRef:
    ingress: str
    service: str
    class_type: str
    tag: str
    header: str
    rollouts: list[str]


def entry_refs(rollouts: Iterable[Mapping[str, Any]], traffic_routings: Iterable[Mapping[str, Any]]) -> list[_EntryRef]:
    """Every Ingress a live Rollout routes through (its TrafficRouting's objectRef, or its own trafficRoutings),
    with the lane tag and header; the first Rollout (by name) wins when two name different tags for one Ingress."""
    trs = {_meta(t).get("name"): t for t in traffic_routings}
    out: dict[str, _EntryRef] = {}
    for r in sorted(rollouts, key=lambda o: _meta(o).get("name") or ""):
        if _meta(r).get("deletionTimestamp"):
            continue
        tr_name = traffic_routing_name(r)
        tr = trs.get(tr_name) if tr_name else None
        tag = rollout_tag(r, tr)
        if tag is None:
            continue
        header = header_tag(tr)[0] or DEFAULT_HEADER
        refs = list(((tr or {}).get("spec") or {}).get("objectRef") or []) if tr else []
        refs += list(canary_strategy(r).get("trafficRoutings") or [])
        for ref in refs:
            if not isinstance(ref, Mapping):
                continue
            ingress = ref.get("ingress") or {}
            if not isinstance(ingress, Mapping) or not ingress.get("name") or not ref.get("service"):
                continue
            e = out.setdefault(str(ingress["name"]), _EntryRef(str(ingress["name"]), str(ref["service"]),
                                                               str(ingress.get("classType") or "nginx"), tag,
                                                               header, []))
            if e.tag == tag:
                e.rollouts.append(_meta(r).get("name") or "")
    return [out[k] for k in sorted(out)]


def entry_plan(rollouts: Iterable[Mapping[str, Any]], traffic_routings: Iterable[Mapping[str, Any]],
               ingresses: Iterable[Mapping[str, Any]], lanes: Mapping[str, Mapping[str, str]]
               ) -> tuple[dict[str, Obj], list[EntryView]]:
    """(Ingress name -> the whole object to write, one view per entry Ingress): see the module docstring."""
    by_name = {_meta(i).get("name"): i for i in ingresses}
    want: dict[str, Obj] = {}
    views: list[EntryView] = []
    for e in entry_refs(rollouts, traffic_routings):
        cname = e.ingress + CANARY_INGRESS_SUFFIX
        stable, canary = by_name.get(e.ingress), by_name.get(cname)
        routes = dict(lanes.get(e.tag) or {})
        lane_svc = d.lane_name(e.service, e.tag)
        member = routes.get(e.service) == lane_svc
        view = EntryView(e.ingress, cname, e.class_type, e.service, e.tag, "Idle", f"lane {e.tag} has no member")
        views.append(view)
        higress = e.class_type == "higress"
        if stable is not None:
            dye = bool(routes) and higress and not (_meta(stable).get("annotations") or {}).get(n.ENTRY_ROUTING_ANN)
            strip = {HIGRESS_REMOVE: header_remove((_meta(undo_entry(stable)).get("annotations") or {}).get(
                HIGRESS_REMOVE), (e.header, "baggage"))} if dye else {}
            want[e.ingress] = apply_entry(undo_entry(stable), strip, {})
        if e.class_type not in ("higress", "nginx"):
            view.state, view.message = "Unsupported", (f"classType {e.class_type}: graybaggage leaves its canary "
                                                       "Ingress to Kruise")
            continue
        if canary is None:
            if routes:
                view.state, view.message = "NoCanary", f"Kruise's canary Ingress {cname} does not exist (yet)"
            continue
        if not _kruise_owned(canary):
            view.state, view.message = "NotKruise", f"Ingress {cname} is not owned by Kruise: not taken over"
            continue
        base = undo_entry(canary)
        if not routes:
            want[cname] = base
            continue
        annotations = {HIGRESS_UPDATE: header_update((_meta(base).get("annotations") or {}).get(HIGRESS_UPDATE),
                                                     e.header, e.tag)} if higress else {}
        backends = {e.service: lane_svc, e.service + "-canary": lane_svc} if member else {}
        want[cname] = apply_entry(base, annotations, backends)
        target = lane_svc if member else e.service
        if higress:
            view.state = "Routed" if member else "Dyeing"
            view.message = f"{cname}: header {e.header}: {e.tag}, backend {target}; {e.ingress} strips {e.header}"
        else:
            view.state = "HeaderNotSet"
            view.message = (f"{cname}: backend {target}; ingress-nginx has no annotation that sets a request header, "
                            f"so {e.header}: {e.tag} is not set and later hops route to base (use a Lane with a "
                            "Gateway API entry to set it)")
    # an Ingress graybaggage changed that no Rollout routes through any more: undone
    for name, ing in by_name.items():
        if name not in want and ENTRY_ANN in (_meta(ing).get("annotations") or {}):
            want[str(name)] = undo_entry(ing)
    # a record nobody can read: what was there before is unknown, so the Ingress is left as it is (the view says so)
    for name in [name for name in want if _entry_record(by_name.get(name) or {}) is None]:
        del want[name]
        views.append(EntryView(str(name), str(name), "", "", None, "BadRecord",
                               f"Ingress {name}: {ENTRY_ANN} is not graybaggage's JSON record; left as it is "
                               "(remove graybaggage's changes by hand, then the annotation)"))
    writes = {name: body for name, body in sorted(want.items()) if entry_differs(by_name.get(name) or {}, body)}
    return writes, views


def entry_differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return ((_meta(current).get("annotations") or {}) != (_meta(wanted).get("annotations") or {})
            or (current.get("spec") or {}) != (wanted.get("spec") or {}))


def entry_summary(views: Iterable[EntryView]) -> str:
    return ", ".join(f"{v.canary} {v.state}" for v in views) or "no entry Ingress"


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
