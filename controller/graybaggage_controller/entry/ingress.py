"""What the Ingress providers (Higress, ingress-nginx) share: the canary Ingress and the stable annotations.

A canary Ingress `<ingress>-<tag>` repeats the host/paths of the user's Ingress that go to the entry
Service, with the backend switched to `<svc>-<tag>` (or the base Service while it has no gray instance),
and carries the class's canary annotations. It is labelled `app.kubernetes.io/managed-by: graybaggage`,
`graybaggage.io/entry-of: <ingress>`, `graybaggage.io/lane: <tag>`, `graybaggage.io/entry-class: <class>`
and deleted when the lane has no active entry. An annotation graybaggage adds to the user's Ingress is
recorded (with the value it replaced) in `graybaggage.io/entry-routing` and put back exactly.

A canary Ingress expresses ONE condition (a header, or a cookie whose value is `always`) or a weight; when
both are given the match wins (as in Kruise and in both controllers). Anything else is reported, not guessed.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any, Mapping

from .. import names as n
from ..kube import Conflict, NotFound, retry_on_conflict
from . import base
from .base import Intent, Outcome, condition, failed, inactive

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CLASS_LABEL = "graybaggage.io/entry-class"


# ---------------------------------------------------------------------------------------------- pure

def canary_name(ingress: str, tag: str) -> str:
    return f"{ingress}-{tag}"[:253]


def canary_condition(it: Intent, prefix: str) -> tuple[Obj, str | None]:
    """The canary annotations for the intent's match or weight (keys under `prefix`), or a problem."""
    if it.matches:
        if len(it.matches) != 1:
            return {}, f"{len(it.matches)} matches (a canary Ingress expresses one)"
        m = it.matches[0]
        headers, cookie, query = m.get("headers") or [], m.get("cookie"), m.get("queryParams") or []
        if query:
            return {}, "queryParams (canary Ingresses match headers, a cookie or a weight only)"
        if len(headers) + (1 if cookie else 0) != 1:
            return {}, "more than one condition in a match (a canary Ingress expresses one header or one cookie)"
        if cookie:
            if str(cookie.get("value")) != "always":
                return {}, (f"cookie {cookie.get('name')}={cookie.get('value')} (canary-by-cookie routes only on "
                            "the value 'always')")
            return {prefix + "canary-by-cookie": cookie["name"]}, None
        h = headers[0]
        ann = {prefix + "canary-by-header": h["name"].lower()}
        htype, value = h.get("type") or "Exact", str(h.get("value", ""))
        if htype == "Exact":
            ann[prefix + "canary-by-header-value"] = value
        elif htype == "Prefix":
            ann[prefix + "canary-by-header-pattern"] = base.prefix_regex(value)
        else:
            ann[prefix + "canary-by-header-pattern"] = value
        return ann, None
    return {prefix + "canary-weight": str(max(0, min(100, int(it.weight or 0))))}, None


def canary_ingress(stable: Mapping[str, Any], it: Intent, annotations: Mapping[str, str],
                   class_type: str) -> Obj | None:
    """The canary Ingress for `it`, or None when no path of `stable` goes to the entry Service."""
    sspec = stable.get("spec") or {}
    rules = []
    for r in sspec.get("rules") or []:
        paths = []
        for p in (r.get("http") or {}).get("paths") or []:
            svc = ((p.get("backend") or {}).get("service") or {})
            if svc.get("name") == it.service:
                q = copy.deepcopy(p)
                q["backend"]["service"]["name"] = it.backend
                paths.append(q)
        if paths:
            rule = {k: copy.deepcopy(v) for k, v in r.items() if k != "http"}
            rule["http"] = {"paths": paths}
            rules.append(rule)
    if not rules:
        return None
    meta = stable.get("metadata") or {}
    ann = dict(annotations)
    legacy = (meta.get("annotations") or {}).get("kubernetes.io/ingress.class")
    if legacy:
        ann["kubernetes.io/ingress.class"] = legacy
    spec: Obj = {"rules": rules}
    if sspec.get("ingressClassName"):
        spec["ingressClassName"] = sspec["ingressClassName"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": canary_name(meta["name"], it.tag),
            "namespace": meta.get("namespace"),
            "labels": {n.MANAGED_BY_LABEL: n.MANAGED_BY, n.LANE_LABEL: it.tag,
                       n.ENTRY_OF_LABEL: meta["name"], CLASS_LABEL: class_type},
            "annotations": ann,
        },
        "spec": spec,
    }


def strip_stable(ing: Mapping[str, Any]) -> Obj:
    """The user's Ingress without the annotations graybaggage added (values it replaced put back)."""
    out = copy.deepcopy(dict(ing))
    meta = out.setdefault("metadata", {})
    ann = meta.get("annotations") or {}
    text = ann.pop(n.ENTRY_ROUTING_ANN, None)
    if text is None:
        return out
    try:
        rec = json.loads(text)
    except ValueError:
        rec = {}
    for key, item in ((rec or {}).get("annotations") or {}).items():
        if ann.get(key) == item.get("value"):
            if item.get("original") is None:
                ann.pop(key, None)
            else:
                ann[key] = item["original"]
    if not ann:
        meta.pop("annotations", None)
    return out


def program_stable(clean: Mapping[str, Any], key: str, items: list[str]) -> Obj:
    """`clean` with the comma-list annotation `key` extended by `items` (recorded for strip_stable)."""
    out = copy.deepcopy(dict(clean))
    if not items:
        return out
    ann = out.setdefault("metadata", {}).setdefault("annotations", {})
    original = ann.get(key)
    have = [x.strip() for x in (original or "").split(",") if x.strip()]
    add = [x for x in items if x.lower() not in {h.lower() for h in have}]
    if not add:
        if not ann:
            out["metadata"].pop("annotations", None)
        return out
    value = ",".join(have + add)
    ann[key] = value
    ann[n.ENTRY_ROUTING_ANN] = json.dumps({"annotations": {key: {"original": original, "value": value}}},
                                          sort_keys=True, separators=(",", ":"))
    return out


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    am, bm = a.get("metadata") or {}, b.get("metadata") or {}
    return (a.get("spec") == b.get("spec") and (am.get("annotations") or {}) == (bm.get("annotations") or {})
            and (am.get("labels") or {}) == (bm.get("labels") or {}))


# ---------------------------------------------------------------------------------------------- I/O

class IngressProvider(base.Provider):
    class_type = ""
    prefix = ""
    #: annotation on the stable Ingress listing headers to strip (None: the class cannot strip per route)
    remove_key: str | None = None

    def canary_annotations(self, it: Intent) -> tuple[Obj, str | None]:
        ann, problem = canary_condition(it, self.prefix)
        if problem:
            return {}, problem
        return {self.prefix + "canary": "true", **ann}, None

    def programmed(self, it: Intent, stable: str, canary: str) -> list[Obj]:
        what = "matching requests" if it.matches else f"{it.weight}% of requests"
        return [condition(n.ENTRY_ROUTED, True, "Programmed",
                          f"Ingress {canary} ({self.class_type} canary of {stable}): {what} go to {it.backend}")]

    def ensure(self, intents: list[Intent]) -> dict[str, Outcome]:
        ns = self.namespace
        existing = {i["metadata"]["name"]: i for i in base.list_(self.kube, "Ingress", ns) or []}
        mine = {k: v for k, v in existing.items()
                if (v["metadata"].get("labels") or {}).get(CLASS_LABEL) == self.class_type
                and (v["metadata"].get("labels") or {}).get(n.MANAGED_BY_LABEL) == n.MANAGED_BY}
        outcomes: dict[str, Outcome] = {}
        canaries: dict[str, Obj] = {}
        strip_names: dict[str, list[str]] = {}
        cls = {"higress": "Higress", "nginx": "ingress-nginx"}.get(self.class_type, self.class_type)
        for it in sorted(intents, key=lambda x: x.tag):
            stable = existing.get(it.route)
            if stable is None or it.route in mine:
                outcomes[it.tag] = failed("RouteNotFound", f"Ingress {it.route} not found in namespace {ns}; "
                                          "nothing was changed")
                continue
            ann, problem = self.canary_annotations(it)
            if problem:
                outcomes[it.tag] = failed("UnsupportedMatch", f"{cls} Ingress entry cannot express {problem}; "
                                          "nothing was changed. Use route.httpRoute, or dye rules at a Python edge "
                                          "(docs/dye-rules.md)")
                continue
            canary = canary_ingress(stable, it, ann, self.class_type)
            if canary is None:
                outcomes[it.tag] = failed("ServiceNotInRoute", f"Ingress {it.route} has no path to Service "
                                          f"{it.service}; nothing was changed")
                continue
            cname = canary["metadata"]["name"]
            if cname in existing and cname not in mine:
                outcomes[it.tag] = failed("NameTaken", f"Ingress {cname} exists and is not graybaggage's; "
                                          "nothing was changed")
                continue
            if not it.active:
                outcomes[it.tag] = inactive(it.tag, f"Ingress {it.route}")
                continue
            canaries[cname] = canary
            if self.remove_key:
                want = strip_names.setdefault(it.route, [])
                want += [h for h in it.remove_names if h.lower() not in {x.lower() for x in want}]
            outcomes[it.tag] = Outcome(True, self.programmed(it, it.route, cname),
                                       {"route": f"Ingress/{it.route}", "canary": f"Ingress/{cname}",
                                        "backend": it.backend})
        # 1) strip forged lane headers on the stable Ingresses first (Higress), 2) canaries, 3) clean-up
        if self.remove_key:
            for name, obj in existing.items():
                if name in mine:
                    continue
                recorded = n.ENTRY_ROUTING_ANN in (obj["metadata"].get("annotations") or {})
                if name in strip_names or recorded:
                    self._write_stable(name, strip_names.get(name, []))
        for cname, obj in canaries.items():
            self._write_canary(cname, obj, mine.get(cname))
        for cname in mine:
            if cname not in canaries:
                log.info("%s: delete canary Ingress %s", ns, cname)
                self.kube.delete("Ingress", ns, cname)
        return outcomes

    def _write_canary(self, name: str, want: Obj, current: Obj | None) -> None:
        ns = self.namespace
        if current is None:
            try:
                self.kube.create("Ingress", ns, want)
                log.info("%s: created canary Ingress %s", ns, name)
            except Conflict:
                pass
            return
        if _same(current, want):
            return
        body = copy.deepcopy(want)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            self.kube.replace("Ingress", ns, name, body)
        except (NotFound, Conflict):    # next pass retries
            pass

    def _write_stable(self, name: str, items: list[str]) -> None:
        ns = self.namespace

        def attempt() -> None:
            current = base.get(self.kube, "Ingress", ns, name)
            if current is None:
                return
            want = program_stable(strip_stable(current), self.remove_key, items)
            if _same(current, want):
                return
            self.kube.replace("Ingress", ns, name, want)
            log.info("%s: Ingress %s %s", ns, name, "annotated" if items else "restored")
        try:
            retry_on_conflict(attempt, attempts=8)
        except Conflict as e:
            raise RuntimeError(f"Ingress {ns}/{name}: too many conflicts") from e
