"""Entry routing on a Gateway API HTTPRoute (the default provider).

For a lane with an active entry, on the user's HTTPRoute:
- every "stable" rule (a rule with a backendRef to the entry Service) gets a RequestHeaderModifier
  `remove: [<lane header>, baggage]` (merged into the rule's own RequestHeaderModifier if it has one), so
  nobody outside can step into a lane (a W3C baggage member `<header>=<tag>` is a lane tag too);
- right before each stable rule, a lane rule named `graybaggage-<tag>-<i>`:
  - with matches: the stable rule's matches AND each entry match (headers as given, queryParams, a cookie
    as a RegularExpression on `Cookie`), the stable rule's filters plus RequestHeaderModifier `set`
    (default `<header>: <tag>`), backendRef `<svc>-<tag>` (or the base Service while the entry service
    has no gray instance: the request still carries the lane for later hops);
  - with only a weight: the stable rule's matches, two weighted backendRefs (base: `remove` the header and baggage;
    lane: `set` it). Per-backend filters are the Extended feature HTTPRouteBackendRequestHeaderModification:
    it is used only when every parent Gateway's GatewayClass lists it in `status.supportedFeatures`;
    otherwise the route is left alone and the Lane says why (condition EntryRouted=False).
  Gateway API prefers the rule with more header/query matches, and the first rule on a tie, so the lane
  rule wins for its traffic either way.
- the annotation `graybaggage.io/entry-routing` records the rule names added and the remove filters
  added (by stable-rule index and mode), so `strip` undoes exactly that and nothing else.

`strip` and `program` are pure; `GatewayAPIProvider` reads, computes, and writes with resourceVersion
(conflict retry). Everything is recomputed from the stripped route on each pass, so it is idempotent.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any, Iterable, Mapping

from .. import desired as d
from .. import names as n
from ..kube import Conflict, KubeError, retry_on_conflict
from . import base
from .base import Intent, Outcome, condition, failed, inactive

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RHM = "RequestHeaderModifier"
FEATURE = "HTTPRouteBackendRequestHeaderModification"
MAX_RULES = 16
MAX_MATCHES = 128


# ---------------------------------------------------------------------------------------------- pure

def rule_name(tag: str, index: int) -> str:
    return f"{n.ENTRY_RULE_PREFIX}{tag}-{index}"


def _record(route: Mapping[str, Any]) -> Obj | None:
    return d.parse_lane_table(((route.get("metadata") or {}).get("annotations") or {}).get(n.ENTRY_ROUTING_ANN))


def _refs_service(ref: Mapping[str, Any], service: str, namespace: str | None) -> bool:
    return ((ref.get("group") or "") == "" and (ref.get("kind") or "Service") == "Service"
            and ref.get("name") == service and ref.get("namespace") in (None, namespace))


def _remove_filter(headers: list[str]) -> Obj:
    return {"type": RHM, "requestHeaderModifier": {"remove": list(headers)}}


def strip(route: Mapping[str, Any]) -> Obj:
    """The route without anything graybaggage added (as recorded in its annotation)."""
    out = copy.deepcopy(dict(route))
    rec = _record(out)
    meta = out.setdefault("metadata", {})
    ann = meta.get("annotations") or {}
    if n.ENTRY_ROUTING_ANN not in ann:
        return out
    ann.pop(n.ENTRY_ROUTING_ANN)
    if not ann:
        meta.pop("annotations", None)
    rec = rec or {}
    spec = out.setdefault("spec", {})
    ours = set(rec.get("rules") or [])
    rules = [r for r in spec.get("rules") or [] if r.get("name") not in ours]
    for item in rec.get("removes") or []:
        i, mode, headers = item.get("rule"), item.get("mode"), list(item.get("headers") or [])
        if not isinstance(i, int) or not 0 <= i < len(rules):
            continue
        rule = rules[i]
        filters = rule.get("filters") or []
        if mode in ("filter", "filters"):
            target = _remove_filter(headers)
            for k in range(len(filters) - 1, -1, -1):
                if filters[k] == target:
                    del filters[k]
                    break
            if mode == "filters" and not filters:
                rule.pop("filters", None)
        elif mode in ("item", "key"):
            for f in filters:
                if f.get("type") == RHM:
                    rhm = f.setdefault("requestHeaderModifier", {})
                    rest = [h for h in rhm.get("remove") or [] if h not in headers]
                    if mode == "key" and not rest:
                        rhm.pop("remove", None)
                    else:
                        rhm["remove"] = rest
                    break
    if "rules" in spec or rules:
        spec["rules"] = rules
    return out


def _add_remove(rule: Obj, headers: list[str]) -> Obj | None:
    """Add `remove: headers` to a rule; the record of what was added (None: nothing to add)."""
    filters = rule.get("filters")
    rhm_f = next((f for f in filters or [] if f.get("type") == RHM), None)
    if rhm_f is None:
        mode = "filter" if "filters" in rule else "filters"
        rule.setdefault("filters", []).append(_remove_filter(headers))
        return {"mode": mode, "headers": list(headers)}
    rhm = rhm_f.setdefault("requestHeaderModifier", {})
    taken = {h.lower() for h in rhm.get("remove") or []}
    taken |= {h.get("name", "").lower() for key in ("set", "add") for h in rhm.get(key) or []}
    add = [h for h in headers if h.lower() not in taken]
    if not add:
        return None
    mode = "item" if "remove" in rhm else "key"
    rhm["remove"] = list(rhm.get("remove") or []) + add
    return {"mode": mode, "headers": add}


def _with_set(filters: list[Obj], set_headers: list[Obj]) -> list[Obj]:
    """`filters` with a RequestHeaderModifier that sets `set_headers` (merged into an existing one)."""
    out = copy.deepcopy(filters)
    names = {h["name"].lower() for h in set_headers}
    rhm_f = next((f for f in out if f.get("type") == RHM), None)
    if rhm_f is None:
        out.append({"type": RHM, "requestHeaderModifier": {"set": copy.deepcopy(set_headers)}})
        return out
    rhm = rhm_f.setdefault("requestHeaderModifier", {})
    for key in ("set", "add"):
        keep = [h for h in rhm.get(key) or [] if h.get("name", "").lower() not in names]
        if keep:
            rhm[key] = keep
        else:
            rhm.pop(key, None)
    keep_rm = [h for h in rhm.get("remove") or [] if h.lower() not in names]
    if keep_rm:
        rhm["remove"] = keep_rm
    else:
        rhm.pop("remove", None)
    rhm["set"] = list(rhm.get("set") or []) + copy.deepcopy(set_headers)
    return out


def _without_names(filters: list[Obj], names: set[str]) -> list[Obj]:
    """`filters` minus any RequestHeaderModifier action on `names` (empty modifiers dropped)."""
    out = []
    for f in copy.deepcopy(filters):
        if f.get("type") == RHM:
            rhm = f.get("requestHeaderModifier") or {}
            for key in ("set", "add"):
                if key in rhm:
                    rhm[key] = [h for h in rhm[key] if h.get("name", "").lower() not in names] or None
            if "remove" in rhm:
                rhm["remove"] = [h for h in rhm["remove"] if h.lower() not in names] or None
            rhm = {k: v for k, v in rhm.items() if v}
            if not rhm:
                continue
            f["requestHeaderModifier"] = rhm
        out.append(f)
    return out


def cookie_regex(name: str, value: str) -> str:
    """A RegularExpression on the Cookie header matching cookie `name=value` (RE2 / PCRE compatible)."""
    return r"(^|;\s*)" + base.re_escape(name) + "=" + base.re_escape(value) + r"(;|$)"


def _match(h: Mapping[str, Any]) -> Obj:
    """An entry header/query condition as a Gateway API match (which has no Prefix type: anchored regex)."""
    htype, value = h.get("type") or "Exact", str(h.get("value", ""))
    if htype == "Prefix":
        htype, value = "RegularExpression", base.prefix_regex(value)
    return {"type": htype, "name": h["name"], "value": value}


def _merge_match(base_match: Mapping[str, Any], um: Mapping[str, Any]) -> Obj:
    m = copy.deepcopy(dict(base_match))
    add = [_match(h) for h in um.get("headers") or []]
    if um.get("cookie"):
        c = um["cookie"]
        add.append({"type": "RegularExpression", "name": "Cookie",
                    "value": cookie_regex(c["name"], str(c.get("value", "")))})
    if add:
        names = {h["name"].lower() for h in add}
        m["headers"] = [h for h in m.get("headers") or [] if h.get("name", "").lower() not in names] + add
    qadd = [_match(q) for q in um.get("queryParams") or []]
    if qadd:
        names = {q["name"] for q in qadd}
        m["queryParams"] = [q for q in m.get("queryParams") or [] if q.get("name") not in names] + qadd
    return m


def lane_rule(stable: Mapping[str, Any], index: int, it: Intent, namespace: str | None) -> Obj:
    """The rule graybaggage adds before stable rule `index` for intent `it`."""
    ref = copy.deepcopy(next(b for b in stable.get("backendRefs") or [] if _refs_service(b, it.service, namespace)))
    set_headers = [dict(h) for h in it.set_headers]
    names = {h["name"].lower() for h in set_headers}
    filters = list(stable.get("filters") or [])
    rule: Obj = {"name": rule_name(it.tag, index)}
    if it.matches:
        base_matches = stable.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]
        rule["matches"] = [_merge_match(bm, um) for bm in base_matches for um in it.matches]
        rule["filters"] = _with_set(filters, set_headers)
        lane_ref = copy.deepcopy(ref)
        lane_ref["name"] = it.backend
        lane_ref.pop("namespace", None)
        rule["backendRefs"] = [lane_ref]
    else:
        if "matches" in stable:
            rule["matches"] = copy.deepcopy(stable["matches"])
        rest = _without_names(filters, names)
        if rest:
            rule["filters"] = rest
        w = max(0, min(100, int(it.weight or 0)))
        base_ref = copy.deepcopy(ref)
        base_ref["weight"] = 100 - w
        base_ref["filters"] = _without_names(base_ref.get("filters") or [], names) + \
            [_remove_filter(it.remove_names)]
        lane_ref = copy.deepcopy(ref)
        lane_ref.pop("namespace", None)
        lane_ref["name"] = it.backend
        lane_ref["weight"] = w
        lane_ref["filters"] = _with_set(lane_ref.get("filters") or [], set_headers)
        rule["backendRefs"] = [base_ref, lane_ref]
    if stable.get("timeouts"):
        rule["timeouts"] = copy.deepcopy(stable["timeouts"])
    return rule


def program(clean: Mapping[str, Any], intents: Iterable[Intent],
            backend_filters: Mapping[str, bool | str]) -> tuple[Obj, dict[str, Outcome]]:
    """The route with the lane rules of `intents` (active ones) added to `clean` (a stripped route).

    `backend_filters[tag]` is True when the parent GatewayClasses support per-backend header filters, or a
    message saying why not (only looked at for weight-only intents)."""
    route = copy.deepcopy(dict(clean))
    ns = (route.get("metadata") or {}).get("namespace")
    name = (route.get("metadata") or {}).get("name")
    rules = (route.setdefault("spec", {})).get("rules") or []
    inserts: dict[int, list[Obj]] = {}
    removes: dict[int, list[str]] = {}
    outcomes: dict[str, Outcome] = {}
    added_names: list[str] = []
    for it in sorted(intents, key=lambda x: x.tag):
        stable = [i for i, r in enumerate(rules)
                  if not (r.get("name") or "").startswith(n.ENTRY_RULE_PREFIX)
                  and any(_refs_service(b, it.service, ns) for b in r.get("backendRefs") or [])]
        if not stable:
            outcomes[it.tag] = failed("ServiceNotInRoute", f"HTTPRoute {name} has no rule with a backendRef to "
                                      f"Service {it.service}; the route is unchanged")
            continue
        if not it.active:
            outcomes[it.tag] = inactive(it.tag, f"HTTPRoute {name}")
            continue
        if not it.matches:
            ok = backend_filters.get(it.tag)
            if ok is not True:
                outcomes[it.tag] = failed(
                    "BackendHeaderModificationUnsupported",
                    f"weight {it.weight}% needs {it.header} set on the weighted backend only, i.e. "
                    f"backendRefs[].filters (Extended feature {FEATURE}), which {ok or 'the GatewayClass'} "
                    f"does not list in status.supportedFeatures; HTTPRoute {name} is unchanged. Use matches "
                    "(a header or cookie), or a sticky percentage dye rule at a Python edge (docs/dye-rules.md)")
                continue
        for i in stable:
            inserts.setdefault(i, []).append(lane_rule(rules[i], i, it, ns))
            want = removes.setdefault(i, [])
            want += [h for h in it.remove_names if h.lower() not in {x.lower() for x in want}]
            added_names.append(rule_name(it.tag, i))
        ref = it.backend
        how = ", ".join(h["name"] + ": " + h["value"] for h in it.set_headers) + " set"
        what = "matching requests" if it.matches else f"{it.weight}% of requests"
        outcomes[it.tag] = Outcome(True, [condition(
            n.ENTRY_ROUTED, True, "Programmed",
            f"HTTPRoute {name}: {what} go to {ref} with {how} "
            f"(rules {', '.join(rule_name(it.tag, i) for i in stable)}); "
            f"{', '.join(it.remove_names)} removed on the stable rules")],
            {"route": f"HTTPRoute/{name}", "backend": ref, "rules": [rule_name(it.tag, i) for i in stable]})
    total_rules = len(rules) + sum(len(v) for v in inserts.values())
    total_matches = sum(len(r.get("matches") or [1]) for r in rules) + \
        sum(len(x.get("matches") or [1]) for v in inserts.values() for x in v)
    if inserts and (total_rules > MAX_RULES or total_matches >= MAX_MATCHES):
        for tag, o in list(outcomes.items()):
            if o.detail:
                outcomes[tag] = failed("RouteTooLarge", f"HTTPRoute {name} would have {total_rules} rules / "
                                       f"{total_matches} matches (limits {MAX_RULES} / {MAX_MATCHES - 1}); unchanged")
        return copy.deepcopy(dict(clean)), outcomes
    records = []
    for i in sorted(removes):
        rec = _add_remove(rules[i], removes[i])
        if rec:
            records.append({"rule": i, **rec})
    out_rules: list[Obj] = []
    for i, r in enumerate(rules):
        out_rules.extend(inserts.get(i, []))
        out_rules.append(r)
    if inserts:
        route["spec"]["rules"] = out_rules
        ann = route["metadata"].setdefault("annotations", {})
        ann[n.ENTRY_ROUTING_ANN] = json.dumps({"rules": added_names, "removes": records},
                                              sort_keys=True, separators=(",", ":"))
    return route, outcomes


def supported_features(gateway_class: Mapping[str, Any] | None) -> set[str]:
    """Names in a GatewayClass's status.supportedFeatures (strings before v1.2, {name} objects after)."""
    out = set()
    for f in ((gateway_class or {}).get("status") or {}).get("supportedFeatures") or []:
        out.add(f.get("name") if isinstance(f, dict) else str(f))
    return out


def same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def ann(o: Mapping[str, Any]) -> dict:
        return (o.get("metadata") or {}).get("annotations") or {}
    return a.get("spec") == b.get("spec") and ann(a) == ann(b)


# ---------------------------------------------------------------------------------------------- I/O

class GatewayAPIProvider(base.Provider):
    handles = (base.HTTPROUTE, None)

    def _backend_filters(self, route: Mapping[str, Any]) -> bool | str:
        """True when every parent Gateway's class lists the per-backend header feature, else who does not."""
        parents = [p for p in (route.get("spec") or {}).get("parentRefs") or []
                   if (p.get("kind") or "Gateway") == "Gateway" and (p.get("group") or base.GW_GROUP) == base.GW_GROUP]
        if not parents:
            return "the route's parents (no parent Gateway)"
        for p in parents:
            gw = base.get(self.kube, "Gateway", p.get("namespace") or self.namespace, p["name"])
            if gw is None:
                return f"Gateway {p['name']} (not found)"
            cls_name = (gw.get("spec") or {}).get("gatewayClassName")
            cls = base.get(self.kube, "GatewayClass", None, cls_name) if cls_name else None
            if cls is None:
                return f"GatewayClass {cls_name} (not found)"
            if FEATURE not in supported_features(cls):
                return f"GatewayClass {cls_name}"
        return True

    def ensure(self, intents: list[Intent]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        by_route: dict[str, list[Intent]] = {}
        for it in intents:
            by_route.setdefault(it.route, []).append(it)
        existing = base.list_(self.kube, "HTTPRoute", self.namespace)
        if existing is None:
            for it in intents:
                outcomes[it.tag] = failed("RouteNotFound", f"HTTPRoute {it.route}: the Gateway API "
                                          f"(gateway.networking.k8s.io/v1 HTTPRoute) is not installed")
            return outcomes
        names = {r["metadata"]["name"] for r in existing}
        for name in sorted(by_route):
            if name not in names:
                for it in by_route[name]:
                    outcomes[it.tag] = failed("RouteNotFound", f"HTTPRoute {name} not found in namespace "
                                              f"{self.namespace}; nothing was changed")
                continue
            outcomes.update(self._sync_route(name, by_route[name]))
        for r in existing:   # routes we changed that no entry wants any more
            name = r["metadata"]["name"]
            if name not in by_route and n.ENTRY_ROUTING_ANN in (r["metadata"].get("annotations") or {}):
                self._sync_route(name, [])
        return outcomes

    def _sync_route(self, name: str, intents: list[Intent]) -> dict[str, Outcome]:
        try:
            return retry_on_conflict(lambda: self._sync_route_once(name, intents), attempts=8)
        except Conflict as e:
            raise RuntimeError(f"HTTPRoute {self.namespace}/{name}: too many conflicts") from e

    def _sync_route_once(self, name: str, intents: list[Intent]) -> dict[str, Outcome]:
        route = base.get(self.kube, "HTTPRoute", self.namespace, name)
        if route is None:
            return {it.tag: failed("RouteNotFound", f"HTTPRoute {name} not found") for it in intents}
        clean = strip(route)
        weighted = {it.tag for it in intents if it.active and not it.matches}
        bf: dict[str, bool | str] = {}
        if weighted:
            verdict = self._backend_filters(clean)
            bf = {tag: verdict for tag in weighted}
        want, outcomes = program(clean, intents, bf)
        if same(want, route):
            return outcomes
        try:
            self.kube.replace("HTTPRoute", self.namespace, name, want)
        except KubeError as e:
            if e.status == 422:     # the API server refused our rules: say so, leave the route alone
                return {it.tag: failed("RouteRejected", f"HTTPRoute {name}: {e}") for it in intents}
            raise
        log.info("%s: HTTPRoute %s %s", self.namespace, name,
                 "programmed" if n.ENTRY_ROUTING_ANN in (want["metadata"].get("annotations") or {}) else "restored")
        return outcomes
