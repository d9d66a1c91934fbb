"""Watch-fed reads: an idle pass costs no API call.

kopf keeps an index per kind a pass reads (`INDEXED`), filled from its watch streams; kopf calls no other
handler before every index has been filled from its first LIST, so a pass never reads a half-filled cache.

A pass runs twice at most (`Passes`):
1. dry, against the indexes (`CachedKube`): every read is served from memory, and the first write it would
   make (an API write, an Event, a status change) raises `WouldWrite`;
2. only then again against the API, exactly as without a cache: fresh LIST/GET reads, and the writes.
So every write is still decided on fresh reads (a stale cache can cost a second pass, never a wrong write),
and a pass that finds everything in place is served from memory. A cache that lags shows the change in a
watch event that comes after, and that event starts the next pass.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from . import desired as d
from . import names as n
from .kube import Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class WouldWrite(BaseException):
    """A dry pass reached its first write: the pass has to run against the API. A BaseException, like
    GeneratorExit, so the best-effort `except Exception` blocks of a pass (events, entry sync) let it through."""


@dataclasses.dataclass(frozen=True)
class Indexed:
    kind: str
    group: str
    version: str
    plural: str
    #: only objects with this label are indexed (None: all); reads whose selector does not require it go to the API
    label: str | None = None
    #: only the object of this name is indexed per namespace (None: all)
    name: str | None = None

    @property
    def index_id(self) -> str:
        return f"graybaggage-{self.plural}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


#: what a GrayRelease or Lane pass reads (reconcile.Reconciler.observe, sync_table, reconcile_lane)
INDEXED = (
    Indexed("Deployment", "apps", "v1", "deployments"),
    Indexed("ReplicaSet", "apps", "v1", "replicasets"),
    Indexed("Service", "", "v1", "services"),
    Indexed("Pod", "", "v1", "pods", label=n.LANE_LABEL),          # only gray pods are ever counted
    Indexed("ConfigMap", "", "v1", "configmaps", name=n.TABLE_CONFIGMAP),
    Indexed("GrayRelease", n.GROUP, n.VERSION, n.RELEASES),
    Indexed("Lane", n.GROUP, n.VERSION, n.LANES),
)
BY_KIND = {ix.kind: ix for ix in INDEXED}


def parse_equality_selector(selector: str | None) -> dict[str, str] | None:
    """`a=b,c=d` -> {a: b, c: d}; {} for no selector; None for anything else (set-based, `!=`, `!a`):
    such reads go to the API."""
    if not selector:
        return {}
    out: dict[str, str] = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or value.startswith("=") or key.endswith("!") or any(c in key for c in " ()"):
            return None
        out[key] = value
    return out


def _matches(obj: Obj, wanted: dict[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


class Indexes:
    """The kopf indexes, once kopf has handed them to a handler (`attach`): before that, nothing is cached."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        return len(self._by_kind) == len(INDEXED)

    def attach(self, handler_kwargs: dict[str, Any]) -> None:
        if self.ready:
            return
        for ix in INDEXED:
            index = handler_kwargs.get(ix.index_id)
            if index is not None:
                self._by_kind[ix.kind] = index

    def objects(self, kind: str, namespace: str) -> list[Obj]:
        """The indexed objects of `kind` in `namespace` (the index's own dicts: callers copy)."""
        index = self._by_kind[kind]
        for _attempt in range(5):
            try:   # kopf updates the index on its event loop while a worker thread reads it
                return list(index[namespace]) if namespace in index else []
            except (RuntimeError, KeyError):
                continue
        return list(index[namespace]) if namespace in index else []


def index_value(ix: Indexed, body: Any, namespace: str) -> dict[str, Obj]:
    """What a kopf index handler stores for one object: a plain copy of it under its namespace, without
    `managedFields` (nothing reads them; they are most of an object's size)."""
    obj = copy.deepcopy(dict(body))
    obj.get("metadata", {}).pop("managedFields", None)
    obj.setdefault("apiVersion", ix.api_version)
    obj.setdefault("kind", ix.kind)
    return {namespace: obj}


# ---------------------------------------------------------------------------------- which releases an event concerns
def _base_of(release: Obj, deployments: dict[str, Obj]) -> Obj | None:
    return deployments.get(((release.get("spec") or {}).get("workloadRef") or {}).get("name") or "")


def releases_of_deployment(name: str, labels: dict[str, str], releases: list[Obj]) -> list[str]:
    """The GrayReleases a Deployment's event concerns: those targeting it by name (it may have just appeared),
    the one that labelled it as its base, and the owner of a gray Deployment."""
    out = [d.meta(gr)["name"] for gr in releases
           if ((gr.get("spec") or {}).get("workloadRef") or {}).get("name") == name]
    for label in (n.RELEASE_LABEL, n.OWNER_LABEL):
        if labels.get(label) and labels[label] not in out:
            out.append(labels[label])
    return out


def releases_of_pod(labels: dict[str, str], releases: list[Obj], deployments: list[Obj]) -> list[str]:
    """The GrayReleases a gray pod's event concerns: of its lane, whose base Deployment's selector selects it
    (all of its lane when the base is not known)."""
    by_name = {d.meta(x)["name"]: x for x in deployments}
    out = []
    for gr in releases:
        if (gr.get("spec") or {}).get("lane") != labels.get(n.LANE_LABEL):
            continue
        base = _base_of(gr, by_name)
        selector = (((base or {}).get("spec") or {}).get("selector") or {}).get("matchLabels")
        if base is None or d.selects(selector, labels):
            out.append(d.meta(gr)["name"])
    return out


def releases_of_service(service: Obj, releases: list[Obj], deployments: list[Obj]) -> list[str]:
    """The GrayReleases a Service's event concerns: the owner of a lane Service; else those whose base pods the
    Service selects (as its user wrote it, pin undone) or that route it in the lane table, all of them when a
    base is not known. (A Service edited to stop selecting a base not yet routed is seen by the resync timer.)"""
    owner = d.labels_of(service).get(n.OWNER_LABEL)
    names = [d.meta(gr)["name"] for gr in releases]
    if owner:
        return [owner] if owner in names else []
    by_name = {d.meta(x)["name"]: x for x in deployments}
    selector = d.original_selector(service)
    out = []
    for gr in releases:
        base = _base_of(gr, by_name)
        template = ((((base or {}).get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")
        routed = d.meta(service)["name"] in ((gr.get("status") or {}).get("routes") or {})   # it stopped selecting
        if base is None or routed or d.selects(selector, template or {}):
            out.append(d.meta(gr)["name"])
    return out


class CachedKube(Kube):
    """A `Kube` whose reads of indexed kinds come from the indexes and whose writes raise `WouldWrite`.
    Reads the indexes cannot answer (other kinds, other selectors) go to the API like `Kube`'s.

    The objects read are the index's own, not copies (a copy per object per pass was most of an idle pass's
    CPU at 200 releases): a dry pass only reads them. The planner and the builders never change their inputs
    (test_cache.py runs every test_plan row and compares), and whatever a pass would write raises first."""

    def __init__(self, kube: Kube, indexes: Indexes):
        super().__init__(kube.api, timeout=kube.timeout)
        self.indexes = indexes
        self.served = 0          # reads answered from memory (tests and the benchmark count them)

    def _cached(self, kind: str, namespace: str | None, selector: str | None) -> list[Obj] | None:
        ix = BY_KIND.get(kind)
        if ix is None or namespace is None or not self.indexes.ready:
            return None
        wanted = parse_equality_selector(selector)
        if wanted is None or (ix.label is not None and ix.label not in wanted):
            return None
        self.served += 1
        return [o for o in self.indexes.objects(kind, namespace) if _matches(o, wanted)]

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        ix = BY_KIND.get(kind)
        if ix is not None and ix.label is None and ix.name in (None, name):
            found = self._cached(kind, namespace, None)
            if found is not None:
                return next((o for o in found if (o.get("metadata") or {}).get("name") == name), None)
        return super().get(kind, namespace, name)

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict]:
        ix = BY_KIND.get(kind)
        if ix is not None and ix.name is None:      # an index of one object name cannot answer a list
            found = self._cached(kind, namespace, label_selector)
            if found is not None:
                return found
        return super().list(kind, namespace, label_selector)

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json") -> Any:
        if method != "GET":
            raise WouldWrite(f"{method} {path}")
        return super().request(method, path, body, query, content_type)


def _would_post_event(obj: dict, etype: str, reason: str, message: str) -> None:
    raise WouldWrite(f"event {reason}")


class Passes:
    """Runs passes dry against the cache first (see the module docstring). `dry` makes the dry twin of an
    object whose reads go through `.kube` (the Reconciler, KruiseMode): a shallow copy sharing its state
    (locks, known namespaces) with the cached kube and an event sink that raises `WouldWrite`."""

    def __init__(self, kube: Kube, indexes: Indexes):
        self.indexes = indexes
        self.kube = CachedKube(kube, indexes)
        self.dry_passes = 0
        self.api_passes = 0

    def log_counts_every(self, interval: float) -> None:
        """One INFO line per `interval` seconds in which passes ran: how many were served from the cache."""
        def loop() -> None:
            last = (0, 0)
            while True:
                time.sleep(interval)
                now = (self.dry_passes, self.api_passes)
                if now != last:
                    log.info("passes in the last %gs: %d from the cache, %d against the API", interval,
                             now[0] - last[0], now[1] - last[1])
                    last = now
        if interval > 0:
            threading.Thread(target=loop, name="graybaggage-pass-counts", daemon=True).start()

    def dry(self, obj: Any) -> Any:
        twin = copy.copy(obj)
        twin.kube = self.kube
        if hasattr(twin, "events"):
            twin.events = _would_post_event
        if hasattr(twin, "_apply"):          # a Reconciler: any action but the table sync is a write; raise
            table = type(obj)._apply         # before its log line, so a change is logged once, by the API pass

            def _apply(ns: str, release: str, act: Any, plan: Any) -> None:
                if act.verb != "table":
                    raise WouldWrite(f"{act.verb} {act.kind} {act.name}")
                table(twin, ns, release, act, plan)
            twin._apply = _apply
        return twin

    def run(self, dry_pass: Callable[[], Any], api_pass: Callable[[], Any]) -> Any:
        """`dry_pass()` if it writes nothing, else `api_pass()`; `api_pass()` alone until the indexes are ready."""
        if self.indexes.ready:
            try:
                result = dry_pass()
                self.dry_passes += 1
                return result
            except WouldWrite as e:
                log.debug("dry pass would write (%s): running it against the API", e)
        self.api_passes += 1
        return api_pass()
