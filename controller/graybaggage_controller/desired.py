"""Desired state as pure functions: observed objects (plain dicts) in, desired objects / patches out.

Nothing here does I/O, reads the environment or keeps state; the Kubernetes layer (`reconcile.py`) calls
these and applies only the differences.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any, Iterable, Mapping, Sequence

from . import names as n

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------- hashing

def _strip_template(template: Mapping[str, Any] | None) -> Obj:
    t = copy.deepcopy(dict(template or {}))
    meta = t.get("metadata") or {}
    meta.pop("creationTimestamp", None)
    labels = dict(meta.get("labels") or {})
    labels.pop(n.POD_TEMPLATE_HASH, None)
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    if meta:
        t["metadata"] = meta
    else:
        t.pop("metadata", None)
    return t


def template_hash(template: Mapping[str, Any] | None) -> str:
    """A short stable hash of a pod template (ignoring pod-template-hash and creationTimestamp)."""
    text = json.dumps(_strip_template(template), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def replicaset_template(rs: Mapping[str, Any]) -> Obj:
    """The Deployment pod template a ReplicaSet was made from (its template minus pod-template-hash)."""
    return _strip_template((rs.get("spec") or {}).get("template"))


def object_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- helpers

def meta(obj: Mapping[str, Any] | None) -> Obj:
    return (obj or {}).get("metadata") or {}


def labels_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(meta(obj).get("labels") or {})


def annotations_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(meta(obj).get("annotations") or {})


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": owner.get("apiVersion", n.API_VERSION),
        "kind": owner.get("kind", "GrayRelease"),
        "name": meta(owner)["name"],
        "uid": meta(owner)["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Mapping[str, Any] | None, owner: Mapping[str, Any]) -> bool:
    uid = meta(owner).get("uid")
    return any(ref.get("uid") == uid for ref in meta(obj).get("ownerReferences") or [])


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Does a Service-style (equality) selector select pods with these labels? Empty selects nothing."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def original_selector(svc: Mapping[str, Any]) -> dict[str, str]:
    """A Service's selector as the user wrote it (undoing our pin)."""
    ann = annotations_of(svc).get(n.ORIGINAL_SELECTOR_ANN)
    if ann:
        try:
            value = json.loads(ann)
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
        except ValueError:
            pass
    return dict((svc.get("spec") or {}).get("selector") or {})


def default_pod_labels(tag: str) -> dict[str, str]:
    return {n.LANE_LABEL: tag, "alicloud.service.tag": tag, f"opensergo.io/canary-{tag}": tag}


def lane_pod_labels(lane: Mapping[str, Any] | None, tag: str) -> dict[str, str]:
    """The labels a lane's pods carry: the Lane's podLabels (default: the three well-known ones),
    always including graybaggage.io/lane."""
    spec = (lane or {}).get("spec") or {}
    labels = dict(spec.get("podLabels") or default_pod_labels(tag))
    labels[n.LANE_LABEL] = tag
    return labels


def lane_name(base_name: str, tag: str) -> str:
    return f"{base_name}-{tag}"


# ---------------------------------------------------------------------------------------------- objects

def gray_deployment(base: Mapping[str, Any], release: Mapping[str, Any], lane: Mapping[str, Any] | None,
                    tag: str, replicas: int) -> Obj:
    """The gray Deployment `<deploy>-<tag>` built from the base Deployment's (new) template."""
    bspec = base.get("spec") or {}
    selector = copy.deepcopy(bspec.get("selector") or {})
    selector.setdefault("matchLabels", {})
    selector["matchLabels"][n.LANE_LABEL] = tag

    template = copy.deepcopy(bspec.get("template") or {})
    tmeta = template.setdefault("metadata", {})
    tmeta.pop("creationTimestamp", None)
    patch = (release.get("spec") or {}).get("patchPodTemplateMetadata") or {}
    tlabels = dict(tmeta.get("labels") or {})
    tlabels.update(patch.get("labels") or {})
    tlabels.update(lane_pod_labels(lane, tag))
    tmeta["labels"] = tlabels
    if patch.get("annotations"):
        tannotations = dict(tmeta.get("annotations") or {})
        tannotations.update(patch["annotations"])
        tmeta["annotations"] = tannotations
    pod = template.setdefault("spec", {})
    for container in pod.get("containers") or []:
        env = [e for e in container.get("env") or [] if e.get("name") != n.LANE_ENV]
        env.append({"name": n.LANE_ENV, "value": tag})
        container["env"] = env

    spec: Obj = {"replicas": int(replicas), "selector": selector, "template": template}
    for key in ("strategy", "minReadySeconds", "progressDeadlineSeconds", "revisionHistoryLimit"):
        if key in bspec:
            spec[key] = copy.deepcopy(bspec[key])
    name = lane_name(meta(base)["name"], tag)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": meta(base).get("namespace"),
            "labels": {
                n.OWNER_LABEL: meta(release)["name"],
                n.LANE_LABEL: tag,
                n.MANAGED_BY_LABEL: n.MANAGED_BY,
            },
            "annotations": {n.SPEC_HASH_ANN: object_hash(spec)},
            "ownerReferences": [owner_reference(release)],
        },
        "spec": spec,
    }


def workload_services(services: Iterable[Mapping[str, Any]], pod_labels: Mapping[str, str]) -> list[Obj]:
    """Services (not ours) whose original selector selects the workload's pods, sorted by name."""
    out = []
    for svc in services:
        if labels_of(svc).get(n.OWNER_LABEL):
            continue
        if (svc.get("spec") or {}).get("type") == "ExternalName":
            continue
        if selects(original_selector(svc), pod_labels):
            out.append(dict(svc))
    return sorted(out, key=lambda s: meta(s)["name"])


def lane_service(svc: Mapping[str, Any], release: Mapping[str, Any], tag: str) -> Obj:
    """`<svc>-<tag>`: same ports, the original selector plus the lane label."""
    ports = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        ports.append({k: p[k] for k in ("name", "port", "targetPort", "protocol", "appProtocol") if k in p})
    selector = original_selector(svc)
    selector[n.LANE_LABEL] = tag
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": lane_name(meta(svc)["name"], tag),
            "namespace": meta(svc).get("namespace"),
            "labels": {
                n.OWNER_LABEL: meta(release)["name"],
                n.LANE_LABEL: tag,
                n.MANAGED_BY_LABEL: n.MANAGED_BY,
            },
            "ownerReferences": [owner_reference(release)],
        },
        "spec": {"type": "ClusterIP", "ports": ports, "selector": selector},
    }


def service_differs(observed: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    ospec = observed.get("spec") or {}
    dspec = desired["spec"]
    oports = [{k: p[k] for k in ("name", "port", "targetPort", "protocol", "appProtocol") if k in p}
              for p in ospec.get("ports") or []]
    return (ospec.get("selector") or {}) != dspec["selector"] or oports != dspec["ports"] or any(
        labels_of(observed).get(k) != v for k, v in desired["metadata"]["labels"].items())


def pin_patch(svc: Mapping[str, Any], stable_hash: str, release_name: str) -> Obj | None:
    """A merge patch pinning a base Service to the stable pods (None when already pinned)."""
    orig = original_selector(svc)
    current = dict((svc.get("spec") or {}).get("selector") or {})
    want = dict(orig, **{n.POD_TEMPLATE_HASH: stable_hash})
    ann = annotations_of(svc)
    if current == want and ann.get(n.PINNED_BY_ANN) == release_name and n.ORIGINAL_SELECTOR_ANN in ann:
        return None
    return {
        "metadata": {"annotations": {
            n.ORIGINAL_SELECTOR_ANN: json.dumps(orig, sort_keys=True),
            n.PINNED_BY_ANN: release_name,
        }},
        "spec": {"selector": {**{k: None for k in current if k not in want}, **want}},
    }


def unpin_patch(svc: Mapping[str, Any]) -> Obj | None:
    """A merge patch restoring a pinned Service's original selector (None when not pinned)."""
    ann = annotations_of(svc)
    if n.PINNED_BY_ANN not in ann and n.ORIGINAL_SELECTOR_ANN not in ann:
        return None
    orig = original_selector(svc)
    current = dict((svc.get("spec") or {}).get("selector") or {})
    return {
        "metadata": {"annotations": {n.ORIGINAL_SELECTOR_ANN: None, n.PINNED_BY_ANN: None}},
        "spec": {"selector": {**{k: None for k in current if k not in orig}, **orig}},
    }


# ---------------------------------------------------------------------------------------------- celery queues

#: a queue name the controller publishes: letters, digits, `_ . : -`, not starting with `.`, `:` or `-`
QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
#: the longest lane queue `<queue>-<tag>` (AMQP's limit for a queue name; the library's for a table entry)
QUEUE_MAX = 255


def queue_name_ok(name: Any, tag: str) -> bool:
    return isinstance(name, str) and bool(QUEUE_NAME.fullmatch(name)) and len(name) + 1 + len(tag) <= QUEUE_MAX


def celery_queues(workload: Mapping[str, Any] | None, tag: str) -> tuple[list[str] | None, str | None]:
    """The Celery queues a Deployment's workers consume, from its `graybaggage.io/celery-queues` annotation.

    Returns (queues, error): (None, None) without the annotation (opt-in: nothing is published); the sorted,
    de-duplicated names when every one is valid; (None, message) when any is not: then none is published,
    so a typo never sends tasks to a queue no worker consumes."""
    raw = annotations_of(workload).get(n.CELERY_QUEUES_ANN)
    if raw is None:
        return None, None
    where = f"annotation {n.CELERY_QUEUES_ANN}={raw!r}"
    if not isinstance(raw, str) or not raw.strip():
        return None, f"{where} lists no queue (expected comma-separated Celery queue names, e.g. \"default,emails\")"
    names = [part.strip() for part in raw.split(",")]
    bad = [name for name in names if not queue_name_ok(name, tag)]
    if bad:
        shown = ", ".join(repr(b) for b in bad)
        return None, (f"{where}: invalid queue name(s) {shown} (a name is letters, digits, '_', '.', ':' or '-', "
                      f"starts with a letter, digit or '_', and <name>-{tag} is at most {QUEUE_MAX} characters); "
                      f"no queue is published")
    return sorted(set(names)), None


# ---------------------------------------------------------------------------------------------- lane table

def build_lane_table(namespace: str, lanes: Iterable[Mapping[str, Any]],
                     releases: Iterable[Mapping[str, Any]],
                     overrides: Mapping[str, Mapping[str, str]] | None = None,
                     queue_overrides: Mapping[str, Sequence[str]] | None = None) -> Obj:
    """The lane table (docs/lane-table.md, version 1) without its revision.

    Lanes come from Lane objects (not being deleted; the oldest wins a duplicated tag); each lane's routes
    come from the GrayReleases in that lane: `status.routes`, or `overrides[<release name>]` for a release
    whose new routes are not in its status yet. Its Celery queues likewise: `status.queues`, or
    `queue_overrides[<release name>]`; a lane gets `queues` only when some release in it has any (opt-in: a
    reader older than the field refuses the table), and a name that is not valid is never published.
    """
    overrides = overrides or {}
    queue_overrides = queue_overrides or {}
    by_tag: dict[str, Obj] = {}
    for lane in sorted(lanes, key=lambda o: (meta(o).get("creationTimestamp") or "", meta(o).get("name"))):
        if meta(lane).get("deletionTimestamp"):
            continue
        spec = lane.get("spec") or {}
        tag = spec.get("tag")
        if not tag or tag in by_tag:
            continue
        entry: Obj = {"fallback": spec.get("fallback") or "base", "routes": {}}
        table_entry = lane_table_entry(spec.get("entry"))
        if table_entry is not None:
            entry["entry"] = table_entry
        by_tag[tag] = entry
    for release in sorted(releases, key=lambda o: meta(o).get("name") or ""):
        name = str(meta(release).get("name") or "")
        tag = (release.get("spec") or {}).get("lane")
        if tag not in by_tag:
            continue
        routes = overrides[name] if name in overrides else ((release.get("status") or {}).get("routes") or {})
        by_tag[tag]["routes"].update({str(k): str(v) for k, v in routes.items()})
        queues = queue_overrides[name] if name in queue_overrides else \
            ((release.get("status") or {}).get("queues") or [])
        if isinstance(queues, (list, tuple)):
            good = {q for q in queues if queue_name_ok(q, tag)}
            if good:
                entry_queues = by_tag[tag].setdefault("queues", {"version": n.QUEUES_VERSION, "celery": []})
                entry_queues["celery"] = sorted(good | set(entry_queues["celery"]))
    return {"version": n.TABLE_VERSION, "namespace": namespace, "lanes": by_tag}


#: Lane.spec.entry keys that configure entry routing (entry/); everything else is dye-rule data
ENTRY_ROUTING_KEYS = ("service", "route", "matches", "weight", "requestHeaderModifier")


def lane_table_entry(entry: Mapping[str, Any] | None) -> Obj | None:
    """`lanes.<tag>.entry` of the lane table for a Lane's `spec.entry` (None: no entry in the table).

    The dye rules (`entry.rules`) are copied as before. The routing keys (service, route, matches, weight,
    requestHeaderModifier) are the controller's and stay out of the table, except that an ingress-nginx
    entry (which cannot set the lane header) also publishes its matches as dye rules, so a Python edge
    (GRAYBAGGAGE_EDGE=1) behind nginx dyes exactly the traffic nginx routes to it."""
    if entry is None:
        return None
    from .entry.model import dye_rules, route_of
    out = {k: copy.deepcopy(v) for k, v in entry.items() if k not in ENTRY_ROUTING_KEYS}
    kind, _name, class_type = route_of(entry)
    if kind == "ingress" and class_type == "nginx":
        rules = dye_rules(entry)
        if rules:
            out["rules"] = list(out.get("rules") or []) + rules
    if not out and any(k in entry for k in ENTRY_ROUTING_KEYS):
        return None
    return out


def lane_status_entry(lane: Mapping[str, Any], conditions: list[Obj] | None, detail: Mapping[str, Any] | None,
                      old: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The entry part of a Lane's status: `conditions` (lastTransitionTime kept while status/reason
    hold) and `entry` (what was programmed). Empty when the Lane has no entry route."""
    if not conditions:
        return {}
    before = {c.get("type"): c for c in (old or {}).get("conditions") or []}
    out = []
    for c in conditions:
        prev = before.get(c["type"])
        same = prev and prev.get("status") == c["status"] and prev.get("reason") == c["reason"]
        out.append({**c, "lastTransitionTime": prev.get("lastTransitionTime") if prev and same else now})
    result: dict[str, Any] = {"conditions": out}
    if detail:
        result["entry"] = dict(detail)
    return result


def render_lane_table(table: Mapping[str, Any], revision: int) -> str:
    body = {"version": table["version"], "namespace": table["namespace"], "revision": str(revision),
            "lanes": table["lanes"]}
    return json.dumps(body, sort_keys=True, separators=(", ", ": "))


def parse_lane_table(text: str | None) -> Obj | None:
    """The lane table JSON (or any JSON object text, e.g. an annotation) as a dict; None if absent/invalid."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def same_table(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    if not current:
        return False
    return (current.get("version") == desired["version"] and current.get("namespace") == desired["namespace"]
            and current.get("lanes") == desired["lanes"])


def lane_table_configmap(namespace: str, text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": n.TABLE_CONFIGMAP, "namespace": namespace,
                     "labels": {n.MANAGED_BY_LABEL: n.MANAGED_BY}},
        "data": {n.TABLE_KEY: text},
    }


def lane_status(lane: Mapping[str, Any], releases: Iterable[Mapping[str, Any]]) -> Obj:
    tag = (lane.get("spec") or {}).get("tag")
    members = []
    for r in sorted(releases, key=lambda o: meta(o).get("name") or ""):
        if (r.get("spec") or {}).get("lane") != tag:
            continue
        st = r.get("status") or {}
        member = {
            "release": meta(r)["name"],
            "workload": ((r.get("spec") or {}).get("workloadRef") or {}).get("name"),
            "phase": st.get("phase") or "",
            "routes": dict(st.get("routes") or {}),
        }
        if isinstance(st.get("queues"), list) and st["queues"]:
            member["queues"] = [str(q) for q in st["queues"]]      # Celery queues it has published
        members.append(member)
    return {
        "observedGeneration": meta(lane).get("generation"),
        "memberCount": len(members),
        "routedCount": sum(1 for m in members if m["routes"]),
        "members": members,
    }


# ---------------------------------------------------------------------------------------------- webhook

def merged_for_update(kind: str, current: Mapping[str, Any], want: Mapping[str, Any]) -> Obj:
    """The body that replaces `current` (as read from the API server) with what `want` asks, keeping what others
    own: the status goes (a replace does not write it); labels and annotations are merged, ours winning; the
    ownerReferences are ours (when we have any); a Service takes only our ports and selector, keeping what the
    API server or the user set (clusterIP, ipFamilies, sessionAffinity, ...); any other kind takes our whole
    spec. The resourceVersion stays the one read, so a change in between makes the replace conflict."""
    body = copy.deepcopy(dict(current))
    body.pop("status", None)
    m = body.setdefault("metadata", {})
    wm = want.get("metadata") or {}
    m["labels"] = {**(m.get("labels") or {}), **(wm.get("labels") or {})}
    m["annotations"] = {**(m.get("annotations") or {}), **(wm.get("annotations") or {})}
    if wm.get("ownerReferences"):
        m["ownerReferences"] = copy.deepcopy(wm["ownerReferences"])
    wspec = copy.deepcopy(want.get("spec") or {})
    if kind == "Service":
        spec = body.setdefault("spec", {})
        spec["ports"], spec["selector"] = wspec.get("ports"), wspec.get("selector")
    else:
        body["spec"] = wspec
    return body


def webhook_patch(deployment: Mapping[str, Any]) -> Obj | None:
    """The mutation for an UPDATE of a targeted Deployment: pause it when its template is not the stable one.

    Stateless on purpose: everything needed is on the object (the stable hash annotation written by the
    controller), so any replica of the webhook, or a restarted one, answers the same.
    """
    if not labels_of(deployment).get(n.RELEASE_LABEL):
        return None
    stable = annotations_of(deployment).get(n.STABLE_ANN)
    spec = deployment.get("spec") or {}
    if not stable or spec.get("paused"):
        return None
    if template_hash(spec.get("template")) == stable:
        return None
    return {"spec": {"paused": True}, "metadata": {"annotations": {n.PAUSED_BY_ANN: "webhook"}}}


def webhook_configuration(name: str, client_config: Mapping[str, Any], namespaces: Iterable[str] | None,
                          handler_id: str = n.WEBHOOK_HANDLER_ID, timeout: int = 5,
                          service: Mapping[str, Any] | None = None) -> Obj:
    """MutatingWebhookConfiguration: Deployments UPDATE, labelled graybaggage.io/gray-release only,
    failurePolicy Ignore (the controller repairs what slips through).

    `client_config` is what kopf's server reports (url + caBundle); with `service` ({namespace, name,
    port}) the API server reaches the webhook through that Service instead of the URL (in-cluster)."""
    cc = copy.deepcopy(dict(client_config))
    if service:
        cc.pop("url", None)
        cc["service"] = {"namespace": service["namespace"], "name": service["name"],
                         "port": int(service.get("port", 443)), "path": "/" + handler_id}
    elif cc.get("url"):
        cc["url"] = cc["url"].rstrip("/") + "/" + handler_id
    webhook: Obj = {
        "name": "pause-base.graybaggage.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": timeout,
        "reinvocationPolicy": "IfNeeded",
        "clientConfig": cc,
        "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments"],
                   "operations": ["UPDATE"], "scope": "Namespaced"}],
        "objectSelector": {"matchExpressions": [{"key": n.RELEASE_LABEL, "operator": "Exists"}]},
    }
    ns = sorted(set(namespaces or []))
    if ns:
        webhook["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ns}]}
    else:
        webhook["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {n.MANAGED_BY_LABEL: n.MANAGED_BY}},
        "webhooks": [webhook],
    }
