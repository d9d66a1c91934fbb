"""Bad entries: a clear condition on the Lane, and no route object touched (real control plane)."""

from __future__ import annotations

import pytest
import yaml

from .conftest import wait_for
from .test_entry_gateway_api import SEED_MATCH, gateway, seed_route
from .test_entry_ingress import stable_ingress

pytestmark = pytest.mark.k8s_local_webhook


def test_bad_entries_report_a_condition_and_touch_nothing(k8s_cluster, gb_controller, gateway_class, entry_kit):
    kit = entry_kit
    ns = kit.ns

    # what the schema refuses outright
    for bad, needle in (({"route": {"httpRoute": {"name": "x"}}, "matches": [SEED_MATCH]}, "entry.service"),
                        ({"service": "a", "route": {"httpRoute": {"name": "x"}, "ingress": {"name": "ing", "classType": "higress"}},
                          "matches": [SEED_MATCH]}, "exactly one"),
                        ({"service": "a", "route": {"httpRoute": {"name": "x"}}}, "matches or a weight"),
                        ({"service": "a", "route": {"httpRoute": {"name": "x"}}, "weight": 101}, "weight")):
        cp = k8s_cluster.kubectl("apply", "-n", ns, "-f", "-", check=False,
                                 input=yaml.safe_dump(kit.lane("bad", bad)))
        assert cp.returncode != 0 and needle in cp.stderr, (bad, cp.stderr)

    def http(route, svc="spring-cloud-a"):
        return {"service": svc, "route": {"httpRoute": {"name": route}}, "matches": [SEED_MATCH]}

    def ing(cls, matches):
        return {"service": "spring-cloud-a", "route": {"ingress": {"name": "spring-cloud-a", "classType": cls}},
                "matches": matches}

    cases = {   # lane tag -> (entry, reason, words the message must contain)
        "no-route": (http("missing"), "RouteNotFound", ["HTTPRoute missing not found"]),
        "no-svc": (http("spring-cloud-a", "spring-cloud-x"), "ServiceNotFound", ["spring-cloud-x not found"]),
        "no-class": (ing("traefik", [SEED_MATCH]), "UnsupportedClass", ["traefik", "higress, nginx"]),
        "two-matches": (ing("higress", [SEED_MATCH, {"cookie": {"name": "tester", "value": "always"}}]),
                        "UnsupportedMatch", ["2 matches", "route.httpRoute"]),
        "not-in-route": (http("other"), "ServiceNotInRoute", ["no rule with a backendRef to Service spring-cloud-a"]),
    }
    apps = {tag: f"app-{i}" for i, tag in enumerate(cases)}
    docs = [*kit.app("spring-cloud-a"), gateway("public-gw", gateway_class([])), seed_route(),
            stable_ingress("higress")]
    other = seed_route("other")
    other["spec"]["rules"] = other["spec"]["rules"][1:2]       # only the unrelated rule
    docs.append(other)
    for tag, (entry, _, _) in cases.items():
        docs += kit.app(apps[tag]) + [kit.lane(tag, entry), kit.release(f"rollout-{tag}", apps[tag], tag)]
    kit.apply(*docs)
    before = {(kind, name): kit.get(kind, name) for kind, name in
              (("HTTPRoute", "spring-cloud-a"), ("HTTPRoute", "other"), ("Ingress", "spring-cloud-a"))}
    for app in apps.values():
        k8s_cluster.kubectl("-n", ns, "rollout", "status", f"deployment/{app}", "--timeout=60s")
    gb_controller.start()
    for tag in cases:
        kit.wait_phase(f"rollout-{tag}", "Healthy", 30)
        kit.set_image(apps[tag], "2")
    # every lane has a routed member (the lane is active) and still nothing is touched
    for tag, (_, reason, words) in cases.items():
        kit.wait_phase(f"rollout-{tag}", "Paused", 60)
        c = kit.wait_condition(tag, "False", reason)
        for w in words:
            assert w in c["message"], (tag, c["message"])
        assert "nothing was changed" in c["message"] or "unchanged" in c["message"], c["message"]
    wait_for(lambda: all(((kit.kube.get("Lane", ns, t).get("status") or {}).get("routedCount") == 1) for t in cases),
             20, "every lane routed")
    for (kind, name), obj in before.items():
        assert kit.get(kind, name)["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"], (kind, name)
    assert [i["metadata"]["name"] for i in kit.kube.request(
        "GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses")["items"]] == ["spring-cloud-a"]

    # fixing an entry is picked up (level-triggered): point no-svc at the real service
    k8s_cluster.kubectl("patch", "lane", "no-svc", "-n", ns, "--type=merge",
                        "-p", '{"spec": {"entry": {"service": "spring-cloud-a"}}}')
    kit.wait_condition("no-svc", "True", "Programmed")
    assert kit.get("HTTPRoute", "spring-cloud-a")["spec"]["rules"][0]["name"] == "graybaggage-no-svc-0"
