"""Kruise mode, the I/O part: read a namespace's Kruise Rollouts and friends, apply `kruise.plan()`.

One pass per namespace (`KruiseMode.reconcile`), under the Reconciler's namespace lock, in this order:
1. lane Services `<svc>-<tag>` created/updated (before any route names them);
2. the entry Ingresses (`kruise.entry_plan()`): Kruise's canary Ingress `<ingress>-canary` gets the lane header
   control and the lane Service backend, the stable Ingress strips the header, or both are undone; written
   BEFORE the table, so the undo precedes the lane leaving the table (and the lane Service's deletion), and the
   backend names a lane Service that exists (step 1); a whole-object PUT with the resourceVersion read, so a
   change of Kruise's in between is a conflict retried next pass, never overwritten;
3. the lane table rebuilt (`Reconciler.sync_table` merges `lanes_for()` in): members join after their Service
   exists, and leave as soon as the Rollout is Finalising/Cancelling, before Kruise resumes the base;
   then a Lane's entry route (`Reconciler.sync_entries`, same table) when the Kruise lanes changed;
4. base Service pins (pin / follow the newest ready base ReplicaSet / unpin when no canary pod is left);
5. lane Services of finished canaries deleted (only once the canary Deployment is gone).
Kruise's own objects are only read, except its canary Ingress (step 2; kruise.py says why). Besides watch events,
every namespace seen is passed again each `resync` seconds (level-triggered, like the GrayRelease timers); a pass
that finds everything in place writes nothing.
One INFO line per namespace whenever what graybaggage makes of its Rollouts changes (`summary()`), e.g.
`Kruise mode demo: rollout-a Member gray, rollout-b NoCanary`, and one whenever its entry Ingresses change
(`Kruise entry demo/spring-cloud-a-canary Routed: ...`; a WARNING when ingress-nginx cannot carry the header);
each pass at DEBUG with its number of writes.

Kruise manager down: while Rollouts exist, at most once per `resync` a pass GETs one Rollout in v1alpha1 (not the
stored version: the API server reads it from etcd and asks Kruise's conversion webhook, served by the manager;
a list would come from the watch cache, converted when it was filled, and answer without the manager). When that says the
manager does not answer, one WARNING line and one Warning Event `KruiseManagerDown` on each Rollout of the
namespace (a new Event object about the Rollout: `kubectl describe rollout` shows it; the Rollout itself is not
written), and the passes write nothing (lane table, lane Services, pins and entry Ingresses stay as they are: a
Kruise that is gone must not drop a lane or unpin a base) until it answers again (one INFO line, one Normal
Event `KruiseManagerAnswering` per Rollout).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import desired as d
from . import kruise as k
from . import names as n
from .kube import Kube, KubeError, path_template

log = logging.getLogger(__name__)

ROLLOUTS = {"v1beta1": path_template("Rollout"), "v1alpha1": path_template("Rollout/v1alpha1")}
TRAFFIC_ROUTINGS = path_template("TrafficRouting")
INGRESSES = path_template("Ingress")


class LostRace(Exception):
    """An entry Ingress write lost a race (HTTP 409): the pass stops there and runs again from a fresh read."""


#: Event reasons on each Rollout of a namespace when Kruise's manager stops / starts answering
DOWN_REASON = "KruiseManagerDown"
BACK_REASON = "KruiseManagerAnswering"

#: seconds between two API discovery reads of the Rollout API (Kruise installed or removed: seen within this)
DISCOVERY_TTL = 30.0

class KruiseMode:
    def __init__(self, kube: Kube, rec: Any, resync: float | None = None, leading: Any = None):
        self.kube = kube
        self.rec = rec
        self.resync = resync
        self.leading = leading or (lambda: True)
        self._known: set[str] = set()
        self._resyncing = False
        self._summary: dict[str, str] = {}
        self.passes: dict[str, int] = {}
        self._down: dict[str, str | None] = {}
        self._probed: dict[str, float] = {}
        self._probe_denied = False
        self._ingress_denied = False
        self._entry_summary: dict[str, str] = {}
        self._lanes: dict[str, dict[str, dict[str, str]]] = {}
        self._managed: dict[str, dict[str, str]] = {}
        self._served: str | None = None
        self._discovered: tuple[float, str | None] | None = None    # (when, served_version's answer)
        self._guard = threading.Lock()
        self._dirty: set[str] = set()
        self._draining: set[str] = set()

    # ---------------------------------------------------------------- reads
    def served_version(self) -> str | None:
        """The Rollout API version to read (v1beta1, the storage version, else v1alpha1); None: no Kruise.
        API discovery is asked at most once per DISCOVERY_TTL seconds: every GrayRelease pass asks, and the
        scale benchmark measured these two GETs as 16 % of all idle requests with no Kruise installed."""
        now = time.monotonic()
        if self._discovered is not None and now - self._discovered[0] < DISCOVERY_TTL:
            return self._discovered[1]
        version = self._discover()
        self._discovered = (now, version)
        return version

    def _discover(self) -> str | None:
        for version in ("v1beta1", "v1alpha1"):
            try:
                body = self.kube.request("GET", f"/apis/rollouts.kruise.io/{version}")
            except KubeError as e:
                if e.status in (404, 503):
                    continue
                raise
            if any(r.get("name") == "rollouts" for r in (body or {}).get("resources") or []):
                return version
        return None

    def _list(self, path: str) -> list[dict]:
        try:
            return list((self.kube.request("GET", path) or {}).get("items") or [])
        except KubeError as e:
            if e.status == 404:
                return []
            raise

    def observe(self, namespace: str) -> dict[str, list[dict]] | None:
        version = self.served_version()
        self._served = version
        if version is None:
            return None
        from urllib.parse import quote
        ns = quote(namespace)
        rollouts = self._list(ROLLOUTS[version].format(ns=ns))
        if not rollouts:
            return {"rollouts": [], "trs": [], "deploys": [], "rss": [], "pods": [], "svcs":
                    self.kube.list("Service", namespace), "ingresses": self._ingresses(namespace)}
        return {"rollouts": rollouts, "trs": self._list(TRAFFIC_ROUTINGS.format(ns=ns)),
                "deploys": self.kube.list("Deployment", namespace), "rss": self.kube.list("ReplicaSet", namespace),
                "pods": self.kube.list("Pod", namespace), "svcs": self.kube.list("Service", namespace),
                "ingresses": self._ingresses(namespace)}

    def _ingresses(self, namespace: str) -> list[dict]:
        """The namespace's Ingresses ([] when RBAC does not allow: no entry takeover, one WARNING line)."""
        from urllib.parse import quote
        try:
            return self._list(INGRESSES.format(ns=quote(namespace)))
        except KubeError as e:
            if e.status != 403:
                raise
            if not self._ingress_denied:
                self._ingress_denied = True
                log.warning("not allowed to list ingresses: Kruise's canary Ingress is not taken over (grant list and "
                            "update on ingresses.networking.k8s.io, see controller/deploy/rbac.yaml)")
            return []

    def manager_down(self, namespace: str, rollouts: list[dict]) -> str | None:
        """Why Kruise's manager does not answer (None: it does, or nothing to ask); probed at most once per
        `resync` seconds per namespace, the answer kept in between."""
        if self._served != "v1beta1" or not rollouts:
            return None
        now = time.monotonic()
        if namespace in self._probed and now - self._probed[namespace] < (self.resync or 5.0):
            return self._down.get(namespace)
        self._probed[namespace] = now
        from urllib.parse import quote
        name = quote(d.meta(rollouts[0]).get("name") or "")
        try:    # one GET (a list is served from the watch cache, converted when it was filled: no webhook call)
            self.kube.request("GET", ROLLOUTS["v1alpha1"].format(ns=quote(namespace)) + "/" + name)
            down = None
        except KubeError as e:
            body = e.body.get("message") if isinstance(e.body, dict) else None
            down = k.manager_down(e.status, body or str(e))
            if down is None and e.status not in (403, 404):
                raise
            if e.status == 403 and not self._probe_denied:
                self._probe_denied = True
                log.warning("not allowed to get rollouts.%s: cannot tell whether Kruise's manager answers (grant get, "
                            "see controller/deploy/rbac.yaml)", k.GROUP)
        was, self._down[namespace] = self._down.get(namespace), down
        if down and not was:
            log.warning("Kruise Rollout manager not answering (%s): keeping the Kruise lanes of %s as they are "
                        "(lane table, lane Services, base pins) until it answers", down, namespace)
            self._rollout_events(namespace, rollouts, "Warning", DOWN_REASON,
                                 f"Kruise Rollout manager not answering ({down}): graybaggage keeps this Rollout's "
                                 "lane (lane table, lane Services, base pins, entry Ingress) as it is until it answers")
        elif was and not down:
            log.info("Kruise Rollout manager answering again: Kruise mode resumes in %s", namespace)
            self._rollout_events(namespace, rollouts, "Normal", BACK_REASON,
                                 "Kruise Rollout manager answering again: graybaggage follows this Rollout again")
        return down

    def _rollout_events(self, namespace: str, rollouts: list[dict], etype: str, reason: str, message: str) -> None:
        """One Event per Rollout (`kubectl describe rollout`, `kubectl get events`): a new core/v1 Event object
        about the Rollout, never a write to the Rollout itself. Best effort: a failure is one log line."""
        import datetime
        import uuid
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for r in rollouts:
            meta = d.meta(r)
            body = {"apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                    "involvedObject": {"apiVersion": r.get("apiVersion") or f"{k.GROUP}/v1beta1", "kind": "Rollout",
                                       "name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid"),
                                       "resourceVersion": meta.get("resourceVersion")},
                    "reason": reason, "message": message, "type": etype, "count": 1,
                    "firstTimestamp": now, "lastTimestamp": now,
                    "source": {"component": n.FIELD_MANAGER}, "reportingComponent": n.FIELD_MANAGER}
            try:
                self.kube.create("Event", namespace, body)
            except Exception as e:     # events are best effort
                log.warning("Event %s on Rollout %s/%s not posted: %s", reason, namespace, meta.get("name"), e)

    def plan(self, namespace: str) -> k.Plan | None:
        seen = self.observe(namespace)
        if seen is None:
            return None
        return k.plan(seen["rollouts"], seen["trs"], seen["deploys"], seen["rss"], seen["pods"], seen["svcs"],
                      seen.get("ingresses") or [])

    # ---------------------------------------------------------------- the table hook
    def lanes_for(self, namespace: str) -> dict[str, dict[str, str]]:
        """Kruise lanes of a namespace as of its last pass (a first call does a pass of its own)."""
        with self._guard:
            if namespace in self._lanes:
                return self._lanes[namespace]
        p = self.plan(namespace)
        lanes = p.lanes if p else {}
        with self._guard:
            self._lanes[namespace] = lanes
        return lanes

    def merge_table(self, namespace: str, table: dict) -> dict:
        try:
            lanes = self.lanes_for(namespace)
        except Exception:       # never let Kruise mode break the GrayRelease/Lane table
            log.exception("Kruise lanes of %s unavailable; table written without them", namespace)
            return table
        return k.merge_lanes(table, lanes) if lanes else table

    def managed(self, namespace: str) -> dict[str, str]:
        """Deployment -> Rollout for a namespace (read now; {} when Kruise is not served): one LIST of the
        namespace's Rollouts, not a whole Kruise pass's reads (every GrayRelease pass asks this)."""
        version = self.served_version()
        if version is None:
            return {}
        from urllib.parse import quote
        return k.managed_deployments(self._list(ROLLOUTS[version].format(ns=quote(namespace))))

    # ---------------------------------------------------------------- coalescing
    def poke(self, namespace: str) -> None:
        """Ask for a pass of `namespace` soon. Watch events come in storms (ReplicaSets, Deployments, Rollout
        status during a promotion); one worker per namespace runs passes back to back while new events came
        in, so a pass always starts from a view newer than the last event, and the base pin follows a new
        ReplicaSet within about one pass instead of behind a queue of stale ones."""
        with self._guard:
            self._known.add(namespace)
            start_resync = bool(self.resync) and not self._resyncing
            self._resyncing = self._resyncing or start_resync
            self._dirty.add(namespace)
            draining = namespace in self._draining
            self._draining.add(namespace)
        if start_resync:
            threading.Thread(target=self._resync_loop, name="kruise-resync", daemon=True).start()
        if not draining:
            threading.Thread(target=self._drain, args=(namespace,), name=f"kruise-{namespace}", daemon=True).start()

    def _resync_loop(self) -> None:
        while True:
            time.sleep(self.resync or 5.0)
            if not self.leading():
                continue
            with self._guard:
                known = sorted(self._known)
            for namespace in known:
                self.poke(namespace)

    def _drain(self, namespace: str) -> None:
        while True:
            with self._guard:
                if namespace not in self._dirty:
                    self._draining.discard(namespace)
                    return
                self._dirty.discard(namespace)
            try:
                self.reconcile(namespace)
            except LostRace as e:      # an ordinary race: pass again at once, from a fresh read
                log.info("Kruise pass for %s: %s; passing again", namespace, e)
                time.sleep(0.1)
                with self._guard:
                    self._dirty.add(namespace)
            except Exception:
                log.exception("Kruise mode pass for %s failed; retrying", namespace)
                time.sleep(1.0)
                with self._guard:
                    self._dirty.add(namespace)

    # ---------------------------------------------------------------- the pass
    def reconcile(self, namespace: str) -> k.Plan | None:
        with self.rec.lock(namespace):
            seen = self.observe(namespace)
            if seen is None:
                return None
            p = k.plan(seen["rollouts"], seen["trs"], seen["deploys"], seen["rss"], seen["pods"], seen["svcs"],
                       seen.get("ingresses") or [])
            if self.manager_down(namespace, seen["rollouts"]):
                with self._guard:
                    self.passes[namespace] = count = self.passes.get(namespace, 0) + 1
                log.debug("Kruise pass %s #%d: 0 writes (Kruise manager down)", namespace, count)
                return p
            kube = self.kube
            writes = len(p.services) + len(p.pins) + len(p.delete_services) + len(p.ingresses)
            for body in p.services:
                name = body["metadata"]["name"]
                current = kube.get("Service", namespace, name)
                if current is None:
                    kube.create("Service", namespace, body)
                    log.info("Kruise lane Service %s/%s -> %s", namespace, name, body["spec"]["selector"])
                elif d.labels_of(current).get(k.ROLLOUT_LABEL) or d.labels_of(current).get(n.MANAGED_BY_LABEL) \
                        == n.MANAGED_BY:
                    merged = dict(current, spec=dict(current.get("spec") or {}, **{
                        "ports": body["spec"]["ports"], "selector": body["spec"]["selector"]}))
                    merged["metadata"] = dict(current["metadata"], labels={**d.labels_of(current),
                                                                           **body["metadata"]["labels"]})
                    kube.replace("Service", namespace, name, merged)
                else:
                    log.warning("Service %s/%s exists and is not ours; Kruise lane not published there",
                                namespace, name)
            self._write_entries(namespace, p)
            with self._guard:
                changed = self._lanes.get(namespace) != p.lanes
                self._lanes[namespace] = p.lanes
                self._managed[namespace] = p.managed
            if changed or p.lanes:
                self.rec.sync_table(namespace)
            if changed:     # a Lane's entry route follows the Kruise members too, right after the table
                try:
                    self.rec.sync_entries(namespace)
                except Exception:
                    log.exception("%s: entry routing not synced after a Kruise lane change (the Lane's next "
                                  "pass retries)", namespace)
            for svc, patch in sorted(p.pins.items()):
                kube.patch("Service", namespace, svc, patch)
                log.info("Kruise mode: base Service %s/%s selector -> %s", namespace, svc, patch["spec"]["selector"])
            for name in p.delete_services:
                kube.delete("Service", namespace, name)
                log.info("Kruise lane Service %s/%s deleted (canary gone)", namespace, name)
            for v in p.views:
                log.debug("rollout %s/%s: %s %s", namespace, v.rollout, v.reason, v.message)
            summary = k.summary(p)
            with self._guard:
                self.passes[namespace] = count = self.passes.get(namespace, 0) + 1
                said, self._summary[namespace] = self._summary.get(namespace), summary
            log.debug("Kruise pass %s #%d: %d writes", namespace, count, writes)
            if summary != said:
                log.info("Kruise mode %s: %s", namespace, summary)
            return p

    def _write_entries(self, namespace: str, p: k.Plan) -> None:
        """The entry Ingresses (before the table: see the module docstring), and one line when they change."""
        for name, body in sorted(p.ingresses.items()):
            try:
                self.kube.replace("Ingress", namespace, name, body)
            except KubeError as e:
                if e.status == 404:      # Kruise deleted its canary Ingress meanwhile: nothing left to undo
                    continue
                if e.status == 409:      # changed since the read (Kruise's script): stop before the table write
                    raise LostRace(f"Ingress {namespace}/{name} changed since it was read") from e
                raise
            ann = d.meta(body).get("annotations") or {}
            log.info("Kruise entry Ingress %s/%s: %s", namespace, name,
                     "changed, record " + ann[k.ENTRY_ANN] if k.ENTRY_ANN in ann else "graybaggage's changes undone")
        said = self._entry_summary.get(namespace)
        now = k.entry_summary(p.entries)
        if now != said:
            self._entry_summary[namespace] = now
            for v in p.entries:
                (log.warning if v.state == "HeaderNotSet" else log.info)(
                    "Kruise entry %s/%s %s: %s", namespace, v.canary, v.state, v.message)

    def guard_release(self, namespace: str, name: str) -> bool:
        """True (and a Failed status with condition KruiseManaged) when GrayRelease `name` targets a Deployment
        a Kruise Rollout manages; the GrayRelease reconcile must then not run."""
        gr = self.kube.get("GrayRelease", namespace, name)
        if gr is None or d.meta(gr).get("deletionTimestamp"):
            return False
        managed = self.managed(namespace)
        msg = k.release_conflict(gr, managed)
        if msg is None:
            return False
        st = gr.get("status") or {}
        if st.get("phase") != "Failed" or st.get("message") != msg:
            cond = {"type": "Ready", "status": "False", "reason": "KruiseManaged", "message": msg}
            try:
                self.kube.patch("GrayRelease", namespace, name,
                                {"status": {"phase": "Failed", "message": msg, "conditions": [cond]}}, sub="status")
                self.rec.events(gr, "Warning", "KruiseManaged", msg)
            except KubeError as e:
                if e.status != 404:
                    raise
        return True
