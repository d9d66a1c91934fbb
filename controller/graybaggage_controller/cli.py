"""`kubectl-graybaggage`: the operator's kubectl plugin (`kubectl graybaggage ...` once it is on PATH).

    kubectl graybaggage status [NAME] [-n NS | -A] [-o table|json|yaml] [--watch [--timeout 5m]]
    kubectl graybaggage get NAME [-n NS] [-o tree|json|yaml] [--watch [--timeout 5m]]
    kubectl graybaggage approve NAME      (alias: promote) approve the current pause step (last step: promote)
    kubectl graybaggage rollback NAME     (alias: abort)   roll back: remove the gray replicas, keep the base
    kubectl graybaggage lanes [-n NS | -A] [-o table|json|yaml]
    kubectl graybaggage version | completion bash

NAME may be written `rollout-a`, `rollout/rollout-a`, `grayrelease/rollout-a` or `gr/rollout-a`. With Kruise
Rollout installed, `status` also lists Kruise Rollouts (Kruise mode lanes), and `status NAME` / `get NAME` show a
Kruise Rollout when no GrayRelease has that name (read-only; partial, with a line, where access is missing).
approve/rollback only write an annotation on the GrayRelease (graybaggage.io/approve = "<canary>/<step>",
graybaggage.io/rollback = "<canary>"); the controller acts on it. `--watch` polls the API server once per
`--interval` (default 1 s). Errors are one line on stderr; the exit code says which kind (see EXIT_CODES).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

from . import desired as d
from . import kruise as k
from . import names as n
from .kube import Kube, KubeError, api_client_from

__version__ = "0.1.0"

OK, WRONG_STATE, USAGE, NOT_FOUND, API, TIMEOUT = 0, 1, 2, 3, 4, 5
EXIT_CODES = """exit codes:
  0  done; status --watch: the release became (or is) Healthy
  1  wrong phase or state (e.g. approve a release that is not Paused); status --watch: the release
     Failed or was rolled back
  2  usage error (bad arguments, a name of another kind, -A with a NAME)
  3  not found (the GrayRelease)
  4  no usable kubeconfig, API server unreachable or refusing, graybaggage CRDs not installed
  5  --watch --timeout ran out (status)
"""
RELEASE_KINDS = ("rollout", "rollouts", "grayrelease", "grayreleases", "gr",
                 f"grayrelease.{n.GROUP}", f"grayreleases.{n.GROUP}")
TERMINAL_FAILED = ("Failed",)


class CliError(Exception):
    def __init__(self, message: str, code: int = WRONG_STATE):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------- pure parts

def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def release_name(text: str) -> str:
    """The GrayRelease name in `NAME`, `rollout/NAME`, `grayrelease/NAME`, `gr/NAME` (kubectl, Argo and
    Kruise spellings). A name of another kind is a usage error."""
    if "/" in text:
        kind, _, name = text.partition("/")
        if kind.lower() not in RELEASE_KINDS:
            raise CliError(f'error: "{text}" names a {kind}; this command works on GrayReleases '
                           f"(write NAME, rollout/NAME or grayrelease/NAME)", USAGE)
        text = name
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", text or ""):
        raise CliError(f'error: "{text}" is not a valid resource name', USAGE)
    return text


def duration(text: str) -> float:
    """Seconds in `90`, `90s`, `5m`, `1h`, `1m30s` (kubectl's --timeout spellings)."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not text.strip() or not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 90s, 5m, 1h)")
    h, mins, s = m.groups()
    return int(h or 0) * 3600 + int(mins or 0) * 60 + float(s or 0)


def watch_verdict(seen: Sequence[str], phase: str, message: str = "") -> tuple[int, str] | None:
    """Whether `status --watch` is done: (exit code, line) once the release is Healthy (0), Failed (1), or
    Healthy again after a rollback seen during the watch (1); None while it is in progress."""
    if phase in TERMINAL_FAILED:
        return WRONG_STATE, f"Failed: {message}"
    if phase == "Healthy":
        if "RollingBack" in seen:
            return WRONG_STATE, f"rolled back: {message}"
        return OK, f"Healthy: {message}"
    return None


def render(obj: Any, output: str) -> str:
    if output == "json":
        return json.dumps(obj, indent=2, sort_keys=False)
    import yaml
    return yaml.safe_dump(obj, sort_keys=False).rstrip()


def _list_doc(items: list[dict], kind: str) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}


def _owned_by(obj: dict, uid: str | None) -> bool:
    return bool(uid) and any(r.get("uid") == uid for r in d.meta(obj).get("ownerReferences") or [])


def _pod_state(pod: dict) -> str:
    st = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    deleting = " terminating" if d.meta(pod).get("deletionTimestamp") else ""
    return f"{st.get('phase') or 'Pending'}{' ready' if ready else ''}{deleting}"


def _rs_line(rs: dict) -> str:
    spec, st = rs.get("spec") or {}, rs.get("status") or {}
    rev = (d.labels_of(rs) or {}).get(n.POD_TEMPLATE_HASH, "")
    return f"ReplicaSet/{d.meta(rs)['name']}  {st.get('readyReplicas') or 0}/{spec.get('replicas') or 0} ready  rev {rev}"


def release_tree(gr: dict, base: dict | None, gray: dict | None, replicasets: list[dict], pods: list[dict],
                 lane_table: dict | None) -> str:
    """`get NAME`: the release, its stable and canary Deployments with their live ReplicaSets and pods, and its
    membership in the published lane table. Pure (the objects as read from the API)."""
    st, spec = gr.get("status") or {}, gr.get("spec") or {}
    name, lane = d.meta(gr)["name"], spec.get("lane")
    lines = [f"{name}  GrayRelease  {st.get('phase') or 'Pending'}  lane {lane}  step {st.get('stepLabel') or '-'}"
             f"  ready {st.get('ready') or '-'}"]
    if st.get("message"):
        lines.append(f"│   {st['message']}")

    def deployment(label: str, dep: dict | None, revision: str | None, last: bool, missing: str) -> None:
        branch, pad = ("└── ", "    ") if last else ("├── ", "│   ")
        if dep is None:
            lines.append(f"{branch}{label}  {missing}")
            return
        dst = dep.get("status") or {}
        paused = "  paused" if (dep.get("spec") or {}).get("paused") else ""
        lines.append(f"{branch}{label}  Deployment/{d.meta(dep)['name']}  rev {revision or '-'}  "
                     f"{dst.get('readyReplicas') or 0}/{(dep.get('spec') or {}).get('replicas') or 0} ready{paused}")
        uid = d.meta(dep).get("uid")
        sets = [rs for rs in replicasets if _owned_by(rs, uid)
                and ((rs.get("spec") or {}).get("replicas") or (rs.get("status") or {}).get("replicas")
                     or d.labels_of(rs).get(n.POD_TEMPLATE_HASH) == revision)]
        sets.sort(key=lambda rs: d.meta(rs)["name"])
        for i, rs in enumerate(sets):
            rs_last = i == len(sets) - 1
            lines.append(f"{pad}{'└── ' if rs_last else '├── '}{_rs_line(rs)}")
            owned = sorted((p for p in pods if _owned_by(p, d.meta(rs).get("uid"))), key=lambda p: d.meta(p)["name"])
            for j, pod in enumerate(owned):
                lines.append(f"{pad}{'    ' if rs_last else '│   '}{'└── ' if j == len(owned) - 1 else '├── '}"
                             f"Pod/{d.meta(pod)['name']}  {_pod_state(pod)}")

    deployment("stable", base, st.get("stableRevision"), False,
               f"Deployment/{(spec.get('workloadRef') or {}).get('name')} not found")
    deployment("canary", gray, st.get("canaryRevision"), False, "none (no release in progress)")
    routes = ((lane_table or {}).get("lanes") or {}).get(lane, {}).get("routes") or {}
    workload = (spec.get("workloadRef") or {}).get("name")
    mine = {k: v for k, v in routes.items() if k.split(".")[0].split(":")[0] == workload
            or (gray is not None and v.split(".")[0].split(":")[0] == d.meta(gray)["name"])}
    where = f"configmap/{n.TABLE_CONFIGMAP} revision {(lane_table or {}).get('revision', '-')}"
    if lane_table is None:
        lines.append(f"└── lane table  not published (no configmap/{n.TABLE_CONFIGMAP})")
    elif mine:
        lines.append(f"└── lane table  {lane}: " + ", ".join(f"{k} -> {v}" for k, v in sorted(mine.items()))
                     + f"  ({where})")
    else:
        lines.append(f"└── lane table  {workload} is not routed in lane {lane}: its traffic stays on base ({where})")
    return "\n".join(lines)


KRUISE_HEADERS = ["ROLLOUT", "WORKLOAD", "LANE", "REASON", "IN TABLE", "LANE SERVICES", "BASE PINNED", "MESSAGE"]


def kruise_rows(namespace: str, views: Sequence[k.RolloutView] | None, services: Sequence[dict] | None,
                lane_table: dict | None, table_known: bool = True) -> list[dict]:
    """Kruise-mode lanes of one namespace as `status` shows them, one row per Rollout. Pure.

    `views`: `kruise.plan()`'s views (None: the Rollouts could not be read; the rows then come from the
    Services graybaggage labelled or pinned for a Rollout, reason "?"). `services`: the namespace's Services
    (None: not readable). Lane Services are ours labelled `graybaggage.io/kruise-rollout: <rollout>`; a base
    Service is pinned when its `graybaggage.io/pinned-by` is `kruise:<rollout>` (shown with the pinned hash).
    IN TABLE: whether the published lane table routes any of the Rollout's lane Services in its lane."""
    lane_svcs: dict[str, list[str]] = {}
    lane_tags: dict[str, str] = {}
    pinned: dict[str, list[str]] = {}
    for svc in services or []:
        m = d.meta(svc)
        labels, ann = m.get("labels") or {}, m.get("annotations") or {}
        if labels.get(k.ROLLOUT_LABEL):
            lane_svcs.setdefault(labels[k.ROLLOUT_LABEL], []).append(m["name"])
            if labels.get(n.LANE_LABEL):
                lane_tags.setdefault(labels[k.ROLLOUT_LABEL], labels[n.LANE_LABEL])
        by = ann.get(n.PINNED_BY_ANN) or ""
        if by.startswith(k.PIN_PREFIX):
            h = ((svc.get("spec") or {}).get("selector") or {}).get(n.POD_TEMPLATE_HASH)
            pinned.setdefault(by[len(k.PIN_PREFIX):], []).append(f"{m['name']} ({h})" if h else m["name"])
    rows: list[dict] = []
    known = []
    for v in views or []:
        known.append(v.rollout)
        rows.append({"namespace": namespace, "rollout": v.rollout, "workload": v.deployment or None,
                     "lane": v.tag, "reason": v.reason, "message": v.message})
    for name in sorted((set(lane_svcs) | set(pinned)) - set(known)):
        rows.append({"namespace": namespace, "rollout": name, "workload": None, "lane": lane_tags.get(name),
                     "reason": "?" if views is None else "NoRollout",
                     "message": "" if views is None else "graybaggage objects left for a Rollout that is gone"})
    for row in rows:
        name, tag = row["rollout"], row["lane"]
        row["laneServices"] = sorted(lane_svcs.get(name, [])) if services is not None else None
        row["basePinned"] = sorted(pinned.get(name, [])) if services is not None else None
        routed = set((((lane_table or {}).get("lanes") or {}).get(tag) or {}).get("routes", {}).values()) \
            if tag else set()
        mine = set(lane_svcs.get(name, [])) or ({row["workload"] and d.lane_name(row["workload"], tag)}
                                                 if tag and row["workload"] else set())
        row["inTable"] = None if not table_known else bool(routed & mine)
    return rows


def _kruise_cell(value: Any) -> str:
    """One Kruise-mode value as shown: ? unknown (not readable), yes/no, a comma list, - empty."""
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value) or "-"


def kruise_table(rows: Sequence[dict], all_namespaces: bool, notes: Sequence[str] = ()) -> str:
    """The `Kruise Rollouts` block of `status`: a table of :func:`kruise_rows` and one line per thing that
    could not be read."""
    out = ["Kruise Rollouts (Kruise mode):"]
    if rows:
        body = [[_kruise_cell(r[key]) for key in ("rollout", "workload", "lane", "reason", "inTable", "laneServices",
                                           "basePinned")] + [r.get("message") or ""] for r in rows]
        headers = list(KRUISE_HEADERS)
        if all_namespaces:
            headers.insert(0, "NAMESPACE")
            body = [[r["namespace"], *b] for r, b in zip(rows, body)]
        out.append(table(body, headers))
    elif not notes:
        out.append("  none")
    out.extend(f"({note})" for note in notes)
    return "\n".join(out)


def kruise_detail(row: dict) -> str:
    """`status NAME` / `get NAME` when NAME is a Kruise Rollout (no GrayRelease of that name)."""
    def val(key: str) -> str:
        return _kruise_cell(row.get(key))
    return "\n".join([
        f"Name:          {row['rollout']}",
        f"Namespace:     {row['namespace']}",
        "Kind:          Rollout (rollouts.kruise.io; graybaggage Kruise mode)",
        f"Workload:      Deployment/{val('workload')}",
        f"Lane:          {val('lane')}",
        f"Reason:        {val('reason')}",
        f"Message:       {row.get('message') or '-'}",
        f"In table:      {val('inTable')}",
        f"Lane Services: {val('laneServices')}",
        f"Base pinned:   {val('basePinned')}",
    ])


# ---------------------------------------------------------------------------------------------- commands

def _default_namespace(kubeconfig: str | None, context: str | None) -> str:
    try:
        from kubernetes import config
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            active = next((c for c in contexts if c["name"] == context), active)
        return (active.get("context") or {}).get("namespace") or "default"
    except Exception:
        return "default"


def _kruise_version(kube: Kube) -> str | None:
    """The served Rollout API version (v1beta1, else v1alpha1); None when Kruise Rollout is not installed."""
    for version in ("v1beta1", "v1alpha1"):
        try:
            body = kube.request("GET", f"/apis/{k.GROUP}/{version}")
        except KubeError as e:
            if e.status in (403, 404, 503):
                continue
            raise
        if any(r.get("name") == "rollouts" for r in (body or {}).get("resources") or []):
            return version
    return None


def kruise_status(kube: Kube, ns: str | None) -> tuple[list[dict], list[str]] | None:
    """Rows of :func:`kruise_rows` for a namespace (None: all), and what could not be read (each a line);
    None when Kruise Rollout is not served. Read-only: Rollouts, TrafficRoutings, Deployments, Services and
    the lane table ConfigMap (what `kruise.plan()` needs for each Rollout's reason)."""
    version = _kruise_version(kube)
    if version is None:
        return None
    notes: list[str] = []
    where = f"namespace {ns}" if ns else "any namespace"

    def read(what: str, fn: Callable[[], list[dict]]) -> list[dict] | None:
        try:
            return fn()
        except KubeError as e:
            if e.status not in (401, 403):
                raise
            notes.append(f"not allowed to list {what} in {where}: "
                         + {"rollouts": "reasons not shown, rows from graybaggage's Services",
                            "services": "lane Services and pins not shown"}.get(what.split(".")[0],
                                                                                "reasons not shown"))
            return None

    scope = f"namespaces/{ns}/" if ns else ""
    rollouts = read(f"rollouts.{k.GROUP}", lambda: list(
        (kube.request("GET", f"/apis/{k.GROUP}/{version}/{scope}rollouts") or {}).get("items") or []))
    services = read("services", lambda: kube.list("Service", ns))
    trs = deploys = None
    if rollouts:
        trs = read(f"trafficroutings.{k.GROUP}", lambda: list(
            (kube.request("GET", f"/apis/{k.GROUP}/v1alpha1/{scope}trafficroutings") or {}).get("items") or []))
        deploys = read("deployments", lambda: kube.list("Deployment", ns))

    if rollouts and version == "v1beta1":   # a v1alpha1 GET goes through Kruise's conversion webhook
        first = d.meta(rollouts[0])
        try:
            kube.request("GET", f"/apis/{k.GROUP}/v1alpha1/namespaces/{first.get('namespace')}/rollouts/"
                         f"{first.get('name')}")
        except KubeError as e:
            down = k.manager_down(e.status, (e.body.get("message") if isinstance(e.body, dict) else None) or str(e))
            if down:
                notes.append(f"Kruise Rollout manager not answering ({down}): the controller keeps these lanes, "
                             "lane Services and pins as they are until it answers")

    def of(items: list[dict] | None, space: str) -> list[dict]:
        return [o for o in items or [] if d.meta(o).get("namespace") == space]

    ours = {d.meta(s).get("namespace") for s in services or []
            if (d.meta(s).get("labels") or {}).get(k.ROLLOUT_LABEL)
            or ((d.meta(s).get("annotations") or {}).get(n.PINNED_BY_ANN) or "").startswith(k.PIN_PREFIX)}
    spaces = [ns] if ns else sorted({d.meta(r).get("namespace") for r in rollouts or []} | ours)
    rows: list[dict] = []
    for space in spaces:
        if rollouts is not None and not of(rollouts, space) and space not in ours:
            continue
        views = None
        if rollouts is not None and trs is not None and deploys is not None:
            views = k.plan(of(rollouts, space), of(trs, space), of(deploys, space), [], [],
                           of(services, space)).views
        elif rollouts is not None and not of(rollouts, space):
            views = []
        table_known = True
        try:
            cm = kube.get("ConfigMap", space, n.TABLE_CONFIGMAP)
            lane_table = d.parse_lane_table(((cm or {}).get("data") or {}).get(n.TABLE_KEY)) if cm else None
        except KubeError as e:
            if e.status not in (401, 403):
                raise
            lane_table, table_known = None, False
            notes.append(f"not allowed to read configmap/{n.TABLE_CONFIGMAP} in namespace {space}: IN TABLE not shown")
        rows.extend(kruise_rows(space, views, of(services, space) if services is not None else None,
                                lane_table, table_known))
    return rows, notes


def _kruise_named(kube: Kube, ns: str, name: str) -> dict | None:
    """The status row of Kruise Rollout `name` (None: no such Rollout, or Kruise not served)."""
    found = kruise_status(kube, ns)
    if found is None:
        return None
    return next((r for r in found[0] if r["rollout"] == name), None)


def _get_release(kube: Kube, ns: str, name: str) -> dict:
    gr = kube.get("GrayRelease", ns, name)
    if gr is None:
        raise CliError(f'error: grayrelease "{name}" not found in namespace "{ns}"', NOT_FOUND)
    return gr


def _release_or_rollout(kube: Kube, ns: str, name: str, output: str, tree: bool = False) -> dict | str:
    """The GrayRelease `name`, or (none of that name) the Kruise Rollout's status text/document."""
    gr = kube.get("GrayRelease", ns, name)
    if gr is not None:
        return gr
    row = _kruise_named(kube, ns, name)
    if row is None:
        raise CliError(f'error: grayrelease "{name}" not found in namespace "{ns}" (nor a Kruise Rollout)',
                       NOT_FOUND)
    if output not in ("table", "tree"):
        return render(row, output)
    return kruise_detail(row)


def cmd_status(kube: Kube, ns: str | None, name: str | None, output: str = "table") -> str:
    if name:
        gr = _release_or_rollout(kube, ns or "default", name, output)
        if isinstance(gr, str):
            return gr
        if output != "table":
            return render(gr, output)
        st = gr.get("status") or {}
        spec = gr.get("spec") or {}
        lines = [
            f"Name:       {name}",
            f"Namespace:  {d.meta(gr).get('namespace')}",
            f"Workload:   Deployment/{(spec.get('workloadRef') or {}).get('name')}",
            f"Lane:       {spec.get('lane')}",
            f"Phase:      {st.get('phase', '')}",
            f"Message:    {st.get('message', '')}",
            f"Step:       {st.get('stepLabel') or '-'}",
            f"Stable:     {st.get('stableRevision') or '-'}",
            f"Canary:     {st.get('canaryRevision') or '-'}",
            f"Ready:      {st.get('ready') or '-'}",
            "Routes:     " + (", ".join(f"{k} -> {v}" for k, v in sorted((st.get('routes') or {}).items())) or "-"),
            "Conditions:",
        ]
        rows = [(c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
                for c in st.get("conditions") or []]
        lines.append(table(rows, ["  TYPE", "STATUS", "REASON", "MESSAGE"]) if rows else "  -")
        return "\n".join(lines)
    items = sorted(kube.list("GrayRelease", ns), key=lambda o: (d.meta(o).get("namespace"), d.meta(o)["name"]))
    kruise = kruise_status(kube, ns)
    if output != "table":
        doc = _list_doc(items, "GrayRelease")
        if kruise is not None and (kruise[0] or kruise[1]):     # the same rows and notes as the table's block
            doc["kruiseRollouts"], doc["kruiseNotes"] = list(kruise[0]), list(kruise[1])
        return render(doc, output)
    section = ""
    if kruise is not None and (kruise[0] or kruise[1]):
        section = "\n\n" + kruise_table(kruise[0], ns is None, kruise[1])
    if not items:
        return f"No grayreleases found in {ns + ' namespace' if ns else 'any namespace'}." + section
    rows = []
    for gr in items:
        st, spec = gr.get("status") or {}, gr.get("spec") or {}
        row = [d.meta(gr)["name"], (spec.get("workloadRef") or {}).get("name"), spec.get("lane"),
               st.get("phase", ""), st.get("stepLabel") or "-", st.get("ready") or "-",
               st.get("stableRevision") or "-", st.get("canaryRevision") or "-", st.get("message", "")]
        if ns is None:
            row.insert(0, d.meta(gr).get("namespace"))
        rows.append(row)
    headers = ["NAME", "WORKLOAD", "LANE", "STATUS", "STEP", "READY", "STABLE", "CANARY", "MESSAGE"]
    if ns is None:
        headers.insert(0, "NAMESPACE")
    return table(rows, headers) + section


def watch_status(kube: Kube, ns: str, name: str, timeout: float | None, interval: float,
                 emit: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """`status NAME --watch`: a line per change of phase/step/message; the exit code of :func:`watch_verdict`,
    or TIMEOUT."""
    deadline = None if timeout is None else clock() + timeout
    seen: list[str] = []
    last = None
    while True:
        st = _get_release(kube, ns, name).get("status") or {}
        phase, message = st.get("phase") or "Pending", st.get("message") or ""
        if not seen or seen[-1] != phase:
            seen.append(phase)
        line = f"{name}  {phase}  step {st.get('stepLabel') or '-'}  ready {st.get('ready') or '-'}  {message}".rstrip()
        if line != last:
            emit(line)
            last = line
        verdict = watch_verdict(seen, phase, message)
        if verdict is not None:
            code, text = verdict
            emit(f"grayrelease/{name} {text}")
            return code
        if deadline is not None and clock() >= deadline:
            emit(f"error: timed out after {timeout:g}s waiting for grayrelease/{name} (phase {phase})")
            return TIMEOUT
        sleep(interval if deadline is None else max(0.0, min(interval, deadline - clock())))


def cmd_get(kube: Kube, ns: str, name: str, output: str = "tree") -> str:
    gr = _release_or_rollout(kube, ns, name, output)
    if isinstance(gr, str):
        return gr
    workload = ((gr.get("spec") or {}).get("workloadRef") or {}).get("name")
    denied: list[str] = []

    def readable(read: Callable[[], Any], what: str, empty: Any) -> Any:
        try:
            return read()
        except KubeError as e:  # the release-operator role reads only GrayReleases, Lanes and the lane table
            if e.status != 403:
                raise
            denied.append(what)
            return empty

    base = readable(lambda: kube.get("Deployment", ns, workload), "deployments", None) if workload else None
    grays = readable(lambda: kube.list("Deployment", ns, f"{n.OWNER_LABEL}={name}"), "deployments", [])
    gray = grays[0] if grays else None
    replicasets = readable(lambda: kube.list("ReplicaSet", ns), "replicasets", [])
    pods = readable(lambda: kube.list("Pod", ns), "pods", [])
    cm = kube.get("ConfigMap", ns, n.TABLE_CONFIGMAP)
    lane_table = d.parse_lane_table(((cm or {}).get("data") or {}).get(n.TABLE_KEY)) if cm else None
    if output != "tree":
        uids = {d.meta(x).get("uid") for x in (base, gray) if x}
        sets = [rs for rs in replicasets if any(_owned_by(rs, u) for u in uids)]
        set_uids = {d.meta(rs).get("uid") for rs in sets}
        return render({"release": gr, "stable": base, "canary": gray, "replicaSets": sets,
                       "pods": [p for p in pods if any(_owned_by(p, u) for u in set_uids)],
                       "laneTable": lane_table}, output)
    tree = release_tree(gr, base, gray, replicasets, pods, lane_table)
    if denied:
        tree += (f"\n(not allowed to read {', '.join(sorted(set(denied)))} in namespace {ns}: the tree is partial; "
                 "kubectl's view role grants it)")
    return tree


def watch_get(kube: Kube, ns: str, name: str, timeout: float | None, interval: float,
              emit: Callable[[str], None]) -> int:
    """`get NAME --watch`: the tree again whenever it changes, until Ctrl-C or --timeout (exit 0)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    clear = sys.stdout.isatty()
    while True:
        tree = cmd_get(kube, ns, name)
        if tree != last:
            emit(("\033[H\033[2J" if clear else ("" if last is None else "\n")) + tree)
            last = tree
        if deadline is not None and time.monotonic() >= deadline:
            return OK
        time.sleep(interval)


def cmd_approve(kube: Kube, ns: str, name: str) -> str:
    gr = _get_release(kube, ns, name)
    st = gr.get("status") or {}
    phase = st.get("phase") or "Unknown"
    if phase != "Paused":
        raise CliError(f'error: grayrelease "{name}" is {phase}, not Paused; nothing to approve'
                       + (f" ({st.get('message')})" if st.get("message") else ""))
    value = f"{st.get('canaryRevision')}/{st.get('currentStep', 0)}"
    kube.patch("GrayRelease", ns, name, {"metadata": {"annotations": {n.APPROVE_ANN: value}}})
    return f"grayrelease.graybaggage.io/{name} approved (step {st.get('stepLabel')}, canary {st.get('canaryRevision')})"


def cmd_rollback(kube: Kube, ns: str, name: str) -> str:
    gr = _get_release(kube, ns, name)
    st = gr.get("status") or {}
    phase = st.get("phase") or "Unknown"
    if phase not in ("Progressing", "Paused") or not st.get("canaryRevision"):
        raise CliError(f'error: grayrelease "{name}" is {phase}; only a release in progress '
                       f'(Progressing or Paused) can be rolled back')
    kube.patch("GrayRelease", ns, name, {"metadata": {"annotations": {n.ROLLBACK_ANN: st["canaryRevision"]}}})
    return f"grayrelease.graybaggage.io/{name} rolling back (canary {st['canaryRevision']})"


def cmd_lanes(kube: Kube, ns: str | None, output: str = "table") -> str:
    lanes = sorted(kube.list("Lane", ns), key=lambda o: (d.meta(o).get("namespace"), d.meta(o)["name"]))
    namespaces = [ns] if ns is not None else sorted({d.meta(o).get("namespace") for o in lanes})
    tables = {}
    for space in namespaces:
        cm = kube.get("ConfigMap", space, n.TABLE_CONFIGMAP)
        tables[space] = d.parse_lane_table(((cm or {}).get("data") or {}).get(n.TABLE_KEY)) or {}
    if output != "table":
        return render({"lanes": lanes, "laneTables": tables}, output)
    if not lanes and not any((t.get("lanes") for t in tables.values())):
        return f"No lanes found in {ns + ' namespace' if ns else 'any namespace'}."
    rows = []
    for lane in lanes:
        spec, st = lane.get("spec") or {}, lane.get("status") or {}
        members = ", ".join(f"{m.get('workload')}({m.get('phase') or '?'})" for m in st.get("members") or []) or "-"
        published = (tables.get(d.meta(lane).get("namespace")) or {}).get("lanes") or {}
        routes = (published.get(spec.get("tag")) or {}).get("routes") or {}
        row = [d.meta(lane)["name"], spec.get("tag"), spec.get("header"), spec.get("fallback"), members,
               ", ".join(f"{k}->{v}" for k, v in sorted(routes.items())) or "-"]
        if ns is None:
            row.insert(0, d.meta(lane).get("namespace"))
        rows.append(row)
    headers = ["NAME", "TAG", "HEADER", "FALLBACK", "MEMBERS", "ROUTES (lane table)"]
    if ns is None:
        headers.insert(0, "NAMESPACE")
    out = table(rows, headers)
    for space in namespaces:
        out += (f"\n\nlane table: {'' if ns else space + '/'}configmap/{n.TABLE_CONFIGMAP} "
                f"revision {tables[space].get('revision', '-')}")
    return out


def cmd_version(kubeconfig: str | None, context: str | None, client_only: bool) -> str:
    lines = [f"kubectl-graybaggage {__version__}"]
    if client_only:
        return lines[0]
    try:
        kube = Kube(api_client_from(kubeconfig, context), timeout=5)
        dep = kube.get("Deployment", "graybaggage-system", "graybaggage-controller")
        if dep is None:
            lines.append("controller: not installed (no deployment graybaggage-system/graybaggage-controller)")
        else:
            images = [c.get("image") for c in dep["spec"]["template"]["spec"].get("containers") or []]
            lines.append(f"controller: {', '.join(images)} ({(dep.get('status') or {}).get('readyReplicas') or 0}"
                         f"/{dep['spec'].get('replicas')} ready)")
    except Exception as exc:  # noqa: BLE001 - version must answer even without a cluster
        why = _api_error(exc) if isinstance(exc, KubeError) else _connection_error(exc, _server_of_config(kubeconfig, context))
        lines.append(f"controller: unknown ({why[len('error: '):]})")
    return "\n".join(lines)


COMPLETION_BASH = """# kubectl-graybaggage bash completion: source <(kubectl-graybaggage completion bash)
_kubectl_graybaggage() {
  local cur=${COMP_WORDS[COMP_CWORD]} cmds="status get approve promote rollback abort lanes version completion"
  if [ "$COMP_CWORD" -eq 1 ]; then COMPREPLY=($(compgen -W "$cmds" -- "$cur")); return; fi
  case "${COMP_WORDS[1]}" in
    status|get|approve|promote|rollback|abort)
      COMPREPLY=($(compgen -W "$(kubectl get grayreleases -o name 2>/dev/null | sed 's|.*/||')" -- "$cur"));;
  esac
}
complete -F _kubectl_graybaggage kubectl-graybaggage
"""


# ---------------------------------------------------------------------------------------------- errors

def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _connection_error(exc: BaseException, server: str) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = _one_line(reason)
    for pattern, says in ((r"Connection refused", "connection refused"), (r"timed out", "timed out"),
                          (r"Name or service not known|nodename nor servname|getaddrinfo", "unknown host"),
                          (r"CERTIFICATE_VERIFY_FAILED|SSLError|certificate", "TLS error: " + text)):
        if re.search(pattern, text):
            text = says
            break
    return f"error: cannot reach the API server at {server}: {text}"


def _api_error(e: KubeError) -> str:
    if e.status == 404 and "could not find the requested resource" in str(e):
        return "error: the graybaggage CRDs are not installed (kubectl apply -f controller/deploy/crds/)"
    if e.status in (401, 403):
        return f"error: the API server refused the request (HTTP {e.status}): {_one_line(e.body.get('message') if isinstance(e.body, dict) else e)}"
    return f"error: {_one_line(e)}"


# ---------------------------------------------------------------------------------------------- main

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubectl-graybaggage", description="graybaggage gray releases and lanes",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, help: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, aliases=list(aliases), epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def watching(s: argparse.ArgumentParser, until: str) -> None:
        s.add_argument("-w", "--watch", action="store_true", help=until)
        s.add_argument("--timeout", type=duration, default=None, help="with --watch: give up after this long (90s, 5m)")
        s.add_argument("--interval", type=duration, default=1.0, help=argparse.SUPPRESS)

    s = command("status", "show GrayReleases (one in detail with NAME)")
    s.add_argument("name", nargs="?")
    s.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    watching(s, "with NAME: follow it until Healthy (exit 0), Failed or rolled back (exit 1)")
    s = command("get", "a release as a tree: stable and canary Deployments, ReplicaSets, pods, lane table")
    s.add_argument("name")
    s.add_argument("-o", "--output", choices=("tree", "json", "yaml"), default="tree")
    watching(s, "redraw when anything changes, until Ctrl-C or --timeout")
    s = command("approve", "approve the current pause step (the last step promotes)", ["promote"])
    s.add_argument("name")
    s = command("rollback", "roll back a release in progress (remove the gray replicas)", ["abort"])
    s.add_argument("name")
    s = command("lanes", "show Lanes, members and the lane table")
    s.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    s = command("version", "the plugin's version and, if reachable, the controller's")
    s.add_argument("--client", action="store_true", help="the plugin only; do not contact the cluster")
    s = command("completion", "print a shell completion script")
    s.add_argument("shell", choices=("bash",))
    for sp in {id(x): x for x in sub.choices.values()}.values():  # (an alias shares its command's parser)
        sp.add_argument("-n", "--namespace", default=argparse.SUPPRESS)
        sp.add_argument("-A", "--all-namespaces", action="store_true", default=argparse.SUPPRESS)
        sp.add_argument("--kubeconfig", default=argparse.SUPPRESS)
        sp.add_argument("--context", default=argparse.SUPPRESS)
    return p


ALIASES = {"promote": "approve", "abort": "rollback"}


def _run(args: argparse.Namespace, emit: Callable[[str], None]) -> int:
    cmd = ALIASES.get(args.cmd, args.cmd)
    if cmd == "version":
        emit(cmd_version(args.kubeconfig, args.context, args.client))
        return OK
    if cmd == "completion":
        emit(COMPLETION_BASH.rstrip())
        return OK
    name = release_name(args.name) if getattr(args, "name", None) else None
    if args.all_namespaces and (name or cmd in ("approve", "rollback", "get")):
        raise CliError(f"error: -A (all namespaces) cannot be used with a NAME ({cmd}); use -n NAMESPACE", USAGE)
    if getattr(args, "watch", False) and cmd == "status" and not name:
        raise CliError("error: status --watch follows one release: give its NAME", USAGE)
    if getattr(args, "timeout", None) is not None and not getattr(args, "watch", False):
        raise CliError("error: --timeout only applies with --watch", USAGE)
    kube = Kube(api_client_from(args.kubeconfig, args.context))
    ns = args.namespace or _default_namespace(args.kubeconfig, args.context)
    if cmd == "status":
        if args.watch:
            return watch_status(kube, ns, name, args.timeout, args.interval, emit)
        emit(cmd_status(kube, None if args.all_namespaces else ns, name, args.output))
    elif cmd == "get":
        if args.watch:
            return watch_get(kube, ns, name, args.timeout, args.interval, emit)
        emit(cmd_get(kube, ns, name, args.output))
    elif cmd == "approve":
        emit(cmd_approve(kube, ns, name))
    elif cmd == "rollback":
        emit(cmd_rollback(kube, ns, name))
    else:
        emit(cmd_lanes(kube, None if args.all_namespaces else ns, args.output))
    return OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def emit(text: str) -> None:
        print(text, flush=True)

    try:
        return _run(args, emit)
    except CliError as e:
        print(str(e), file=sys.stderr)
        return e.code
    except KubeError as e:
        print(_api_error(e), file=sys.stderr)
        return API
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except Exception as e:  # noqa: BLE001 - one line for the operator, never a traceback
        kind = type(e).__name__
        if kind == "ConfigException":
            print(f"error: no usable Kubernetes configuration ({_one_line(e)}); set KUBECONFIG, pass --kubeconfig, "
                  "or run in a pod", file=sys.stderr)
            return API
        if isinstance(e, OSError) or kind in ("MaxRetryError", "NewConnectionError", "ProtocolError", "SSLError",
                                              "ReadTimeoutError", "ConnectTimeoutError"):
            print(_connection_error(e, _server_of(args)), file=sys.stderr)
            return API
        print(f"error: {kind}: {_one_line(e)}", file=sys.stderr)
        return API


def _server_of(args: argparse.Namespace) -> str:
    return _server_of_config(args.kubeconfig, args.context)


def _server_of_config(kubeconfig: str | None, context: str | None) -> str:
    try:
        from kubernetes import config
        from kubernetes.client import Configuration
        c = Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=c)
        return c.host
    except Exception:  # noqa: BLE001
        return "(from the kubeconfig)"


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
