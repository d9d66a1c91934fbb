"""The edge trust policy with real servers: forged tags never reach a gray instance, dye rules do,
and a non-edge service trusts its upstream."""
from __future__ import annotations

import json
import time

import pytest

from tests import support

SEED_RULE = json.dumps([{"lane": "gray", "conditions": [
    {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]}])


@pytest.fixture(params=["lanes", "tracing"])
def edge_chain(request, tmp_path):
    env = {"GRAYBAGGAGE_MODE": request.param, "OTEL_TRACES_EXPORTER": "none"}
    p = {n: support.free_port() for n in ("a", "a-gray", "edge", "trusted")}
    table = tmp_path / "lanes.json"
    table.write_text(json.dumps({"version": 1, "lanes": {"gray": {"routes": {
        f"127.0.0.1:{p['a']}": f"127.0.0.1:{p['a-gray']}"}}}}))
    common = {"GRAYBAGGAGE_LANE_TABLE_FILE": str(table), **env}
    a = support.start("a", {"HOP_KIND": "wsgi", **common}, port=p["a"])
    ag = support.start("a", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray", **common}, port=p["a-gray"])
    rules = tmp_path / "rules.json"
    rules.write_text(SEED_RULE)
    edge = support.start("edge", {"HOP_KIND": "flask", "HOP_NEXT": a.url, "GRAYBAGGAGE_EDGE": "1",
                                  "GRAYBAGGAGE_DYE_RULES_FILE": str(rules), **common}, port=p["edge"])
    trusted = support.start("trusted", {"HOP_KIND": "flask", "HOP_NEXT": a.url, **common}, port=p["trusted"])
    yield edge, trusted, ag, rules
    for s in (a, ag, edge, trusted):
        s.kill()


def _last(resp: dict) -> dict:
    return support.chain_of(resp)[-1]


def test_forged_tags_never_reach_gray(edge_chain):
    edge, _, a_gray, _ = edge_chain
    for headers in ({"x-mse-tag": "gray"}, {"baggage": "x-mse-tag=gray"}, {"x-mse-tag": "gray", "baggage": "x-mse-tag=gray"},
                    {"User-Agent": "XIAOMING", "x-mse-tag": "gray"}):
        last = _last(support.get(edge.url + "/f", headers))
        assert last["served"] == "a[base]", (headers, last)
        assert last["header"] is None and "x-mse-tag" not in (last["baggage"] or "")
    assert a_gray.stats() == {}


def test_matching_rule_routes_to_gray(edge_chain):
    edge, _, a_gray, _ = edge_chain
    last = _last(support.get(edge.url + "/m", {"User-Agent": "xiaoming"}))
    assert last["served"] == "a[gray]" and last["header"] == "gray"
    assert a_gray.stats() == {"gray": 1}


def test_non_edge_trusts_upstream_tags(edge_chain):
    _, trusted, _, _ = edge_chain
    last = _last(support.get(trusted.url + "/t", {"x-mse-tag": "gray"}))
    assert last["served"] == "a[gray]" and last["header"] == "gray"
    assert _last(support.get(trusted.url + "/t", {"User-Agent": "xiaoming"}))["served"] == "a[base]"  # no rules here


def test_rule_file_hot_reload_and_bad_rule_keeps_service_up(edge_chain):
    edge, _, _, rules = edge_chain
    rules.write_text(json.dumps([{"lane": "gray", "conditions": [
        {"type": "header", "name": "User-Agent", "operator": "prefix", "value": "xiao"}]}]))
    deadline = time.monotonic() + 3
    while _last(support.get(edge.url + "/r", {"User-Agent": "xiaohong"}))["served"] != "a[gray]":
        assert time.monotonic() < deadline, "rule change not picked up"
        time.sleep(0.05)
    rules.write_text(json.dumps([{"lane": "gray", "conditions": [{"type": "header", "operator": "=~"}]}]))
    time.sleep(0.6)
    # the broken file is reported (naming the field) and the last good rules stay in force
    assert _last(support.get(edge.url + "/r", {"User-Agent": "xiaohong"}))["served"] == "a[gray]"
    assert "rules[0].conditions[0]" in edge.log
