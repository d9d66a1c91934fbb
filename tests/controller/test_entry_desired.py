"""The pure half of entry routing (no cluster): building and undoing route mutations, dye-rule bridge."""

from __future__ import annotations

import copy
import json

import pytest

from graybaggage_controller import desired as d
from graybaggage_controller import names as n
from graybaggage_controller.entry import gateway_api as g, ingress as ing, model

RHM = "RequestHeaderModifier"
SEED = {"headers": [{"type": "Exact", "name": "User-Agent", "value": "xiaoming"}]}


def ref(svc, port=20001):
    return {"group": "", "kind": "Service", "name": svc, "port": port, "weight": 1}


def route(*rules, annotations=None):
    meta = {"name": "r", "namespace": "ns"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
            "spec": {"parentRefs": [{"name": "gw"}], "rules": list(rules)}}


def rule(path, svc, **extra):
    return {"matches": [{"path": {"type": "PathPrefix", "value": path}}], "backendRefs": [ref(svc)], **extra}


def lane(tag, **entry):
    return {"metadata": {"name": tag, "creationTimestamp": f"2026-01-01T00:00:0{len(tag)}Z"},
            "spec": {"tag": tag, "header": "x-mse-tag",
                     "entry": {"service": "a", "route": {"httpRoute": {"name": "r"}}, **entry}}}


def intents_for(lanes, routes=None):
    table = {"lanes": {x["spec"]["tag"]: {"routes": (routes or {}).get(x["spec"]["tag"], {"a": f"a-{x['spec']['tag']}"})}
                       for x in lanes}}
    its, bad = model.intents(lanes, table)
    assert not bad, bad
    return its


USER_ROUTES = [
    route(rule("/", "a")),
    route(rule("/", "a", filters=[])),   # (an empty annotations map never comes back from the API server)
    route(rule("/", "a", filters=[{"type": RHM, "requestHeaderModifier": {"remove": ["x-other"]}}]),
          rule("/b", "b"), annotations={"keep": "me"}),
    route(rule("/", "a", filters=[{"type": RHM, "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]),
          rule("/x", "a", filters=[{"type": "URLRewrite", "urlRewrite": {"hostname": "h"}}])),
    route(rule("/", "a", filters=[{"type": RHM, "requestHeaderModifier": {"remove": ["x-mse-tag"]}}])),  # example's
]


@pytest.mark.parametrize("user", USER_ROUTES, ids=range(len(USER_ROUTES)))
@pytest.mark.parametrize("entries", [
    [lane("gray", matches=[SEED])],
    [lane("gray", matches=[SEED, {"cookie": {"name": "uid", "value": "7"}, "queryParams": [{"name": "v", "value": "2"}]}])],
    [lane("gray", weight=30)],
    [lane("gray", matches=[SEED]), lane("blue", matches=[{"headers": [{"type": "Prefix", "name": "x-u", "value": "b"}]}])],
], ids=["seed", "cookie+query", "weight", "two-lanes"])
def test_program_then_strip_gives_back_the_users_route(user, entries):
    its = intents_for(entries)
    out, outcomes = g.program(g.strip(user), its, {i.tag: True for i in its})
    assert all(o.conditions[0]["status"] == "True" for o in outcomes.values()), outcomes
    assert out != user
    assert g.strip(out) == user
    # idempotent: recomputing from the programmed route gives the same object
    assert g.program(g.strip(out), its, {i.tag: True for i in its})[0] == out
    # every rule graybaggage added is named, every user rule kept in order
    ours = [r for r in out["spec"]["rules"] if (r.get("name") or "").startswith("graybaggage-")]
    assert len(ours) == len(its) * sum(1 for r in user["spec"]["rules"] if r["backendRefs"][0]["name"] == "a")
    # one RequestHeaderModifier per filter list, never two actions on one header name
    for r in out["spec"]["rules"]:
        for filters in [r.get("filters") or []] + [b.get("filters") or [] for b in r["backendRefs"]]:
            rhms = [f for f in filters if f["type"] == RHM]
            assert len(rhms) <= 1
            for f in rhms:
                m = f["requestHeaderModifier"]
                names = [h["name"].lower() for k in ("set", "add") for h in m.get(k) or []] + \
                    [h.lower() for h in m.get("remove") or []]
                assert len(names) == len(set(names)), m


def _removes(filters):
    return [h for f in filters or [] if f["type"] == RHM for h in f["requestHeaderModifier"].get("remove") or []]


@pytest.mark.parametrize("user_filters, want", [
    (None, ["x-mse-tag", "baggage"]),
    ([{"type": RHM, "requestHeaderModifier": {"remove": ["x-mse-tag"]}}], ["x-mse-tag", "baggage"]),
    ([{"type": RHM, "requestHeaderModifier": {"remove": ["x-mse-tag", "baggage"]}}], ["x-mse-tag", "baggage"]),
    ([{"type": RHM, "requestHeaderModifier": {"remove": ["Baggage"]}}], ["Baggage", "x-mse-tag"]),
], ids=["none", "header-only (the old example)", "both (examples/k8s/gateway)", "baggage-other-case"])
def test_stable_rules_remove_the_lane_header_and_baggage(user_filters, want):
    """A W3C baggage member x-mse-tag=gray from outside is a lane tag to the services: the stable rules drop
    the baggage header with the lane header (found on the real data plane, issue 13)."""
    user = route(rule("/", "a", **({"filters": user_filters} if user_filters is not None else {})))
    for entries in ([lane("gray", matches=[SEED])], [lane("gray", weight=30)]):
        its = intents_for(entries)
        out, _ = g.program(g.strip(user), its, {"gray": True})
        stable = [r for r in out["spec"]["rules"] if not r.get("name")]
        assert _removes(stable[0].get("filters")) == want
        assert g.strip(out) == user
        if not its[0].matches:      # weighted: the base backend of the lane rule removes both too
            base_ref = out["spec"]["rules"][0]["backendRefs"][0]
            assert _removes(base_ref["filters"]) == ["x-mse-tag", "baggage"]


def test_intent_remove_names():
    it = intents_for([lane("gray", matches=[SEED])])[0]
    assert it.remove_names == ["x-mse-tag", "baggage"]
    it = intents_for([lane("gray", matches=[SEED], requestHeaderModifier={"set": [{"name": "Baggage", "value": "x"}]})])[0]
    assert it.remove_names == ["Baggage"]


def test_seed_lane_rule_and_no_gray_member_goes_to_base_with_the_header():
    its = intents_for([lane("gray", matches=[{"cookie": {"name": "uid", "value": "7"}}])], routes={"gray": {"c": "c-gray"}})
    out, _ = g.program(route(rule("/", "a")), its, {})
    lr = out["spec"]["rules"][0]
    assert lr["backendRefs"] == [ref("a")]
    assert lr["filters"] == [{"type": RHM, "requestHeaderModifier": {"set": [{"name": "x-mse-tag", "value": "gray"}]}}]
    assert lr["matches"][0]["headers"] == [{"type": "RegularExpression", "name": "Cookie", "value": r"(^|;\s*)uid=7(;|$)"}]


def test_gateway_api_has_no_prefix_match_so_prefix_becomes_an_anchored_regex():
    its = intents_for([lane("gray", matches=[{"headers": [{"type": "Prefix", "name": "x-u", "value": "a.b c"}],
                                              "queryParams": [{"type": "Prefix", "name": "v", "value": "2"}]}])])
    m = g.program(route(rule("/", "a")), its, {})[0]["spec"]["rules"][0]["matches"][0]
    assert m["headers"] == [{"type": "RegularExpression", "name": "x-u", "value": r"^a\.b c"}]
    assert m["queryParams"] == [{"type": "RegularExpression", "name": "v", "value": "^2"}]


def test_user_edits_survive_strip_and_inactive_lane_restores():
    its = intents_for([lane("gray", matches=[SEED])])
    out, _ = g.program(route(rule("/", "a")), its, {})
    out["spec"]["rules"].append(rule("/new", "b"))          # the user adds a rule while the lane is on
    assert g.strip(out) == route(rule("/", "a"), rule("/new", "b"))
    idle = intents_for([lane("gray", matches=[SEED])], routes={"gray": {}})
    assert not idle[0].active
    back, outcomes = g.program(g.strip(out), idle, {})
    assert back == route(rule("/", "a"), rule("/new", "b")) and outcomes["gray"].conditions[0]["reason"] == "NoActiveMember"


def test_refusals_leave_the_route_alone():
    its = intents_for([lane("gray", weight=30)])
    user = route(rule("/", "a"))
    out, o = g.program(user, its, {"gray": "GatewayClass plain"})
    assert out == user and o["gray"].conditions[0]["reason"] == "BackendHeaderModificationUnsupported"
    assert "GatewayClass plain" in o["gray"].conditions[0]["message"]
    out, o = g.program(route(rule("/", "b")), intents_for([lane("gray", matches=[SEED])]), {})
    assert o["gray"].conditions[0]["reason"] == "ServiceNotInRoute"
    big = route(*[rule(f"/{i}", "a") for i in range(9)])
    out, o = g.program(big, intents_for([lane("gray", matches=[SEED])]), {})
    assert out == big and o["gray"].conditions[0]["reason"] == "RouteTooLarge"


def test_invalid_entries_are_reported_not_programmed():
    bad = lane("gray", matches=[SEED])
    bad["spec"]["entry"]["route"] = {"ingress": {"name": "i", "classType": "traefik"}}
    its, outcomes = model.intents([bad], {"lanes": {}})
    assert its == [] and outcomes["gray"].conditions[0]["reason"] == "UnsupportedClass"


def test_supported_features_both_shapes():
    assert g.FEATURE in g.supported_features({"status": {"supportedFeatures": [{"name": g.FEATURE}]}})
    assert g.FEATURE in g.supported_features({"status": {"supportedFeatures": [g.FEATURE]}})
    assert not g.supported_features({})


# ---------------------------------------------------------------------------------------------- Ingress

def test_canary_conditions():
    it = intents_for([lane("gray", matches=[SEED])])[0]
    assert ing.canary_condition(it, "higress.io/") == (
        {"higress.io/canary-by-header": "user-agent", "higress.io/canary-by-header-value": "xiaoming"}, None)
    pre = intents_for([lane("gray", matches=[{"headers": [{"type": "Prefix", "name": "X-U", "value": "a.b"}]}])])[0]
    assert ing.canary_condition(pre, "p/")[0] == {"p/canary-by-header": "x-u", "p/canary-by-header-pattern": r"^a\.b"}
    ck = intents_for([lane("gray", matches=[{"cookie": {"name": "beta", "value": "always"}}])])[0]
    assert ing.canary_condition(ck, "p/")[0] == {"p/canary-by-cookie": "beta"}
    w = intents_for([lane("gray", weight=30)])[0]
    assert ing.canary_condition(w, "p/")[0] == {"p/canary-weight": "30"}
    for bad in ([SEED, SEED], [{"queryParams": [{"name": "v", "value": "1"}]}], [{"cookie": {"name": "c", "value": "1"}}],
                [{"headers": SEED["headers"] * 2}]):
        assert ing.canary_condition(intents_for([lane("gray", matches=bad)])[0], "p/")[1]


@pytest.mark.parametrize("annotations", [None, {"other": "x"}, {"higress.io/request-header-control-remove": "x-a"}])
def test_stable_annotation_round_trip(annotations):
    key = "higress.io/request-header-control-remove"
    user = {"metadata": {"name": "i", **({"annotations": annotations} if annotations is not None else {})}, "spec": {}}
    out = ing.program_stable(ing.strip_stable(user), key, ["x-mse-tag"])
    assert out["metadata"]["annotations"][key].split(",")[-1] == "x-mse-tag"
    assert ing.strip_stable(out) == user
    assert ing.program_stable(ing.strip_stable(out), key, ["x-mse-tag"]) == out
    # the user rewrote the value meanwhile: theirs is kept, only our record goes
    edited = copy.deepcopy(out)
    edited["metadata"]["annotations"][key] = "mine"
    assert ing.strip_stable(edited)["metadata"]["annotations"] == {**(annotations or {}), key: "mine"}


# ---------------------------------------------------------------------------------------------- lane table

def test_lane_table_entry_bridge():
    assert d.lane_table_entry(None) is None
    assert d.lane_table_entry({"rules": []}) == {"rules": []}            # passthrough as before
    assert d.lane_table_entry({}) == {}
    http = lane("gray", matches=[SEED])["spec"]["entry"]
    assert d.lane_table_entry(http) is None                               # routing keys stay out of the table
    assert d.lane_table_entry({**http, "rules": [{"conditions": []}]}) == {"rules": [{"conditions": []}]}
    nginx = {**http, "route": {"ingress": {"name": "i", "classType": "nginx"}},
             "matches": [SEED, {"headers": [{"type": "RegularExpression", "name": "x-u", "value": "^1"}],
                                "queryParams": [{"type": "Prefix", "name": "v", "value": "2"}],
                                "cookie": {"name": "uid", "value": "7"}}]}
    rules = d.lane_table_entry(nginx)["rules"]
    assert rules == [
        {"conditions": [{"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]},
        {"conditions": [{"type": "header", "name": "x-u", "operator": "regex", "value": "^1"},
                        {"type": "query", "name": "v", "operator": "prefix", "value": "2"},
                        {"type": "cookie", "name": "uid", "operator": "==", "value": "7"}]}]
    from graybaggage.dye import validate_rules
    assert validate_rules(rules, lane="gray") == []
    table = d.build_lane_table("ns", [{"metadata": {"name": "gray"}, "spec": {"tag": "gray", "entry": nginx}}], [])
    assert table["lanes"]["gray"]["entry"] == {"rules": rules}
    json.dumps(table)
    assert n.ENTRY_ROUTING_ANN.startswith("graybaggage.io/")
