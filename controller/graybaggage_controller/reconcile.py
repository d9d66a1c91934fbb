"""The I/O half of reconciliation: observe -> `plan.plan_release` (pure) -> apply the plan's actions
in order -> write status last.

All work for one namespace is serialised by a lock, so the lane table (one per namespace, merged from all
GrayReleases and Lanes) is always built from a consistent view. The table write also uses resourceVersion
with conflict retries, so a second controller cannot lose an update either.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from typing import Callable

from . import desired as d
from . import entry
from . import names as n
from .kube import JSONPATCH, MERGE, Conflict, Kube, KubeError, NotFound, retry_on_conflict
from .plan import Action, Observed, Plan, Verb, plan_release

log = logging.getLogger(__name__)

EventSink = Callable[[dict, str, str, str], None]   # (object, type, reason, message)


def _status_view(status: dict | None) -> dict:
    s = copy.deepcopy(status or {})
    s.pop("kopf", None)
    for c in s.get("conditions") or []:
        c.pop("lastTransitionTime", None)
    return {k: v for k, v in s.items() if v not in (None, {}, [], "")}


def _has_entry(lane: dict, status: bool = True) -> bool:
    """Does a Lane ask for entry routing (or, with `status`, report some: there may be routes to undo)?"""
    if ((lane.get("spec") or {}).get("entry") or {}).get("route"):
        return True
    return status and any(c.get("type") in (n.ENTRY_ROUTED, n.ENTRY_HEADER)
                          for c in (lane.get("status") or {}).get("conditions") or [])


class Reconciler:
    def __init__(self, kube: Kube, events: EventSink | None = None, clock: Callable[[], float] = time.time):
        self.kube = kube
        self.events = events or (lambda obj, etype, reason, message: None)
        self.clock = clock
        self._locks: dict[str, threading.RLock] = {}
        #: namespaces where some Lane has (or had) an entry route (kept by sync_entries; the release path
        #: skips entry routing elsewhere, so namespaces without entries pay nothing for it)
        self._entry_namespaces: set[str] = set()
        self._guard = threading.Lock()
        #: (namespace, table) -> table: adds lanes from outside Lanes/GrayReleases (Kruise mode, kruise_io.py)
        self.table_hook: Callable[[str, dict], dict] | None = None

    def lock(self, namespace: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(namespace, threading.RLock())

    # ------------------------------------------------------------------------------------ GrayRelease
    def observe(self, gr: dict) -> Observed:
        ns = d.meta(gr)["namespace"]
        spec = gr.get("spec") or {}
        tag = spec.get("lane") or ""
        workload = (spec.get("workloadRef") or {}).get("name") or ""
        deployments = self.kube.list("Deployment", ns)
        by_name = {d.meta(x)["name"]: x for x in deployments}
        base = by_name.get(workload) if workload else None
        gray = by_name.get(d.lane_name(workload, tag)) if workload else None
        replicasets: list[dict] = []
        gray_pods = 0
        other = None
        if base is not None:
            sel = ((base.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            replicasets = self.kube.list("ReplicaSet", ns, ",".join(f"{k}={v}" for k, v in sel.items()) or None)
            gsel = dict(sel, **{n.LANE_LABEL: tag})
            gray_pods = len(self.kube.list("Pod", ns, ",".join(f"{k}={v}" for k, v in gsel.items())))
            holder = d.labels_of(base).get(n.RELEASE_LABEL)
            if holder and holder != d.meta(gr)["name"]:
                other_gr = self.kube.get("GrayRelease", ns, holder)
                if other_gr is not None and not d.meta(other_gr).get("deletionTimestamp") and \
                        ((other_gr.get("spec") or {}).get("workloadRef") or {}).get("name") == workload:
                    other = holder
        elif gray is not None:
            gsel = ((gray.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            gray_pods = len(self.kube.list("Pod", ns, ",".join(f"{k}={v}" for k, v in gsel.items())))
        services = self.kube.list("Service", ns)
        all_lanes = self.kube.list("Lane", ns)
        lanes = [x for x in all_lanes
                 if (x.get("spec") or {}).get("tag") == tag and not d.meta(x).get("deletionTimestamp")]
        lanes.sort(key=lambda o: (d.meta(o).get("creationTimestamp") or "", d.meta(o)["name"]))
        entry_routes: list[dict] = []
        if any(_has_entry(x) for x in all_lanes):
            self._entry_namespaces.add(ns)      # the table action moves the entry routes too, from the first pass
            entry_routes = self._entry_routes(ns, tag, all_lanes)
        return Observed(release=gr, base=base, replicasets=replicasets, gray=gray, gray_pods=gray_pods,
                        services=services, lane=lanes[0] if lanes else None, now=self.clock(),
                        other_targeting=other, deployments=deployments, entry_routes=entry_routes)

    def _entry_routes(self, ns: str, tag: str, lanes: list[dict]) -> list[dict]:
        """The entry route objects that may send the lane's traffic to its lane Services: HTTPRoutes named by
        a Lane entry of this tag or carrying our entry-routing record, and the canary Ingresses we made.
        An API that is not served (404) or not allowed (403) has none."""
        named = {entry.base.route_of((x.get("spec") or {}).get("entry") or {})[1] for x in lanes
                 if (x.get("spec") or {}).get("tag") == tag}
        out = []
        for kind, selector in (("HTTPRoute", None), ("Ingress", n.ENTRY_OF_LABEL)):
            try:
                items = entry.base.list_(self.kube, kind, ns, selector) or []
            except KubeError as e:
                if e.status == 403:
                    continue
                raise
            for r in items:
                if kind == "HTTPRoute" and d.meta(r).get("name") not in named and \
                        n.ENTRY_ROUTING_ANN not in d.annotations_of(r):
                    continue
                r.setdefault("kind", kind)
                out.append(r)
        return out

    def reconcile_release(self, namespace: str, name: str) -> Plan | None:
        """One idempotent pass for a GrayRelease. Returns the plan (None if the object is gone)."""
        with self.lock(namespace):
            gr = self.kube.get("GrayRelease", namespace, name)
            if gr is None:
                self.sync_table(namespace)
                return None
            gr.setdefault("apiVersion", n.API_VERSION)
            gr.setdefault("kind", "GrayRelease")
            deleting = bool(d.meta(gr).get("deletionTimestamp"))
            if not deleting and not self._ensure_finalizer("GrayRelease", gr):
                return None
            plan = plan_release(self.observe(gr))
            self.execute(gr, plan)
            if deleting and plan.done:
                plan.done = self._release_finalizer("GrayRelease", gr)
            return plan

    # our own finalizer (not kopf's): added before we create anything, removed once cleanup is done
    def _ensure_finalizer(self, kind: str, obj: dict) -> bool:
        fins = list(d.meta(obj).get("finalizers") or [])
        if n.FINALIZER in fins:
            return True
        try:
            updated = self.kube.patch(kind, d.meta(obj)["namespace"], d.meta(obj)["name"], {"metadata": {
                "finalizers": fins + [n.FINALIZER], "resourceVersion": d.meta(obj)["resourceVersion"]}})
        except (NotFound, Conflict):
            return False        # changed or gone under us: the next event retries
        obj["metadata"] = updated["metadata"]
        return True

    def _release_finalizer(self, kind: str, obj: dict) -> bool:
        """Remove our finalizer (retrying on conflicts); True once it is gone (or the object is)."""
        ns, name = d.meta(obj)["namespace"], d.meta(obj)["name"]

        def attempt() -> bool:
            current = self.kube.get(kind, ns, name)
            fins = list(d.meta(current).get("finalizers") or []) if current is not None else []
            if current is None or n.FINALIZER not in fins:
                return True
            try:
                self.kube.patch(kind, ns, name, {"metadata": {
                    "finalizers": [f for f in fins if f != n.FINALIZER] or None,
                    "resourceVersion": d.meta(current)["resourceVersion"]}})
            except NotFound:
                pass
            return True
        try:
            return retry_on_conflict(attempt, attempts=10)
        except Conflict:
            return False

    def execute(self, gr: dict, plan: Plan) -> None:
        ns, name = d.meta(gr)["namespace"], d.meta(gr)["name"]
        for act in plan.actions:
            self._apply(ns, name, act, plan)
        for etype, reason, message in plan.events:
            try:
                self.events(gr, etype, reason, message)
            except Exception:  # events are best effort
                log.debug("event not posted", exc_info=True)
        self._write_status("GrayRelease", gr, plan.status)

    def _write_status(self, kind: str, obj: dict, want: dict) -> bool:
        """The one status writer (GrayRelease, Lane): when `want` differs from the object's status (kopf's
        bookkeeping and condition timestamps aside), a merge patch of the status subresource that also nulls
        what `want` dropped: keys, and the entries of map-valued keys (a merge patch merges maps: a GrayRelease's
        `routes`, a Lane's `entry`). An object deleted meanwhile is no error. True when written."""
        old = obj.get("status") or {}
        if _status_view(old) == _status_view(want):
            return False
        body = {**{k: None for k in old if k != "kopf"}, **want}
        for key, was in old.items():
            if key != "kopf" and was and isinstance(was, dict) and isinstance(want.get(key), dict):
                body[key] = {**{k: None for k in was if k not in want[key]}, **want[key]}
        try:
            self.kube.patch(kind, d.meta(obj)["namespace"], d.meta(obj)["name"], {"status": body}, sub="status")
        except NotFound:
            pass
        return True

    def _apply(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        if act.verb != Verb.TABLE:
            log.info("%s/%s: %s %s %s %s", ns, release, act.verb, act.kind, act.name,
                     json.dumps(act.body)[:300] if act.verb in (Verb.PATCH, Verb.PATCH_RELEASE) else "")
        run = self._EXECUTE.get(act.verb)
        if run is None:
            raise ValueError(f"no executor for verb {act.verb!r}")
        run(self, ns, release, act, plan)

    # one small method per verb, dispatched by _EXECUTE (each: ns, release name, action, whole plan)
    def _do_table(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        self.sync_table(ns, overrides={release: plan.routes}, queue_overrides={release: plan.queues})
        if ns in self._entry_namespaces:    # move the entry route with the table, before gray objects go
            try:
                self.sync_entries(ns, overrides={release: plan.routes})
            except Exception:
                log.exception("%s: entry routing not synced (the Lane's next pass retries)", ns)

    def _do_create(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        try:
            self.kube.create(act.kind, ns, act.body)
        except Conflict:        # already there: the next pass compares it with what we want
            pass

    def _do_update(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        current = self.kube.get(act.kind, ns, act.name)
        if current is None:
            self.kube.create(act.kind, ns, act.body)
        else:
            self.kube.replace(act.kind, ns, act.name, d.merged_for_update(act.kind, current, act.body))

    def _do_delete(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        self.kube.delete(act.kind, ns, act.name)

    def _do_patch(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        try:
            self.kube.patch(act.kind, ns, act.name, act.body, MERGE)
        except NotFound:
            pass

    def _do_jsonpatch(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        self.kube.patch(act.kind, ns, act.name, act.body, JSONPATCH)

    def _do_patch_release(self, ns: str, release: str, act: Action, plan: Plan) -> None:
        self.kube.patch("GrayRelease", ns, act.name, act.body, MERGE)

    _EXECUTE: dict[Verb, Callable[["Reconciler", str, str, Action, Plan], None]] = {
        Verb.TABLE: _do_table, Verb.CREATE: _do_create, Verb.UPDATE: _do_update, Verb.DELETE: _do_delete,
        Verb.PATCH: _do_patch, Verb.JSONPATCH: _do_jsonpatch, Verb.PATCH_RELEASE: _do_patch_release,
    }

    # ------------------------------------------------------------------------------------ lane table
    def lane_table(self, namespace: str, lanes: list[dict], releases: list[dict],
                   overrides: dict[str, dict[str, str]] | None = None,
                   queue_overrides: dict[str, list[str]] | None = None) -> dict:
        """The lane table of Lanes and GrayReleases, plus what `table_hook` adds (Kruise mode): what is published
        AND what entry routing follows (one table for both, so an entry moves with every member)."""
        want = d.build_lane_table(namespace, lanes, releases, overrides, queue_overrides)
        return self.table_hook(namespace, want) if self.table_hook is not None else want

    def sync_table(self, namespace: str, overrides: dict[str, dict[str, str]] | None = None,
                   queue_overrides: dict[str, list[str]] | None = None) -> dict | None:
        """Rebuild the namespace's lane table from all Lanes and GrayReleases; write only if it changed."""
        with self.lock(namespace):
            try:     # Conflict: a stale read; NotFound: a raced delete. Either way: read again, rebuild, write
                return retry_on_conflict(lambda: self._write_table(namespace, overrides, queue_overrides),
                                         attempts=8, retriable=(Conflict, NotFound))
            except (Conflict, NotFound) as e:
                raise RuntimeError(f"could not write lane table in {namespace} (conflicts)") from e

    def _write_table(self, namespace: str, overrides: dict[str, dict[str, str]] | None,
                     queue_overrides: dict[str, list[str]] | None) -> dict | None:
        """One read-build-write of the lane table (sync_table retries it on conflicts)."""
        lanes = self.kube.list("Lane", namespace)
        releases = self.kube.list("GrayRelease", namespace)
        want = self.lane_table(namespace, lanes, releases, overrides, queue_overrides)
        cm = self.kube.get("ConfigMap", namespace, n.TABLE_CONFIGMAP)
        if cm is not None and d.labels_of(cm).get(n.MANAGED_BY_LABEL) != n.MANAGED_BY:
            log.warning("ConfigMap %s/%s is not managed by graybaggage; not touching it", namespace, n.TABLE_CONFIGMAP)
            return None
        if not want["lanes"]:
            if cm is not None:
                self.kube.delete("ConfigMap", namespace, n.TABLE_CONFIGMAP,
                                 resource_version=d.meta(cm).get("resourceVersion"))
            return None
        current = d.parse_lane_table((cm or {}).get("data", {}).get(n.TABLE_KEY))
        if d.same_table(current, want):
            return current
        try:
            revision = int((current or {}).get("revision", 0)) + 1
        except (TypeError, ValueError):
            revision = 1
        body = d.lane_table_configmap(namespace, d.render_lane_table(want, revision))
        if cm is None:
            self.kube.create("ConfigMap", namespace, body)
        else:
            merged = copy.deepcopy(cm)
            merged["data"] = {**(cm.get("data") or {}), **body["data"]}
            self.kube.replace("ConfigMap", namespace, n.TABLE_CONFIGMAP, merged)
        log.info("lane table %s/%s revision %s: %s", namespace, n.TABLE_CONFIGMAP, revision,
                 json.dumps(want["lanes"], sort_keys=True))
        return want

    # ------------------------------------------------------------------------------------ entry routing
    def sync_entries(self, namespace: str, overrides: dict[str, dict[str, str]] | None = None,
                     strict: bool = False) -> dict[str, entry.Outcome] | None:
        """Program every Lane's entry route in the namespace (entry/ providers) and undo what no Lane wants
        any more. Returns an Outcome per lane tag, or None when no Lane has (or had) an entry route.

        An API error in one provider becomes an `EntryRouted=False/APIError` outcome for its lanes (e.g. no
        RBAC for httproutes); with `strict` (Lane deletion: nothing may be left behind) it is raised."""
        with self.lock(namespace):
            lanes = self.kube.list("Lane", namespace)
            if not any(_has_entry(x) for x in lanes):
                self._entry_namespaces.discard(namespace)
                return None
            self._entry_namespaces.add(namespace)
            releases = self.kube.list("GrayRelease", namespace)
            # the table with Kruise lanes too: a Lane's entry follows a Kruise canary like a GrayRelease's
            table = self.lane_table(namespace, lanes, releases, overrides)
            wanted, outcomes = entry.intents(lanes, table)
            services = {d.meta(x)["name"] for x in self.kube.list("Service", namespace)}
            ok = []
            for it in wanted:
                if it.service not in services:
                    outcomes[it.tag] = entry.base.failed(
                        "ServiceNotFound", f"entry Service {it.service} not found in namespace {namespace}; "
                        "nothing was changed")
                else:
                    ok.append(it)
            for provider_cls in entry.PROVIDERS:
                kind, class_type = provider_cls.handles
                mine = [it for it in ok if it.kind == kind and (class_type is None or it.class_type == class_type)]
                try:
                    outcomes.update(provider_cls(self.kube, namespace).ensure(mine))
                except KubeError as e:
                    if not mine and e.status in (403, 404):
                        # API not served / not allowed: nothing of ours can be there either
                        log.debug("%s: %s skipped: %s", namespace, provider_cls.__name__, e)
                        continue
                    if strict:
                        raise
                    log.warning("%s: entry routing (%s) failed: %s", namespace, provider_cls.__name__, e)
                    for it in mine:
                        outcomes[it.tag] = entry.Outcome(False, [entry.base.condition(
                            n.ENTRY_ROUTED, False, "APIError", f"{provider_cls.__name__}: {e}")])
            return outcomes

    # ------------------------------------------------------------------------------------ Lane
    def reconcile_lane(self, namespace: str, name: str) -> bool:
        """Returns True when a deleting Lane has been released."""
        with self.lock(namespace):
            lane = self.kube.get("Lane", namespace, name)
            if lane is not None and d.meta(lane).get("deletionTimestamp"):
                self.sync_table(namespace)          # the builder skips Lanes being deleted
                self.sync_entries(namespace, strict=True)   # ... and so do the entry providers: routes restored
                return self._release_finalizer("Lane", lane)
            if lane is not None and self._ensure_finalizer("Lane", lane):
                releases = self.kube.list("GrayRelease", namespace)
                outcomes = self.sync_entries(namespace) or {}
                want = d.lane_status(lane, releases)
                tag = (lane.get("spec") or {}).get("tag")
                mine = outcomes.get(tag) if _has_entry(lane, status=False) else None
                old = lane.get("status") or {}
                want.update(d.lane_status_entry(lane, mine.conditions if mine else None,
                                                mine.detail if mine else None, old,
                                                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))))
                self._write_status("Lane", lane, want)
            self.sync_table(namespace)
            return lane is None

    # ------------------------------------------------------------------------------------ webhook config
    def apply_webhook_configuration(self, body: dict) -> None:
        """Create the MutatingWebhookConfiguration, or replace its webhooks (labels merged) keeping the rest."""
        name = body["metadata"]["name"]

        def attempt() -> None:
            current = self.kube.get("MutatingWebhookConfiguration", None, name)
            if current is None:
                self.kube.create("MutatingWebhookConfiguration", None, body)  # created meanwhile: Conflict, again
                return
            merged = copy.deepcopy(current)
            merged["webhooks"] = body["webhooks"]
            merged.setdefault("metadata", {}).setdefault("labels", {}).update(body["metadata"].get("labels") or {})
            self.kube.replace("MutatingWebhookConfiguration", None, name, merged)
        retry_on_conflict(attempt)
