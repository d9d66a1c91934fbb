"""Entry routing on a Gateway API HTTPRoute, against the real control plane with the Gateway API CRDs
installed from the sigs.k8s.io/gateway-api module's own YAML (conftest: gateway_api_crds, gateway_class).

No gateway data plane runs here: what is proven is what the API server accepts and stores, and that
the user's route ends exactly as it started.
"""

from __future__ import annotations

import json

import pytest

from graybaggage_controller import names as n

from .conftest import set_gateway_class_features, wait_for

pytestmark = pytest.mark.k8s_local_webhook

GW = "gateway.networking.k8s.io/v1"
FEATURE = "HTTPRouteBackendRequestHeaderModification"
RHM = "RequestHeaderModifier"
SEED_MATCH = {"headers": [{"type": "Exact", "name": "User-Agent", "value": "xiaoming"}]}


def gateway(name: str, cls: str) -> dict:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name},
            "spec": {"gatewayClassName": cls, "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}}


def backend(svc: str, port: int = 20001) -> dict:
    return {"group": "", "kind": "Service", "name": svc, "port": port, "weight": 1}


def seed_route(name: str = "spring-cloud-a", parent: str = "public-gw") -> dict:
    """The seed's HTTPRoute as a user writes it, plus an unrelated rule and a second rule to the entry
    service that already has its own RequestHeaderModifier."""
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": parent}], "hostnames": ["springa.com"], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"name": "spring-cloud-a", "port": 20001}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}],
                 "filters": [{"type": RHM, "requestHeaderModifier": {"add": [{"name": "x-from", "value": "gw"}]}}],
                 "backendRefs": [{"name": "spring-cloud-b", "port": 20001}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                 "filters": [{"type": RHM, "requestHeaderModifier": {"set": [{"name": "x-api", "value": "1"}]}}],
                 "backendRefs": [{"name": "spring-cloud-a", "port": 20001}]}]}}


def seed_entry(route: str = "spring-cloud-a", **extra) -> dict:
    return {"service": "spring-cloud-a", "route": {"httpRoute": {"name": route}}, **extra}


def rule_names(route: dict) -> list:
    return [r.get("name") for r in route["spec"]["rules"]]


def test_seed_rule_programs_httproute_and_every_exit_restores_it(k8s_cluster, gb_controller, gateway_class,
                                                                 entry_kit):
    kit = entry_kit
    cls = gateway_class([])
    kit.apply(*kit.app("spring-cloud-a"), *kit.app("spring-cloud-b"), gateway("public-gw", cls), seed_route(),
              kit.lane("gray", seed_entry(matches=[SEED_MATCH])), kit.release("rollout-a", "spring-cloud-a", "gray"))
    k8s_cluster.kubectl("-n", kit.ns, "rollout", "status", "deployment/spring-cloud-a", "--timeout=60s")
    original_obj = kit.get("HTTPRoute", "spring-cloud-a")
    original = kit.user_view(original_obj)
    o_rules = original["spec"]["rules"]
    gb_controller.start()
    kit.wait_phase("rollout-a", "Healthy", 30)
    # no routed member yet: the route is untouched and the Lane says why
    kit.wait_condition("gray", "False", "NoActiveMember")
    assert kit.get("HTTPRoute", "spring-cloud-a")["metadata"]["resourceVersion"] == \
        original_obj["metadata"]["resourceVersion"]

    # set image and kill the controller mid-way: the fresh one programs the route once
    kit.set_image("spring-cloud-a", "2")
    gb_controller.kill()
    gb_controller.start()
    kit.wait_condition("gray", "True", "Programmed", timeout=60)
    route = kit.get("HTTPRoute", "spring-cloud-a")
    rules = route["spec"]["rules"]
    assert rule_names(route) == ["graybaggage-gray-0", None, None, "graybaggage-gray-2", None]
    set_tag = {"type": RHM, "requestHeaderModifier": {"set": [{"name": "x-mse-tag", "value": "gray"}]}}
    # the lane rule: the user's path AND the seed header, the header set, the gray Service
    assert rules[0] == {
        "name": "graybaggage-gray-0",
        "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                     "headers": [{"type": "Exact", "name": "User-Agent", "value": "xiaoming"}]}],
        "filters": [set_tag],
        "backendRefs": [backend("spring-cloud-a-gray")]}
    # the stable rule: only a remove filter added
    assert rules[1] == {**o_rules[0], "filters": [{"type": RHM, "requestHeaderModifier": {"remove": ["x-mse-tag", "baggage"]}}]}
    # the unrelated rule: unchanged
    assert rules[2] == o_rules[1]
    # a stable rule with its own modifier: the lane rule merges the set, the stable one gains remove
    assert rules[3] == {
        "name": "graybaggage-gray-2",
        "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                     "headers": [{"type": "Exact", "name": "User-Agent", "value": "xiaoming"}]}],
        "filters": [{"type": RHM, "requestHeaderModifier": {"set": [{"name": "x-api", "value": "1"},
                                                                    {"name": "x-mse-tag", "value": "gray"}]}}],
        "backendRefs": [backend("spring-cloud-a-gray")]}
    assert rules[4] == {**o_rules[2], "filters": [{"type": RHM, "requestHeaderModifier": {
        "set": [{"name": "x-api", "value": "1"}], "remove": ["x-mse-tag", "baggage"]}}]}
    rec = json.loads(route["metadata"]["annotations"][n.ENTRY_ROUTING_ANN])
    assert rec["rules"] == ["graybaggage-gray-0", "graybaggage-gray-2"]
    st = kit.kube.get("Lane", kit.ns, "gray")["status"]
    assert st["entry"] == {"route": "HTTPRoute/spring-cloud-a", "backend": "spring-cloud-a-gray",
                           "rules": ["graybaggage-gray-0", "graybaggage-gray-2"]}

    # restart again: nothing is rewritten or duplicated
    rv = route["metadata"]["resourceVersion"]
    gb_controller.kill()
    gb_controller.start()
    k8s_cluster.kubectl("annotate", "lane", "gray", "-n", kit.ns, "poke=1")     # a Lane event for the new process
    wait_for(lambda: "poke" in kit.kube.get("Lane", kit.ns, "gray")["metadata"]["annotations"], 5, "poke")
    kit.wait_condition("gray", "True", "Programmed")
    assert kit.get("HTTPRoute", "spring-cloud-a")["metadata"]["resourceVersion"] == rv

    def restored():
        now = kit.user_view(kit.get("HTTPRoute", "spring-cloud-a"))
        assert now == original, json.dumps(now["spec"]["rules"])[:600]
        return True

    def programmed_once():
        route = kit.get("HTTPRoute", "spring-cloud-a")
        names = [x for x in rule_names(route) if x]
        assert len(names) == len(set(names)) <= 2, names
        return names == ["graybaggage-gray-0", "graybaggage-gray-2"]

    # 1) promote: the member leaves the lane -> the route is the user's again
    assert kit.cli("approve", "rollout-a")[0] == 0
    wait_for(lambda: programmed_once() is not None and kit.phase("rollout-a") == "Healthy", 60, "promoted")
    wait_for(restored, 20, "route restored after promote")
    kit.wait_condition("gray", "False", "NoActiveMember")

    # 2) rollback
    kit.set_image("spring-cloud-a", "3")
    wait_for(programmed_once, 60, "programmed again")
    assert kit.cli("rollback", "rollout-a")[0] == 0
    kit.wait_phase("rollout-a", "Healthy", 60)
    wait_for(restored, 20, "route restored after rollback")

    # 3) Lane deletion mid-flight
    kit.set_image("spring-cloud-a", "4")
    wait_for(programmed_once, 60, "programmed a third time")
    k8s_cluster.kubectl("delete", "lane", "gray", "-n", kit.ns, "--wait=true", "--timeout=30s")
    restored()


def test_weight_uses_backend_filters_only_where_the_gateway_class_supports_them(
        k8s_cluster, gb_controller, gateway_class, entry_kit):
    kit = entry_kit
    with_feature = gateway_class([FEATURE, "HTTPRoute"])
    without = gateway_class(["HTTPRoute"])
    route_with = seed_route("route-with", "gw-with")
    route_without = seed_route("route-without", "gw-without")
    for r in (route_with, route_without):
        del r["spec"]["rules"][1:]
    # lane gray: a is gray (entry via route-with); lane blue: only c is gray, so a's blue traffic goes to base
    kit.apply(*kit.app("spring-cloud-a"), *kit.app("spring-cloud-c"),
              gateway("gw-with", with_feature), gateway("gw-without", without), route_with, route_without,
              kit.lane("gray", seed_entry("route-with", weight=30)),
              kit.lane("blue", seed_entry("route-without", weight=30)),
              kit.release("rollout-a", "spring-cloud-a", "gray"), kit.release("rollout-c", "spring-cloud-c", "blue"))
    for app in ("spring-cloud-a", "spring-cloud-c"):
        k8s_cluster.kubectl("-n", kit.ns, "rollout", "status", f"deployment/{app}", "--timeout=60s")
    originals = {r: kit.user_view(kit.get("HTTPRoute", r)) for r in ("route-with", "route-without")}
    gb_controller.start()
    kit.wait_phase("rollout-a", "Healthy", 30)
    kit.wait_phase("rollout-c", "Healthy", 30)
    kit.set_image("spring-cloud-a", "2")
    kit.set_image("spring-cloud-c", "2")

    kit.wait_condition("gray", "True", "Programmed", timeout=60)
    route = kit.get("HTTPRoute", "route-with")
    assert rule_names(route) == ["graybaggage-gray-0", None]
    assert route["spec"]["rules"][0] == {
        "name": "graybaggage-gray-0",
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [
            {**backend("spring-cloud-a"), "weight": 70,
             "filters": [{"type": RHM, "requestHeaderModifier": {"remove": ["x-mse-tag", "baggage"]}}]},
            {**backend("spring-cloud-a-gray"), "weight": 30,
             "filters": [{"type": RHM, "requestHeaderModifier": {"set": [{"name": "x-mse-tag", "value": "gray"}]}}]}]}
    assert route["spec"]["rules"][1]["filters"] == [{"type": RHM, "requestHeaderModifier": {"remove": ["x-mse-tag", "baggage"]}}]

    # without the feature: a clear condition, the route untouched
    c = kit.wait_condition("blue", "False", "BackendHeaderModificationUnsupported", timeout=60)
    assert FEATURE in c["message"] and without in c["message"] and "unchanged" in c["message"]
    assert kit.user_view(kit.get("HTTPRoute", "route-without")) == originals["route-without"]

    # the gateway controller now reports the feature: level-triggered, blue is programmed; a has no blue
    # member, so blue's 30% go to base a with the header set (later hops, here c, are laned)
    set_gateway_class_features(k8s_cluster, without, [FEATURE, "HTTPRoute"])
    kit.wait_condition("blue", "True", "Programmed", timeout=30)
    lane_rule = kit.get("HTTPRoute", "route-without")["spec"]["rules"][0]
    assert [(b["name"], b["weight"], b["filters"][0]["requestHeaderModifier"]) for b in lane_rule["backendRefs"]] == [
        ("spring-cloud-a", 70, {"remove": ["x-mse-tag", "baggage"]}),
        ("spring-cloud-a", 30, {"set": [{"name": "x-mse-tag", "value": "blue"}]})]

    # both lanes end: both routes are the user's again
    k8s_cluster.kubectl("delete", "lanes", "--all", "-n", kit.ns, "--wait=true", "--timeout=30s")
    for r, original in originals.items():
        assert kit.user_view(kit.get("HTTPRoute", r)) == original, r


def test_every_generated_shape_is_accepted_by_the_api_server(k8s_cluster, gateway_api_crds, k8s_namespace):
    """program() output for cookie / query / Prefix / regex / weight / two lanes / user modifiers, through
    the real HTTPRoute schema and CEL rules (server-side dry run; no controller needed)."""
    from graybaggage_controller.entry import gateway_api as g, model
    user = seed_route()
    user["metadata"]["namespace"] = k8s_namespace
    for r in user["spec"]["rules"]:
        r["backendRefs"] = [{"group": "", "kind": "Service", "weight": 1, **b} for b in r["backendRefs"]]

    def lane(tag, **entry):
        return {"metadata": {"name": tag}, "spec": {"tag": tag, "entry": {
            "service": "spring-cloud-a", "route": {"httpRoute": {"name": "spring-cloud-a"}}, **entry}}}
    shapes = {
        "seed": [lane("gray", matches=[SEED_MATCH])],
        "cookie+query+prefix+regex": [lane("gray", matches=[
            {"cookie": {"name": "uid", "value": "7.1"}, "queryParams": [{"type": "Prefix", "name": "v", "value": "2."}]},
            {"headers": [{"type": "Prefix", "name": "x-user", "value": "a b"},
                         {"type": "RegularExpression", "name": "x-id", "value": "^1[0-9]{3}$"}]}])],
        "weight": [lane("gray", weight=30)],
        "two lanes + custom header": [lane("gray", matches=[SEED_MATCH]),
                                      lane("blue", weight=10, requestHeaderModifier={"set": [
                                          {"name": "x-lane", "value": "blue"}]})],
    }
    for what, lanes in shapes.items():
        table = {"lanes": {x["spec"]["tag"]: {"routes": {"spring-cloud-a": "spring-cloud-a-" + x["spec"]["tag"]}}
                           for x in lanes}}
        its, bad = model.intents(lanes, table)
        assert not bad
        out, outcomes = g.program(g.strip(user), its, {i.tag: True for i in its})
        assert all(o.conditions[0]["status"] == "True" for o in outcomes.values()), (what, outcomes)
        cp = k8s_cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(out),
                                 check=False)
        assert cp.returncode == 0, (what, cp.stderr)
        stored = json.loads(cp.stdout)
        assert stored["spec"]["rules"] == out["spec"]["rules"], what      # nothing defaulted or pruned
        assert g.strip(stored)["spec"]["rules"] == user["spec"]["rules"], what
