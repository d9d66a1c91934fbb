"""Entry routing, the pure model of a Lane's `spec.entry` (no I/O: the providers in base.py and the
modules beside it do the API calls).

A Lane's entry names the user's route object (an HTTPRoute, or an Ingress with its class type), the entry
service, the matches (headers Exact/RegularExpression/Prefix, query parameters, a cookie), an optional weight
and the headers to set (default: the lane header = the tag). `intents(...)` turns Lanes plus the lane table
(which services of each lane have gray instances) into `Intent`s; one provider per route kind programs them:

    provider.ensure(intents) -> {tag: Outcome}   # exactly these intents; undo everything else it made
    provider.finalise() -> bool                  # = ensure([]): the namespace's routes as the user wrote them

Providers own only what they created (marked by `graybaggage.io/entry-routing` on the user's object, by
rule names on HTTPRoutes, by labels on the canary Ingresses) and undo it precisely.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from .. import names as n

Obj = dict[str, Any]

HTTPROUTE = "httpRoute"
INGRESS = "ingress"
CLASS_TYPES = ("higress", "nginx")
MATCH_TYPES = ("Exact", "RegularExpression", "Prefix")
#: the W3C baggage header: removed from outside traffic with the lane header (it can carry the lane tag)
BAGGAGE = "baggage"

GW_GROUP = "gateway.networking.k8s.io"


@dataclasses.dataclass(frozen=True)
class Intent:
    """One Lane's entry, resolved against the lane table (pure data)."""
    lane: str                    # the Lane object's name
    tag: str
    header: str
    service: str                 # the entry service (base Service name)
    kind: str                    # HTTPROUTE | INGRESS
    route: str                   # the user's HTTPRoute / Ingress name
    class_type: str | None       # INGRESS only: higress | nginx
    matches: tuple[Obj, ...]
    weight: int | None
    set_headers: tuple[Obj, ...]  # [{name, value}]
    backend: str                 # where lane traffic goes: `<svc>-<tag>` if routed, else the base service
    active: bool                 # the lane has at least one routed member: the lane route exists

    @property
    def set_names(self) -> list[str]:
        return [h["name"] for h in self.set_headers]

    @property
    def remove_names(self) -> list[str]:
        """Headers removed from requests that do not enter the lane: the headers the lane sets, and `baggage`
        (a W3C baggage member `<header>=<tag>` is a lane tag to the services too)."""
        out = list(self.set_names)
        if BAGGAGE not in {h.lower() for h in out}:
            out.append(BAGGAGE)
        return out


@dataclasses.dataclass
class Outcome:
    """What a provider did for one lane: `done` (True when nothing is left to do) and the conditions."""
    done: bool
    conditions: list[Obj]
    detail: Obj = dataclasses.field(default_factory=dict)


def condition(ctype: str, ok: bool, reason: str, message: str) -> Obj:
    return {"type": ctype, "status": "True" if ok else "False", "reason": reason, "message": message}


def failed(reason: str, message: str) -> Outcome:
    """A bad entry: a clear condition, and nothing touched."""
    return Outcome(done=True, conditions=[condition(n.ENTRY_ROUTED, False, reason, message)])


def inactive(tag: str, what: str) -> Outcome:
    """The lane has no routed member yet: nothing to program, ``what`` (the user's route) is unchanged."""
    return Outcome(True, [condition(n.ENTRY_ROUTED, False, "NoActiveMember",
                                    f"lane {tag} has no routed member yet; {what} is unchanged")])


# ---------------------------------------------------------------------------------------------- pure model

def route_of(entry: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(kind, name, classType) of an entry's route, kind None when the entry has no route."""
    route = entry.get("route") or {}
    if route.get(HTTPROUTE):
        return HTTPROUTE, (route[HTTPROUTE] or {}).get("name"), None
    if route.get(INGRESS):
        ing = route[INGRESS] or {}
        return INGRESS, ing.get("name"), ing.get("classType")
    return None, None, None


def validate_entry(entry: Mapping[str, Any]) -> str | None:
    """A message for what the API schema cannot catch, or None."""
    kind, name, class_type = route_of(entry)
    if not name:
        return "entry.route needs httpRoute.name or ingress.name"
    if not entry.get("service"):
        return "entry.service (the entry Service) is required with entry.route"
    if kind == INGRESS and class_type not in CLASS_TYPES:
        return (f"entry.route.ingress.classType {class_type!r} is not supported (supported: higress, nginx; "
                "or use route.httpRoute for any Gateway API implementation)")
    if not entry.get("matches") and entry.get("weight") is None:
        return "entry needs matches or a weight: nothing would enter the lane"
    for i, m in enumerate(entry.get("matches") or []):
        if not (m.get("headers") or m.get("queryParams") or m.get("cookie")):
            return f"entry.matches[{i}] is empty (give headers, queryParams or a cookie)"
        for key in ("headers", "queryParams"):
            for j, h in enumerate(m.get(key) or []):
                if (h.get("type") or "Exact") not in MATCH_TYPES:
                    return f"entry.matches[{i}].{key}[{j}].type {h.get('type')!r} (expected one of {MATCH_TYPES})"
    return None


def set_headers_of(entry: Mapping[str, Any], header: str, tag: str) -> list[Obj]:
    rhm = entry.get("requestHeaderModifier") or {}
    out = [{"name": h["name"], "value": str(h.get("value", ""))} for h in rhm.get("set") or [] if h.get("name")]
    return out or [{"name": header, "value": tag}]


def intents(lanes: Iterable[Mapping[str, Any]], table: Mapping[str, Any]) -> tuple[list[Intent], dict[str, Outcome]]:
    """Intents for every (non-deleting, first-of-its-tag) Lane with an entry route, plus the Outcomes of
    entries that are invalid as written. `table` is `desired.build_lane_table(...)`: its lanes' routes say
    which services have gray instances."""
    out: list[Intent] = []
    bad: dict[str, Outcome] = {}
    seen: set[str] = set()
    for lane in sorted(lanes, key=lambda o: ((o.get("metadata") or {}).get("creationTimestamp") or "",
                                             (o.get("metadata") or {}).get("name"))):
        meta = lane.get("metadata") or {}
        spec = lane.get("spec") or {}
        tag = spec.get("tag")
        if meta.get("deletionTimestamp") or not tag or tag in seen:
            continue
        seen.add(tag)
        entry = spec.get("entry") or {}
        if not entry.get("route"):
            continue
        problem = validate_entry(entry)
        kind, name, class_type = route_of(entry)
        if problem:
            reason = "UnsupportedClass" if "classType" in problem else "InvalidEntry"
            bad[tag] = failed(reason, problem + "; nothing was changed")
            continue
        routes = ((table.get("lanes") or {}).get(tag) or {}).get("routes") or {}
        header = spec.get("header") or "x-mse-tag"
        service = entry["service"]
        weight = entry.get("weight")
        out.append(Intent(
            lane=str(meta.get("name") or ""), tag=tag, header=header, service=service, kind=str(kind), route=str(name),
            class_type=class_type, matches=tuple(entry.get("matches") or ()),
            weight=None if weight is None else int(weight),
            set_headers=tuple(set_headers_of(entry, header, tag)),
            backend=str(routes.get(service) or service), active=bool(routes)))
    return out, bad


def dye_rules(entry: Mapping[str, Any]) -> list[Obj]:
    """An entry's matches as dye rules (docs/dye-rules.md; the lane is implied): one rule per match, its
    conditions ANDed. A weight without matches has no dye-rule equivalent (weights are per request)."""
    op = {"Exact": "==", "Prefix": "prefix", "RegularExpression": "regex"}
    rules = []
    for m in entry.get("matches") or []:
        conds = []
        for key, ctype in (("headers", "header"), ("queryParams", "query")):
            for h in m.get(key) or []:
                conds.append({"type": ctype, "name": h["name"], "operator": op[h.get("type") or "Exact"],
                              "value": str(h.get("value", ""))})
        if m.get("cookie"):
            conds.append({"type": "cookie", "name": m["cookie"]["name"], "operator": "==",
                          "value": str(m["cookie"].get("value", ""))})
        if conds:
            rules.append({"conditions": conds})
    return rules


def re_escape(text: str) -> str:
    """Escape regex metacharacters only (portable to RE2, PCRE and Python; unlike re.escape, which also
    escapes spaces and dashes that RE2 may refuse)."""
    return "".join("\\" + c if c in "\\.^$|?*+()[]{}" else c for c in text)


def prefix_regex(value: str) -> str:
    return "^" + re_escape(value)
