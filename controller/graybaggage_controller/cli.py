"""`kubectl-graybaggage`: the operator's kubectl plugin.

    kubectl graybaggage status [NAME] [-n NS] [-A]   GrayReleases as a table (or one in detail)
    kubectl graybaggage approve NAME [-n NS]         approve the current pause step (last step: promote)
    kubectl graybaggage rollback NAME [-n NS]        roll back: remove the gray replicas, keep the base stable
    kubectl graybaggage lanes [-n NS]                Lanes, their members and the published lane table

approve/rollback only write an annotation on the GrayRelease (graybaggage.io/approve = "<canary>/<step>",
graybaggage.io/rollback = "<canary>"); the controller acts on it. Exit codes: 0 ok, 1 wrong phase or
state, 2 usage, 3 not found, 4 API error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from . import desired as d
from . import names as n
from .kube import Kube, KubeError, api_client_from


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


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


def _get_release(kube: Kube, ns: str, name: str) -> dict:
    gr = kube.get("GrayRelease", ns, name)
    if gr is None:
        raise CliError(f'error: grayrelease "{name}" not found in namespace "{ns}"', 3)
    return gr


def cmd_status(kube: Kube, ns: str | None, name: str | None) -> str:
    if name:
        gr = _get_release(kube, ns or "default", name)
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
    items = kube.list("GrayRelease", ns)
    if not items:
        return f"No grayreleases found in {ns + ' namespace' if ns else 'any namespace'}."
    rows = []
    for gr in sorted(items, key=lambda o: (d.meta(o).get("namespace"), d.meta(o)["name"])):
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
    return table(rows, headers)


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


def cmd_lanes(kube: Kube, ns: str) -> str:
    lanes = kube.list("Lane", ns)
    cm = kube.get("ConfigMap", ns, n.TABLE_CONFIGMAP)
    tbl = d.parse_lane_table(((cm or {}).get("data") or {}).get(n.TABLE_KEY)) or {}
    published = tbl.get("lanes") or {}
    if not lanes and not published:
        return f"No lanes found in {ns} namespace."
    rows = []
    for lane in sorted(lanes, key=lambda o: d.meta(o)["name"]):
        spec, st = lane.get("spec") or {}, lane.get("status") or {}
        members = ", ".join(f"{m.get('workload')}({m.get('phase') or '?'})" for m in st.get("members") or []) or "-"
        routes = (published.get(spec.get("tag")) or {}).get("routes") or {}
        rows.append([d.meta(lane)["name"], spec.get("tag"), spec.get("header"), spec.get("fallback"), members,
                     ", ".join(f"{k}->{v}" for k, v in sorted(routes.items())) or "-"])
    out = table(rows, ["NAME", "TAG", "HEADER", "FALLBACK", "MEMBERS", "ROUTES (lane table)"])
    out += f"\n\nlane table: configmap/{n.TABLE_CONFIGMAP} revision {tbl.get('revision', '-')}"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubectl-graybaggage", description="graybaggage gray releases and lanes")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status", help="show GrayReleases")
    s.add_argument("name", nargs="?")
    s = sub.add_parser("approve", help="approve the current pause step")
    s.add_argument("name")
    s = sub.add_parser("rollback", help="roll back a release in progress")
    s.add_argument("name")
    sub.add_parser("lanes", help="show Lanes, members and the lane table")
    for sp in sub.choices.values():
        sp.add_argument("-n", "--namespace", default=argparse.SUPPRESS)
        sp.add_argument("-A", "--all-namespaces", action="store_true", default=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        kube = Kube(api_client_from(args.kubeconfig, args.context))
        ns = args.namespace or _default_namespace(args.kubeconfig, args.context)
        if args.cmd == "status":
            out = cmd_status(kube, None if args.all_namespaces and not args.name else ns, args.name)
        elif args.cmd == "approve":
            out = cmd_approve(kube, ns, args.name)
        elif args.cmd == "rollback":
            out = cmd_rollback(kube, ns, args.name)
        else:
            out = cmd_lanes(kube, ns)
    except CliError as e:
        print(str(e), file=sys.stderr)
        return e.code
    except KubeError as e:
        if e.status == 404 and "could not find the requested resource" in str(e):
            print("error: the graybaggage CRDs are not installed (kubectl apply -f controller/deploy/crds/)",
                  file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 4
    print(out)
    return 0


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
