"""Entry routing on Ingresses (Higress, ingress-nginx), against the real control plane.

No ingress controller runs: what is proven is the exact objects the API server stores, and that the
user's Ingress ends exactly as it started.
"""

from __future__ import annotations

import pytest

from graybaggage_controller import names as n
from graybaggage_controller.kube import read_lane_table

from .conftest import wait_for

pytestmark = pytest.mark.k8s_local_webhook

SEED_MATCH = {"headers": [{"type": "Exact", "name": "User-Agent", "value": "xiaoming"}]}


def stable_ingress(cls: str, annotations: dict | None = None) -> dict:
    meta = {"name": "spring-cloud-a"}
    if annotations:
        meta["annotations"] = annotations

    def path(p, svc):
        return {"path": p, "pathType": "Prefix",
                "backend": {"service": {"name": svc, "port": {"number": 20001}}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": {"ingressClassName": cls, "rules": [
                {"host": "springa.com", "http": {"paths": [path("/", "spring-cloud-a"), path("/b", "spring-cloud-b")]}}]}}


def entry(cls: str, **extra) -> dict:
    return {"service": "spring-cloud-a", "route": {"ingress": {"name": "spring-cloud-a", "classType": cls}},
            "matches": [SEED_MATCH], **extra}


def canary_rules() -> list:
    return [{"host": "springa.com", "http": {"paths": [
        {"path": "/", "pathType": "Prefix",
         "backend": {"service": {"name": "spring-cloud-a-gray", "port": {"number": 20001}}}}]}}]


def start_gray(kit, gb_controller, k8s_cluster, stable: dict, lane: dict) -> dict:
    kit.apply(*kit.app("spring-cloud-a"), *kit.app("spring-cloud-b"), stable, lane,
              kit.release("rollout-a", "spring-cloud-a", "gray"))
    k8s_cluster.kubectl("-n", kit.ns, "rollout", "status", "deployment/spring-cloud-a", "--timeout=60s")
    original = kit.user_view(kit.get("Ingress", "spring-cloud-a"))
    gb_controller.start()
    kit.wait_phase("rollout-a", "Healthy", 30)
    kit.wait_condition("gray", "False", "NoActiveMember")
    assert kit.get("Ingress", "spring-cloud-a-gray") is None
    kit.set_image("spring-cloud-a", "2")
    kit.wait_condition("gray", "True", "Programmed", timeout=60)
    return original


def test_higress_canary_ingress_carries_exactly_the_notes_annotations(k8s_cluster, gb_controller, entry_kit):
    kit = entry_kit
    # the user already strips another header on the stable Ingress: ours is appended, and put back after
    original = start_gray(kit, gb_controller, k8s_cluster,
                          stable_ingress("higress", {"higress.io/request-header-control-remove": "x-forwarded-user"}),
                          kit.lane("gray", entry("higress")))
    canary = kit.get("Ingress", "spring-cloud-a-gray")
    assert canary["metadata"]["annotations"] == {
        "higress.io/canary": "true",
        "higress.io/canary-by-header": "user-agent",
        "higress.io/canary-by-header-value": "xiaoming",
        "higress.io/request-header-control-update": "x-mse-tag gray",
    }
    assert canary["metadata"]["labels"] == {n.MANAGED_BY_LABEL: n.MANAGED_BY, n.LANE_LABEL: "gray",
                                            n.ENTRY_OF_LABEL: "spring-cloud-a", "graybaggage.io/entry-class": "higress"}
    assert canary["spec"] == {"ingressClassName": "higress", "rules": canary_rules()}
    stable = kit.get("Ingress", "spring-cloud-a")
    ann = stable["metadata"]["annotations"]
    assert ann["higress.io/request-header-control-remove"] == "x-forwarded-user,x-mse-tag,baggage"
    assert {k for k in ann if k.startswith(("higress.io/", "nginx.ingress"))} == {
        "higress.io/request-header-control-remove"}
    assert stable["spec"] == original["spec"]

    # weight instead of a match (matches win when both are given): canary-weight, header still set
    k8s_cluster.kubectl("patch", "lane", "gray", "-n", kit.ns, "--type=json", "-p",
                        '[{"op": "remove", "path": "/spec/entry/matches"},'
                        ' {"op": "add", "path": "/spec/entry/weight", "value": 30}]')
    wait_for(lambda: kit.get("Ingress", "spring-cloud-a-gray")["metadata"]["annotations"] == {
        "higress.io/canary": "true", "higress.io/canary-weight": "30",
        "higress.io/request-header-control-update": "x-mse-tag gray"}, 20, "weighted canary")

    # removed at the end (rollback), the stable Ingress exactly as before
    assert kit.cli("rollback", "rollout-a")[0] == 0
    kit.wait_phase("rollout-a", "Healthy", 60)
    wait_for(lambda: kit.get("Ingress", "spring-cloud-a-gray") is None, 20, "canary Ingress deleted")
    assert kit.user_view(kit.get("Ingress", "spring-cloud-a")) == original


def test_nginx_routes_only_and_publishes_the_matches_as_dye_rules(k8s_cluster, gb_controller, entry_kit):
    kit = entry_kit
    original = start_gray(kit, gb_controller, k8s_cluster, stable_ingress("nginx"),
                          kit.lane("gray", entry("nginx", rules=[
                              {"conditions": [{"type": "cookie", "name": "tester", "operator": "==", "value": "1"}]}])))
    canary = kit.get("Ingress", "spring-cloud-a-gray")
    assert canary["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-by-header": "user-agent",
        "nginx.ingress.kubernetes.io/canary-by-header-value": "xiaoming",
    }
    assert canary["spec"] == {"ingressClassName": "nginx", "rules": canary_rules()}
    assert kit.user_view(kit.get("Ingress", "spring-cloud-a")) == original      # nginx: stable untouched
    c = kit.wait_condition("gray", "False", "HeaderFromDyeRules", ctype=n.ENTRY_HEADER)
    for needle in ("dye rules", "GRAYBAGGAGE_EDGE=1", "lanes.gray.entry.rules", "docs/dye-rules.md"):
        assert needle in c["message"], c["message"]
    # the bridge: the user's own rules first, then the entry's matches in dye-rule form
    table = read_lane_table(kit.kube, kit.ns)
    assert table["lanes"]["gray"]["entry"] == {"rules": [
        {"conditions": [{"type": "cookie", "name": "tester", "operator": "==", "value": "1"}]},
        {"conditions": [{"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]}]}
    from graybaggage.dye import parse_lane_table_rules
    from graybaggage._request import HeaderMapView
    rules = parse_lane_table_rules(table)
    assert rules.evaluate(HeaderMapView({"User-Agent": "xiaoming"})) == "gray"
    assert rules.evaluate(HeaderMapView({"User-Agent": "curl"})) is None

    # promote: the canary goes, the Ingress is the user's
    assert kit.cli("approve", "rollout-a")[0] == 0
    kit.wait_phase("rollout-a", "Healthy", 60)
    wait_for(lambda: kit.get("Ingress", "spring-cloud-a-gray") is None, 20, "canary Ingress deleted")
    assert kit.user_view(kit.get("Ingress", "spring-cloud-a")) == original
