"""The GrayRelease state machine, pure: `plan_release(Observed) -> Plan`.

Every decision is re-derived from what is observed (the GrayRelease with its status, the base
Deployment with its annotations, its ReplicaSets, the gray Deployment, Services, gray pods), so a
restarted controller resumes wherever the previous one stopped. The Plan is an ordered list of actions
(only differences), the GrayRelease's routes for the lane table, and the status to write last.

Read it as a table (after openkruise/rollouts' runCanary: one doCanaryX per step state):
- `facts_of(obs) -> Facts`: every fact a decision needs, derived once, frozen;
- `SITUATIONS`: (situation, holds?, planner) in order, the first that holds plans the pass: missing workload,
  workload targeted by another release, deleting, healthy (the base runs its stable template: idle, or the end
  of a promote or rollback), rollback requested, stable ReplicaSet missing, promoting, canary; each planner is
  `(Facts) -> Plan`;
- the clean-ups, `PROMOTE_STEPS`, `ROLLBACK_STEPS`, `DELETE_STEPS` and `SETTLE_STEPS`: ordered lists of named
  steps, each `(Facts) -> (actions, None when done | why not)`, run by `run_steps` up to the first not done.
  Their order is what keeps traffic correct:
- canary: pin base Services to the stable pods BEFORE the gray Deployment exists; publish the member in
  the lane table only once the gray Deployment is available (the ("table",) action comes after creates);
- promote, one step per pass, each waiting for the previous one to be observed: (a) drop the member from
  the lane table and the entry routes, (b) wait until no entry route names a lane Service and the gateway
  acknowledged the route's generation (where it reports one), (c) delete the gray Deployment and the lane
  Services, (d) wait until no gray pod exists (terminating ones count), (e) unpin the base Services,
  (f) record the new stable template and unpause the base; Promoting until the base has rolled out;
- rollback/delete: drop the member from the lane table FIRST, put the base back on its stable template,
  then (b) as above, delete gray objects, and restore base selectors only once no gray pod is left.
So a base Service never selects a gray pod, and no route names a lane Service that is gone.

Facts persisted in the GrayRelease's status and read back (the one place that says so; `Facts` marks these
fields "persisted"). Everything else is derived from the cluster in every pass; what must survive a lost status
is recorded on the objects themselves (the stable template and the pause on the base Deployment, the pin and
the user's selector on each base Service), never only in status.
- `canaryRevision` + `phase == Promoting`: the last step was approved (or its timed pause ran out) for this
  template; the approve annotation may be gone, and without this the release would fall back to Paused and
  publish the lane again. Once the base has the template (after (f)), `phase == Promoting` keeps it Promoting
  until the base has rolled out (`SETTLE_STEPS`).
- `currentStep` / `stepStartedAt` (only while `canaryRevision` is the base's template): approvals are per step
  and a timed pause counts from when its step started; nothing in the cluster holds either.
- `routes` / `queues`: what this release has published in the lane table. Non-empty means the table may still
  route to its lane Services (or queues): the gray objects stay until a pass has seen them dropped (promote (a),
  rollback/delete), and a published lane stays published while one gray pod is ready. The queues come from the
  base Deployment's `graybaggage.io/celery-queues` annotation and follow exactly the rule of the routes,
  entering while a gray pod is ready and leaving in the same table write, so producers stop sending to
  `<queue>-<tag>` before the gray workers go.
- `phase` (one event per phase change) and `conditions` (a condition keeps its lastTransitionTime while its
  status holds; an invalid Celery-queues annotation is reported by one event, not one per pass).
- `stableRevision` only while the workload is missing (reported as it was): otherwise the base's
  `graybaggage.io/stable-revision` annotation is the stable template.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from typing import Any, Callable, Mapping, Sequence

from . import desired as d
from . import names as n

Obj = dict[str, Any]


@dataclasses.dataclass
class Observed:
    release: Obj
    base: Obj | None
    replicasets: list[Obj]
    gray: Obj | None              # the Deployment named <deploy>-<tag>, whoever owns it
    gray_pods: int                # pods matching the gray Deployment's selector (incl. terminating)
    services: list[Obj]           # all Services in the namespace
    lane: Obj | None              # the Lane with spec.tag == release.spec.lane
    now: float                    # epoch seconds
    other_targeting: str | None = None  # another GrayRelease already targeting the same Deployment
    deployments: list[Obj] = dataclasses.field(default_factory=list)   # all Deployments in the namespace
    #: the entry route objects of the release's lane (HTTPRoutes named by its Lane's entry or carrying our
    #: entry-routing annotation, canary Ingresses we made): lane Services go only once none names them
    entry_routes: list[Obj] = dataclasses.field(default_factory=list)


class Verb(str, enum.Enum):
    """What an Action does (reconcile.Reconciler executes them in order)."""
    TABLE = "table"                  # sync the lane table (and entry routes) with this plan's routes
    CREATE = "create"
    UPDATE = "update"                # replace, keeping what others own (metadata merged)
    DELETE = "delete"
    PATCH = "patch"                  # JSON merge patch
    JSONPATCH = "jsonpatch"          # JSON patch
    PATCH_RELEASE = "patch-release"  # merge patch of the GrayRelease itself (annotations)

    def __str__(self) -> str:
        return str(self.value)


Phase = n.Phase


@dataclasses.dataclass
class Action:
    verb: Verb
    kind: str = ""                # Deployment | Service | GrayRelease
    name: str = ""
    body: Any = None


@dataclasses.dataclass
class Plan:
    actions: list[Action]
    routes: dict[str, str]
    status: Obj
    events: list[tuple[str, str, str]]   # (type, reason, message)
    done: bool = False                    # deletion: nothing of ours is left
    requeue: float | None = None
    queues: list[str] = dataclasses.field(default_factory=list)   # Celery queues for the lane table


# ---------------------------------------------------------------------------------------------- time

def iso(ts: float) -> str:
    """RFC 3339 with microseconds, so timed pauses are measured to the millisecond."""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):  # old statuses have whole seconds
        try:
            return _dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.timezone.utc).timestamp()
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------------------------------------- helpers

def rolled_out(dep: Mapping[str, Any]) -> bool:
    spec, st = dep.get("spec") or {}, dep.get("status") or {}
    want = spec.get("replicas", 1)
    return (st.get("observedGeneration", 0) >= d.meta(dep).get("generation", 0)
            and st.get("updatedReplicas", 0) == want and st.get("replicas", 0) == want
            and st.get("availableReplicas", 0) >= want)


def available(dep: Mapping[str, Any], replicas: int) -> bool:
    st = dep.get("status") or {}
    return (st.get("observedGeneration", 0) >= d.meta(dep).get("generation", 0)
            and st.get("updatedReplicas", 0) >= replicas and st.get("availableReplicas", 0) >= replicas)


def stable_replicaset(replicasets: list[Obj], base: Obj, stable: str | None) -> Obj | None:
    uid = d.meta(base).get("uid")
    found = [rs for rs in replicasets
             if any(r.get("uid") == uid for r in d.meta(rs).get("ownerReferences") or [])
             and d.template_hash(d.replicaset_template(rs)) == stable]
    found.sort(key=lambda rs: int(d.annotations_of(rs).get("deployment.kubernetes.io/revision", "0") or 0))
    return found[-1] if found else None


def conditions(previous: list[Obj] | None, new: list[tuple[str, str, str, str]], now: str) -> list[Obj]:
    prev = {c.get("type"): c for c in previous or []}
    out = []
    for ctype, status, reason, message in new:
        old = prev.get(ctype)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else now
        out.append({"type": ctype, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": since or now})
    return out


def _backends(route: Mapping[str, Any]) -> set[str]:
    """Service names an HTTPRoute (rules[].backendRefs) or an Ingress (rules' paths, defaultBackend) sends to."""
    spec = route.get("spec") or {}
    out = set()
    for rule in spec.get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            if (ref.get("kind") or "Service") == "Service" and (ref.get("group") or "") == "":
                out.add(ref.get("name"))
        for p in (rule.get("http") or {}).get("paths") or []:
            out.add(((p.get("backend") or {}).get("service") or {}).get("name"))
    out.add(((spec.get("defaultBackend") or {}).get("service") or {}).get("name"))
    out.discard(None)
    return out


def acknowledged(route: Mapping[str, Any]) -> bool:
    """Has the gateway seen the route's current generation? Gateway API: every parent's conditions that carry
    observedGeneration have it >= metadata.generation. Not observable (no status, no parents, an Ingress):
    True, so a gateway that reports nothing never blocks a release."""
    gen = d.meta(route).get("generation")
    if gen is None:
        return True
    for parent in (route.get("status") or {}).get("parents") or []:
        for c in parent.get("conditions") or []:
            seen = c.get("observedGeneration")
            if isinstance(seen, int) and seen < gen:
                return False
    return True


def entry_pending(routes: list[Obj], lane_services: set[str]) -> str | None:
    """Why the lane Services cannot go yet (an entry route still names one, or the gateway has not seen the
    route's last change), or None."""
    for r in routes:
        what = f"{r.get('kind') or 'route'} {d.meta(r).get('name')}"
        named = sorted(_backends(r) & lane_services)
        if named:
            return f"{what} still routes to {', '.join(named)}"
        if not acknowledged(r):
            return f"waiting for the gateway to acknowledge {what} generation {d.meta(r).get('generation')}"
    return None


def _steps(spec: Mapping[str, Any]) -> list[Obj]:
    return list(spec.get("steps") or [{"pause": {}}])


def _pause_duration(step: Mapping[str, Any] | None) -> Any:
    return ((step or {}).get("pause") or {}).get("duration")


# ---------------------------------------------------------------------------------------------- facts

Cond = tuple[str, str, str, str]      # (type, status, reason, message) of a status condition
Event = tuple[str, str, str]          # (type, reason, message)


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything a planner decides on, derived once from an `Observed` by `facts_of`. Fields marked
    "persisted" are read back from the GrayRelease's own status (the module docstring says which and why);
    every other one is derived from the cluster in this pass."""
    # the GrayRelease
    release: Obj
    name: str
    tag: str
    workload: str                     # spec.workloadRef.name
    steps: tuple[Obj, ...]
    deleting: bool
    ann: Mapping[str, str]            # its annotations: approve / rollback requests
    status: Obj                       # persisted: the status the previous pass wrote
    now: float
    lane: Obj | None
    other_targeting: str | None
    # objects of ours
    own_gray: Obj | None              # the gray Deployment <deploy>-<tag>, when ours
    gray_conflict: bool               # ... when someone else's
    gray_pods: int
    stale_grays: tuple[Obj, ...]      # gray Deployments of ours under another name (lane or workload changed)
    lane_svcs: tuple[Obj, ...]
    pinned: tuple[Obj, ...]           # Services pinned by this release
    svc_by_name: Mapping[str, Obj]
    published: bool                   # persisted (status.routes / queues): the table may route to the lane
    pending_entry: str | None         # why no lane Service may go yet (entry route), or None
    # the base Deployment (None, "" and False when it is missing)
    base: Obj | None
    base_name: str
    current: str                      # hash of its template now
    recorded_stable: str | None       # its stable-revision annotation
    stable: str | None                # recorded_stable, or current while none is recorded
    stable_rs: Obj | None
    targeted: bool                    # labelled as this release's target
    base_marked: bool                 # carries anything of ours (target label, stable or paused-by annotation)
    base_paused: bool
    base_paused_by_us: bool
    base_rolled_out: bool
    restore: Obj | None               # the stable template it must go back to (rollback, deletion), if any
    queue_names: tuple[str, ...] | None
    queue_error: str | None
    # the canary's progress (meaningful while current != stable)
    rollback: bool                    # the rollback annotation names the current template
    same: bool                        # persisted: status.canaryRevision is the current template
    promoting: bool                   # persisted: status.phase == Promoting for this canary revision
    step: int                         # persisted (currentStep), advanced by this pass's approval / timed pause
    started: float | None             # persisted (stepStartedAt), likewise
    approved_step: int | None         # the step an approval moved to in this pass (an event says so)
    pause_requeue: float | None       # seconds left in a running timed pause
    # where base traffic goes
    stable_pth: str | None            # pod-template-hash of the stable pods (None: none left, do not pin)
    services: tuple[Obj, ...]         # the Services selecting the stable pods
    stable_pods_gone: bool            # no stable pod left (webhook bypassed, rollout finished): not pinned
    others: tuple[Obj, ...]           # other workloads' Deployments (a Service shared with one is not pinned)

    @property
    def leftovers(self) -> bool:
        """The gray Deployment or a lane Service of ours still exists."""
        return self.own_gray is not None or bool(self.lane_svcs)

    @property
    def base_to_put_back(self) -> bool:
        """The base is not yet back on its stable template, unpaused (a clean-up step puts it back)."""
        return self.base is not None and (self.restore is not None or self.base_paused_by_us)


def facts_of(obs: Observed) -> Facts:
    """The facts of one pass, derived once."""
    gr = obs.release
    spec, st = gr.get("spec") or {}, gr.get("status") or {}
    steps = _steps(spec)
    release = dict(release=gr, name=d.meta(gr)["name"], tag=spec.get("lane") or "",
                   workload=(spec.get("workloadRef") or {}).get("name", ""), steps=tuple(steps),
                   deleting=bool(d.meta(gr).get("deletionTimestamp")), ann=d.annotations_of(gr), status=st,
                   now=obs.now, lane=obs.lane, other_targeting=obs.other_targeting)
    base = _base_facts(obs, release["name"], release["tag"])
    progress = _progress_facts(st, release["ann"], steps, base["current"], obs.now)
    restore = None
    if (release["deleting"] or progress["rollback"]) and base["stable_rs"] is not None \
            and base["recorded_stable"] and base["current"] != base["recorded_stable"]:
        restore = d.replicaset_template(base["stable_rs"])
    return Facts(**release, **_owned_facts(obs, gr), **base, **progress, restore=restore,
                 **_traffic_facts(obs, base["base_name"], release["tag"], base["stable_rs"]))


def _owned_facts(obs: Observed, gr: Obj) -> dict[str, Any]:
    name, st = d.meta(gr)["name"], gr.get("status") or {}
    own_gray = obs.gray if obs.gray is not None and d.owned_by(obs.gray, gr) else None
    lane_svcs = [s for s in obs.services if d.labels_of(s).get(n.OWNER_LABEL) == name and d.owned_by(s, gr)]
    stale = [dep for dep in obs.deployments
             if d.labels_of(dep).get(n.OWNER_LABEL) == name and d.owned_by(dep, gr)
             and (own_gray is None or d.meta(dep)["name"] != d.meta(own_gray)["name"])]
    return dict(own_gray=own_gray, gray_conflict=obs.gray is not None and own_gray is None, gray_pods=obs.gray_pods,
                stale_grays=tuple(stale), lane_svcs=tuple(lane_svcs),
                pinned=tuple(s for s in obs.services if d.annotations_of(s).get(n.PINNED_BY_ANN) == name),
                svc_by_name={d.meta(s)["name"]: s for s in obs.services},
                published=bool(st.get("routes")) or bool(st.get("queues")),
                pending_entry=entry_pending(obs.entry_routes, {d.meta(s)["name"] for s in lane_svcs}))


def _base_facts(obs: Observed, name: str, tag: str) -> dict[str, Any]:
    base = obs.base
    if base is None:
        return dict(base=None, base_name="", current="", recorded_stable=None, stable=None, stable_rs=None,
                    targeted=False, base_marked=False, base_paused=False, base_paused_by_us=False,
                    base_rolled_out=False, queue_names=None, queue_error=None)
    bspec, bann = base.get("spec") or {}, d.annotations_of(base)
    current = d.template_hash(bspec.get("template"))
    recorded = bann.get(n.STABLE_ANN)
    targeted = d.labels_of(base).get(n.RELEASE_LABEL) == name
    queues, error = d.celery_queues(base, tag)
    return dict(base=base, base_name=d.meta(base)["name"], current=current, recorded_stable=recorded,
                stable=recorded or current,
                stable_rs=stable_replicaset(obs.replicasets, base, recorded) if recorded else None,
                targeted=targeted, base_marked=targeted or n.STABLE_ANN in bann or n.PAUSED_BY_ANN in bann,
                base_paused=bool(bspec.get("paused")), base_paused_by_us=bool(bspec.get("paused")) and
                n.PAUSED_BY_ANN in bann, base_rolled_out=rolled_out(base),
                queue_names=tuple(queues) if queues is not None else None, queue_error=error)


def _progress_facts(st: Obj, ann: Mapping[str, str], steps: list[Obj], current: str, now: float) -> dict[str, Any]:
    """Where the canary is in its steps: the persisted step, moved on by an approval of exactly this step of this
    template, then by every timed pause that has run out (each next one starts when the previous ended)."""
    same = st.get("canaryRevision") == current
    recorded = st.get("currentStep")
    step = recorded if same and isinstance(recorded, int) else 0
    started = parse_iso(st.get("stepStartedAt")) if same else None
    promoting = same and st.get("phase") == Phase.PROMOTING
    approved, requeue = None, None
    if not promoting and step < len(steps) and ann.get(n.APPROVE_ANN) == f"{current}/{step}":
        step, started, approved = step + 1, now, step + 1
    while not promoting and step < len(steps) and started is not None:
        duration = _pause_duration(steps[step])
        if duration is None:
            break
        if now - started >= duration:
            step, started = step + 1, started + duration
        else:
            requeue = started + duration - now
            break
    return dict(rollback=ann.get(n.ROLLBACK_ANN) == current, same=same, promoting=promoting, step=step,
                started=started, approved_step=approved, pause_requeue=requeue)


def _traffic_facts(obs: Observed, base_name: str, tag: str, stable_rs: Obj | None) -> dict[str, Any]:
    if stable_rs is None:
        return dict(stable_pth=None, stable_pods_gone=False, services=(), others=())
    rs_spec = stable_rs.get("spec") or {}
    pth = d.labels_of(stable_rs).get(n.POD_TEMPLATE_HASH) or \
        (rs_spec.get("selector") or {}).get("matchLabels", {}).get(n.POD_TEMPLATE_HASH)
    gone = not (stable_rs.get("status") or {}).get("availableReplicas") and not rs_spec.get("replicas")
    if gone:
        pth = None           # pinning would leave the base Service without endpoints
    labels = (d.replicaset_template(stable_rs).get("metadata") or {}).get("labels") or {}
    others = [dep for dep in obs.deployments
              if d.meta(dep).get("name") not in (base_name, d.lane_name(base_name, tag))
              and not d.labels_of(dep).get(n.OWNER_LABEL)]
    return dict(stable_pth=pth, stable_pods_gone=gone, services=tuple(d.workload_services(obs.services, labels)), others=tuple(others))


# ---------------------------------------------------------------------------------------------- plan

def plan_release(obs: Observed) -> Plan:
    """Plan one pass: the first situation of `SITUATIONS` that holds plans it."""
    f = facts_of(obs)
    return situation(f)[1](f)


def situation(f: Facts) -> tuple[str, Callable[[Facts], Plan]]:
    """The first row of `SITUATIONS` that holds: its name and its planner."""
    for name, holds, planner in SITUATIONS:
        if holds(f):
            return name, planner
    raise AssertionError("the last situation always holds")  # pragma: no cover


def _status(f: Facts, conds: list[Cond], events: list[Event], phase: Phase, message: str, *,
            stable: str | None, canary: str | None = None, step: int | None = None, started: float | None = None,
            ready: str = "", routes: Mapping[str, str] | None = None, queues: list[str] | None = None) -> Obj:
    """The status to write last; a phase change is also an event (appended to `events`)."""
    if phase != f.status.get("phase"):
        events.append(("Warning" if phase == Phase.FAILED else "Normal", phase.value, message))
    steps = len(f.steps)
    return {
        "phase": phase.value,
        "message": message,
        "observedGeneration": d.meta(f.release).get("generation"),
        "stableRevision": stable,
        "canaryRevision": canary,
        "currentStep": step,
        "stepLabel": f"{min(step + 1, steps)}/{steps}" if step is not None else None,
        "stepStartedAt": iso(started) if started is not None else None,
        "ready": ready or None,
        "routes": dict(routes or {}),
        "queues": list(queues or []) or None,
        "conditions": conditions(f.status.get("conditions"), conds, iso(f.now)),
    }


def _found(f: Facts) -> tuple[list[Cond], list[Event]]:
    """The conditions every plan reports (Lane, workload, Celery queues) and the event of a bad annotation."""
    if f.lane is None:
        conds = [("LaneFound", "False", "LaneNotFound", f"no Lane with tag {f.tag!r} in this namespace; gray pods get "
                  f"default lane labels and are not published in the lane table")]
    else:
        conds = [("LaneFound", "True", "LaneFound", f"Lane {d.meta(f.lane)['name']}")]
    events: list[Event] = []
    if f.base is None:
        conds.append(("WorkloadFound", "False", "DeploymentNotFound",
                      f"Deployment {f.workload!r} not found in namespace {d.meta(f.release).get('namespace')!r}"))
        return conds, events
    conds.append(("WorkloadFound", "True", "DeploymentFound", f"Deployment {f.workload}"))
    if f.queue_error:
        conds.append((n.CELERY_QUEUES_CONDITION, "False", "InvalidAnnotation", f.queue_error))
        prev = {c.get("type"): c for c in f.status.get("conditions") or []}.get(n.CELERY_QUEUES_CONDITION) or {}
        if prev.get("status") != "False" or prev.get("message") != f.queue_error:
            events.append(("Warning", "InvalidCeleryQueues", f.queue_error))
    elif f.queue_names:
        conds.append((n.CELERY_QUEUES_CONDITION, "True", "Valid", f"Celery queues {', '.join(f.queue_names)}: "
                      f"in the lane table while a gray pod is ready"))
    return conds, events


def _ensure_target(f: Facts) -> list[Action]:
    """Make the Deployment a target (its label lets the webhook find the release) and record the stable template."""
    ensure: Obj = {}
    if not f.targeted:
        ensure.setdefault("metadata", {})["labels"] = {n.RELEASE_LABEL: f.name}
    if not f.recorded_stable:
        ensure.setdefault("metadata", {})["annotations"] = {n.STABLE_ANN: f.current}
    return [Action(Verb.PATCH, "Deployment", f.base_name, ensure)] if ensure else []


def _keep_paused(f: Facts, events: list[Event]) -> list[Action]:
    """A new template on an unpaused base: the webhook was down or bypassed; stop the base rolling now, say so."""
    if f.base_paused:
        return []
    events.append(("Warning", "WebhookBypassed",
                   f"Deployment {f.base_name} changed its template without being paused; paused it now"))
    return [Action(Verb.PATCH, "Deployment", f.base_name,
                   {"spec": {"paused": True}, "metadata": {"annotations": {n.PAUSED_BY_ANN: "controller"}}})]


def _stable_missing(f: Facts) -> Cond:
    return ("Ready", "False", "StableRevisionMissing",
            f"no ReplicaSet of {f.base_name} has the stable template {f.stable}")


# ---- the planners, one per situation

def plan_missing_workload(f: Facts) -> Plan:
    """Clean what is ours, say so clearly, wait for the workload to exist."""
    conds, events = _found(f)
    return _cleanup(f, ROLLBACK_STEPS, conds, events, Phase.FAILED, f.status.get("stableRevision"))


def plan_taken(f: Facts) -> Plan:
    """Another release targets this Deployment: never touch it, not even while this one is deleted."""
    conds, events = _found(f)
    why = f"Deployment {f.workload!r} is already targeted by GrayRelease {f.other_targeting!r}"
    conds.append(("Ready", "False", "AlreadyTargeted", why))
    return Plan([Action(Verb.TABLE)], {}, _status(f, conds, events, Phase.FAILED, why, stable=None), events,
                done=f.deleting)


def plan_deleting(f: Facts) -> Plan:
    """Leave the base on its stable template, unpaused, untouched otherwise; then the finalizer can go."""
    conds, events = _found(f)
    return _cleanup(f, DELETE_STEPS, conds, events, Phase.ROLLING_BACK, f.recorded_stable)


def plan_healthy(f: Facts) -> Plan:
    """The base runs its stable template: idle, or the end of a promote (Promoting until it has rolled out) or
    of a rollback (gray objects go, base Services are unpinned)."""
    conds, events = _found(f)
    phase = Phase.PROMOTING if f.status.get("phase") == Phase.PROMOTING else Phase.ROLLING_BACK
    return _cleanup(f, SETTLE_STEPS, conds, events, phase, f.stable, pre=_ensure_target(f))


def plan_rollback(f: Facts) -> Plan:
    """The rollback annotation names the current template: the base goes back to the stable template."""
    conds, events = _found(f)
    if f.stable_rs is None:
        conds.append(_stable_missing(f))
        return Plan(_ensure_target(f) + [Action(Verb.TABLE)], {}, _status(
            f, conds, events, Phase.FAILED, f"cannot roll back: stable ReplicaSet for revision {f.stable} not found",
            stable=f.stable, canary=f.current), events)
    return _cleanup(f, ROLLBACK_STEPS, conds, events, Phase.ROLLING_BACK, f.stable, pre=_ensure_target(f),
                    canary=f.current)


def plan_stable_missing(f: Facts) -> Plan:
    """No ReplicaSet has the stable template: nothing to pin to; keep the base paused and wait."""
    conds, events = _found(f)
    pre = _ensure_target(f) + _keep_paused(f, events)
    conds.append(_stable_missing(f))
    return Plan(pre + [Action(Verb.TABLE)], {}, _status(
        f, conds, events, Phase.FAILED, f"stable ReplicaSet for revision {f.stable} not found", stable=f.stable,
        canary=f.current), events, requeue=1.0)


def _canary_start(f: Facts) -> tuple[list[Action], list[Cond], list[Event]]:
    """What promoting and the canary both begin with: target, keep the base paused, report the approval."""
    conds, events = _found(f)
    pre = _ensure_target(f) + _keep_paused(f, events)
    if f.stable_pods_gone:
        conds.append(("BasePinned", "False", "StablePodsMissing",
                      f"no stable pods of {f.base_name} are left; base Services were not pinned"))
    if f.approved_step is not None:
        events.append(("Normal", "Approved", f"step {f.approved_step}/{len(f.steps)} approved"))
    return pre, conds, events


def plan_promoting(f: Facts) -> Plan:
    """Every step is over (approved, or the last timed pause ran out): one step of PROMOTE_STEPS per pass."""
    pre, conds, events = _canary_start(f)
    acts, waiting = run_steps(PROMOTE_STEPS, f)
    message = waiting or "promoted"             # (f) is never done: the healthy planner takes over
    return Plan(pre + acts, {}, _status(f, conds, events, Phase.PROMOTING, "promoting: " + message, stable=f.stable,
                                  canary=f.current, step=len(f.steps) - 1), events, requeue=0.5)


def plan_canary(f: Facts) -> Plan:
    """Pin the base Services to the stable pods, then the gray Deployment and the lane Services; the member is
    published in the lane table once the gray Deployment is available (the table write comes last)."""
    acts, conds, events = _canary_start(f)
    replicas = int((f.steps[f.step] or {}).get("replicas") or (f.release.get("spec") or {}).get("replicas") or 1)
    want = d.gray_deployment(f.base or {}, f.release, f.lane, f.tag, replicas)
    _pin_base_services(f, acts, conds)          # the pins come first, before any gray pod exists
    gray_current = _sync_gray(f, want, acts, conds)
    acts += [Action(Verb.DELETE, "Deployment", d.meta(dep)["name"]) for dep in f.stale_grays]
    lane_targets = _sync_lane_services(f, acts, conds)
    avail_n = int(((f.own_gray or {}).get("status") or {}).get("availableReplicas") or 0)
    fully = f.own_gray is not None and gray_current and available(f.own_gray, replicas)
    kept = f.own_gray is not None and f.same and f.published and avail_n >= 1
    routes = lane_targets if lane_targets and (fully or kept) else {}
    queues = list(f.queue_names or []) if (fully or kept) else []
    acts.append(Action(Verb.TABLE))
    _canary_conditions(f, conds, want, fully, f"{avail_n}/{replicas}")
    phase, message, started, requeue = _canary_phase(f, want, fully or kept, f"{avail_n}/{replicas}")
    return Plan(acts, routes, _status(f, conds, events, phase, message, stable=f.stable, canary=f.current,
                                      step=f.step, started=started, ready=f"{avail_n}/{replicas}", routes=routes,
                                      queues=queues), events, requeue=requeue, queues=queues)


#: (situation, holds?, planner), in order: the first that holds plans the pass (cf. openkruise/rollouts'
#: runCanary switching on the step state). Later rows may assume earlier ones did not hold.
SITUATIONS: tuple[tuple[str, Callable[[Facts], bool], Callable[[Facts], Plan]], ...] = (
    ("missing workload", lambda f: f.base is None, plan_missing_workload),
    ("workload targeted by another release", lambda f: bool(f.other_targeting), plan_taken),
    ("deleting", lambda f: f.deleting, plan_deleting),
    ("healthy: the base runs its stable template", lambda f: f.current == f.stable, plan_healthy),
    ("rollback requested", lambda f: f.rollback, plan_rollback),
    ("stable ReplicaSet missing", lambda f: f.stable_rs is None, plan_stable_missing),
    ("promoting", lambda f: f.promoting or f.step >= len(f.steps), plan_promoting),
    ("canary: progressing or paused at a step", lambda f: True, plan_canary),
)


# ---- the canary's parts

def _pin_base_services(f: Facts, acts: list[Action], conds: list[Cond]) -> None:
    """Pin every base Service to the stable pods (unless shared with another workload); unpin the ones that no
    longer select the workload."""
    for s in f.services:
        sel = d.original_selector(s)
        shared = [d.meta(dep)["name"] for dep in f.others if d.selects(
            sel, ((((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}))]
        if shared:
            # pinning by pod-template-hash would cut the other workloads off this Service: do not pin
            conds.append(("BasePinned", "False", "SharedService",
                          f"Service {d.meta(s)['name']} also selects {', '.join(shared)}; not pinned, so base "
                          f"traffic through it may reach gray pods"))
            continue
        patch = d.pin_patch(s, f.stable_pth, f.name) if f.stable_pth else None
        if patch:
            acts.append(Action(Verb.PATCH, "Service", d.meta(s)["name"], patch))
    for s in f.pinned:
        if all(d.meta(s)["name"] != d.meta(x)["name"] for x in f.services):
            patch = d.unpin_patch(s)
            if patch:
                acts.append(Action(Verb.PATCH, "Service", d.meta(s)["name"], patch))


def _sync_gray(f: Facts, want: Obj, acts: list[Action], conds: list[Cond]) -> bool:
    """Create / update / re-create the gray Deployment (never someone else's); True when it is as wanted."""
    name = want["metadata"]["name"]
    if f.gray_conflict:
        conds.append(("CanaryAvailable", "False", "NameConflict",
                      f"Deployment {name} exists and is not owned by this GrayRelease"))
    elif f.own_gray is None:
        acts.append(Action(Verb.CREATE, "Deployment", name, want))
    elif d.annotations_of(f.own_gray).get(n.SPEC_HASH_ANN) != want["metadata"]["annotations"][n.SPEC_HASH_ANN]:
        if ((f.own_gray.get("spec") or {}).get("selector") or {}) != want["spec"]["selector"]:
            acts.append(Action(Verb.DELETE, "Deployment", name))
        else:
            acts.append(Action(Verb.UPDATE, "Deployment", name, want))
    else:
        return True
    return False


def _sync_lane_services(f: Facts, acts: list[Action], conds: list[Cond]) -> dict[str, str]:
    """A lane Service `<svc>-<tag>` per base Service; returns base Service -> lane Service (the routes)."""
    targets: dict[str, str] = {}
    wanted = set()
    for s in f.services:
        want = d.lane_service(s, f.release, f.tag)
        lname = want["metadata"]["name"]
        wanted.add(lname)
        seen = f.svc_by_name.get(lname)
        if seen is None:
            acts.append(Action(Verb.CREATE, "Service", lname, want))
        elif not d.owned_by(seen, f.release):
            conds.append(("LaneServices", "False", "NameConflict",
                          f"Service {lname} exists and is not owned by this GrayRelease"))
            continue
        elif d.service_differs(seen, want):
            acts.append(Action(Verb.UPDATE, "Service", lname, want))
        targets[d.meta(s)["name"]] = lname
    acts += [Action(Verb.DELETE, "Service", d.meta(s)["name"]) for s in f.lane_svcs
             if d.meta(s)["name"] not in wanted]
    return targets


def _canary_conditions(f: Facts, conds: list[Cond], want: Obj, fully: bool, ready: str) -> None:
    if f.own_gray is not None:
        conds.append(("CanaryAvailable", "True" if fully else "False",
                      "Available" if fully else "Progressing", f"{ready} gray replicas available"))
    elif not f.gray_conflict:
        conds.append(("CanaryAvailable", "False", "Creating", f"creating Deployment {want['metadata']['name']}"))
    if not f.services:
        conds.append(("LaneServices", "False", "NoService",
                      f"no Service selects the pods of {f.base_name}; no routes to publish in the lane table"))


def _canary_phase(f: Facts, want: Obj, serving: bool, ready: str) -> tuple[Phase, str, float | None, float | None]:
    """Phase, message, step start and requeue of a canary: Paused at a step once gray pods serve the lane (a timed
    pause counts from then), Progressing before."""
    started, requeue, name = f.started, f.pause_requeue, want["metadata"]["name"]
    if serving and started is None:
        started = f.now
    if f.gray_conflict:
        return Phase.FAILED, f"Deployment {name} exists and is not ours", started, requeue
    if not serving:
        return Phase.PROGRESSING, f"waiting for gray Deployment {name} ({ready} available)", None, requeue
    duration = _pause_duration(f.steps[f.step])
    if duration is None:
        return (Phase.PAUSED, f"step {f.step + 1}/{len(f.steps)}: waiting for approval "
                f"(kubectl-graybaggage approve {f.name})", started, requeue)
    left = max(0, int(round((started or f.now) + duration - f.now)))
    return (Phase.PAUSED, f"step {f.step + 1}/{len(f.steps)}: pausing {duration}s ({left}s left)", started,
            max(0.5, float(left)))


# ---- clean-ups: ordered lists of named steps

StepResult = tuple[list[Action], str | None]   # the step's actions, and None when it is done, else why not
Step = tuple[str, Callable[[Facts], StepResult]]


def run_steps(steps: Sequence[Step], f: Facts) -> StepResult:
    """Run a clean-up: each step's actions in order, up to and including the first step not done; returns the
    actions and why that step is not done (None when every step is). A later pass re-derives the facts and
    runs the list again, so each step's actions are observed before a later step acts."""
    acts: list[Action] = []
    for _name, step in steps:
        more, waiting = step(f)
        acts += more
        if waiting is not None:
            return acts, waiting
    return acts, None


def go_on(step: Callable[[Facts], StepResult]) -> Callable[[Facts], StepResult]:
    """The step's actions, without waiting for them to be observed: the list goes on in the same pass."""
    return lambda f: (step(f)[0], None)


def _table_write(f: Facts) -> StepResult:
    """The lane-table write of this pass, first: this plan publishes no route and no queue of the lane."""
    return [Action(Verb.TABLE)], None


def _table_dropped(f: Facts) -> StepResult:
    """(a) as `_table_write`, and done only once a pass has seen the member dropped (status.routes / queues)."""
    return [Action(Verb.TABLE)], "lane routes and queues dropped from the lane table" if f.published else None


def _entry_clear(f: Facts) -> StepResult:
    """(b) no entry route names a lane Service, and the gateway acknowledged the route's generation."""
    return [], f.pending_entry


def _routes_clear(f: Facts) -> StepResult:
    """(a)+(b) while gray objects are left: neither the lane table nor an entry route may still name them."""
    if f.leftovers and (f.published or f.pending_entry):
        return [], f.pending_entry or "lane routes and queues dropped from the lane table"
    return [], None


def _delete_all_grays(f: Facts) -> StepResult:
    """(c) delete the gray Deployments (ours under any name) and the lane Services; done once none is left."""
    grays = ([f.own_gray] if f.own_gray is not None else []) + list(f.stale_grays)
    acts = [Action(Verb.DELETE, "Deployment", d.meta(g)["name"]) for g in grays]
    acts += [Action(Verb.DELETE, "Service", d.meta(s)["name"]) for s in f.lane_svcs]
    return acts, "deleting the gray Deployment and lane Services" if acts else None


def _delete_stale_grays(f: Facts) -> StepResult:
    """Gray Deployments of ours under another name (the lane or the workload changed) go at once."""
    return [Action(Verb.DELETE, "Deployment", d.meta(dep)["name"]) for dep in f.stale_grays], None


def _delete_gray(f: Facts) -> StepResult:
    """(c) delete the gray Deployment and the lane Services; done once the Deployment is gone."""
    acts = [Action(Verb.DELETE, "Deployment", d.meta(f.own_gray)["name"])] if f.own_gray is not None else []
    acts += [Action(Verb.DELETE, "Service", d.meta(s)["name"]) for s in f.lane_svcs]
    return acts, "deleting the gray Deployment" if f.own_gray is not None else None


def _gray_pods_gone(f: Facts) -> StepResult:
    """(d) no gray pod is left (terminating ones count): until then the base Services stay pinned."""
    if f.gray_pods > 0:
        return [], f"waiting for {f.gray_pods} gray pod(s) to terminate (base Services stay pinned)"
    return [], None


def _unpin(f: Facts) -> StepResult:
    """(e) restore the base Services' own selectors."""
    acts = [Action(Verb.PATCH, "Service", d.meta(s)["name"], patch)
            for s in f.pinned if (patch := d.unpin_patch(s))]
    return acts, "no gray pod left: restoring the base Services' selectors" if acts else None


def _promote_base(f: Facts) -> StepResult:
    """(f) record the new stable template and unpause the base; the healthy planner then waits for its roll-out."""
    return [Action(Verb.PATCH, "Deployment", f.base_name, {
        "metadata": {"annotations": {n.STABLE_ANN: f.current, n.PAUSED_BY_ANN: None}},
        "spec": {"paused": False}})], "rolling the base Deployment to the new template"


def _put_base_back(f: Facts) -> StepResult:
    """The base back on its stable template (rollback, deletion), or just unpaused; `_base_is_back` waits for it
    at the end, `_base_settled` before any gray object goes."""
    if f.base is not None and f.restore is not None:
        return [Action(Verb.JSONPATCH, "Deployment", f.base_name, [
                    {"op": "replace", "path": "/spec/template", "value": f.restore},
                    {"op": "add", "path": "/spec/paused", "value": False}]),
                Action(Verb.PATCH, "Deployment", f.base_name, {"metadata": {"annotations": {n.PAUSED_BY_ANN: None}}})
                ], None
    if f.base_paused_by_us:
        return [Action(Verb.PATCH, "Deployment", f.base_name,
                       {"spec": {"paused": False}, "metadata": {"annotations": {n.PAUSED_BY_ANN: None}}})], None
    return [], None


def _base_settled(f: Facts) -> StepResult:
    """While gray objects are left, they keep serving the lane until the base is back and rolled out."""
    if f.leftovers and f.base is not None and (f.base_to_put_back or not f.base_rolled_out):
        return [], "the base is settling"
    return [], None


def _base_is_back(f: Facts) -> StepResult:
    return [], "the base is going back to its stable template" if f.base_to_put_back else None


def _promoted_base_rolled(f: Facts) -> StepResult:
    """After (f): Promoting until the base has rolled to the promoted template."""
    promoted = f.status.get("phase") == Phase.PROMOTING
    return [], "the base is rolling" if promoted and f.base is not None and not f.base_rolled_out else None


def _untarget(f: Facts) -> StepResult:
    """Deletion, last: the base carries nothing of ours (target label, stable and paused-by annotations)."""
    if f.deleting and f.base is not None and f.base_marked:
        return [Action(Verb.PATCH, "Deployment", f.base_name, {"metadata": {
            "labels": {n.RELEASE_LABEL: None}, "annotations": {n.STABLE_ANN: None, n.PAUSED_BY_ANN: None}}})], None
    return [], None


def _clear_requests(f: Facts) -> StepResult:
    """Last: the approve / rollback annotations are consumed."""
    if not f.deleting and (n.APPROVE_ANN in f.ann or n.ROLLBACK_ANN in f.ann):
        return [Action(Verb.PATCH_RELEASE, "GrayRelease", f.name,
                       {"metadata": {"annotations": {n.APPROVE_ANN: None, n.ROLLBACK_ANN: None}}})], None
    return [], None


#: Promote, one step per pass (issue 13: the real data plane found base traffic at gray pods when the unpin
#: came first): the base stays paused and pinned to the stable pods until no gray pod is left.
PROMOTE_STEPS: tuple[Step, ...] = (
    ("(a) drop the lane's routes and queues from the lane table", _table_dropped),
    ("(b) no entry route names a lane Service; the gateway acknowledged it", _entry_clear),
    ("(c) delete the gray Deployments and the lane Services", _delete_all_grays),
    ("(d) no gray pod left", _gray_pods_gone),
    ("(e) unpin the base Services", _unpin),
    ("(f) record the new stable template, unpause the base", _promote_base),
)

#: Rollback and deletion: the member leaves the table and the base goes back at once; the gray objects go only
#: once the base has settled and no route names them; the base Services are unpinned once no gray pod is left.
_RESTORE: tuple[Step, ...] = (
    ("(a) drop the lane's routes and queues from the lane table", _table_write),
    ("put the base back on its stable template, unpaused", _put_base_back),
    ("delete gray Deployments left under another name", _delete_stale_grays),
    ("the base has settled (the gray pods serve until then)", _base_settled),
    ("(a)+(b) no route names a lane Service", _routes_clear),
    ("(c) delete the gray Deployment and the lane Services", _delete_gray),
    ("(d) no gray pod left", _gray_pods_gone),
    ("(e) unpin the base Services", go_on(_unpin)),
    ("the base is back on its stable template", _base_is_back),
)
ROLLBACK_STEPS: tuple[Step, ...] = _RESTORE + (("clear the approve / rollback annotations", _clear_requests),)
DELETE_STEPS: tuple[Step, ...] = _RESTORE + (("untarget the base", _untarget),)
#: the base runs its stable template: idle, or the end of a promote (after (f)) or of a rollback
SETTLE_STEPS: tuple[Step, ...] = _RESTORE + (
    ("after a promote, the base has rolled to the new template", _promoted_base_rolled),
    ("clear the approve / rollback annotations", _clear_requests),
)


def _cleanup(f: Facts, steps: Sequence[Step], conds: list[Cond], events: list[Event], in_progress: Phase,
             stable: str | None, *, pre: list[Action] | None = None, canary: str | None = None) -> Plan:
    """A rollback / deletion / settling plan: the steps' actions; busy (in_progress, requeued) while a step is
    not done or anything but the table write and the annotations' clearing is left to do."""
    acts, waiting = run_steps(steps, f)
    busy = waiting is not None or any(a.verb not in (Verb.TABLE, Verb.PATCH_RELEASE) for a in acts)
    phase, message = _cleanup_phase(f, in_progress, busy, stable)
    return Plan((pre or []) + acts, {}, _status(f, conds, events, phase, message, stable=stable, canary=canary),
                events, done=not busy, requeue=0.5 if busy else None)


def _cleanup_phase(f: Facts, in_progress: Phase, busy: bool, stable: str | None) -> tuple[Phase, str]:
    if f.base is None:
        phase, message = Phase.FAILED, (f"Deployment {f.workload!r} not found (workloadRef apps/v1 Deployment); "
                                        f"waiting for it to exist")
    elif busy:
        phase = in_progress
        message = ("promoting: waiting for the base Deployment to roll to the new template"
                   if in_progress == Phase.PROMOTING else "removing gray objects and restoring base Services")
        if f.pending_entry and f.leftovers:
            message += f" ({f.pending_entry})"
    else:
        phase, message = Phase.HEALTHY, f"stable revision {stable}"
    if f.deleting:
        message = "deleting: " + ("cleaning up" if busy else "done")
    return phase, message

