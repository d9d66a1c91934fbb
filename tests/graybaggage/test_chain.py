"""Propagation across real processes started without code changes (issue 2 "Must show")."""
from __future__ import annotations

import json
import time

import pytest

from tests import support

MODES = {
    "lanes": {},
    # tracing: an SDK configured by env (opentelemetry-distro's configurator), spans to stdout
    "tracing": {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
                "OTEL_SERVICE_NAME": "hop", "OTEL_BSP_SCHEDULE_DELAY": "100"},
}


@pytest.fixture(params=[("graybaggage-run", "lanes"), ("opentelemetry-instrument", "lanes"),
                        ("graybaggage-run", "tracing")], ids=lambda p: f"{p[0]}-{p[1]}", scope="module")
def chain(request):
    how, mode = request.param
    env = MODES[mode]
    c = support.start("c", {"HOP_KIND": "wsgi", **env}, how)
    b = support.start("b", {"HOP_KIND": "asgi", "HOP_CLIENT": "httpx-async", "HOP_NEXT": c.url, **env}, how)
    a = support.start("a", {"HOP_KIND": "flask", "HOP_CLIENT": "requests", "HOP_NEXT": b.url, **env}, how)
    yield mode, (a, b, c)
    for s in (a, b, c):
        s.kill()


def test_gray_reaches_hop3_in_header_and_baggage(chain):
    mode, (a, b, c) = chain
    hops = support.chain_of(support.get(a.url + "/x", {"x-mse-tag": "gray"}))
    assert [h["name"] for h in hops] == ["a", "b", "c"]
    assert hops[0]["header"] == "gray"
    for h in hops[1:]:
        assert h["header"] == "gray", h
        assert "x-mse-tag=gray" in (h["baggage"] or ""), h


def test_lane_from_baggage_only(chain):
    mode, (a, b, c) = chain
    hops = support.chain_of(support.get(a.url + "/x", {"baggage": "user=42,x-mse-tag=blue"}))
    assert [h["header"] for h in hops[1:]] == ["blue", "blue"]


def test_explicit_header_wins_over_baggage(chain):
    mode, (a, b, c) = chain
    hops = support.chain_of(support.get(a.url + "/x", {"x-mse-tag": "gray", "baggage": "x-mse-tag=blue"}))
    assert hops[2]["header"] == "gray"


def test_untagged_request_carries_no_lane(chain):
    mode, (a, b, c) = chain
    hops = support.chain_of(support.get(a.url + "/x"))
    assert [h["header"] for h in hops] == [None, None, None]
    assert all("x-mse-tag" not in (h["baggage"] or "") for h in hops)


def _spans(log: str) -> list[dict]:
    dec, spans, i = json.JSONDecoder(), [], 0
    while (i := log.find("{", i)) != -1:
        try:
            obj, end = dec.raw_decode(log, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict) and "kind" in obj and "context" in obj:
            spans.append(obj)
        i = end
    return spans


def test_tracing_mode_spans_carry_lane_without_duplicates(chain):
    mode, (a, b, c) = chain
    if mode != "tracing":
        pytest.skip("only meaningful when an SDK exports spans")
    support.get(a.url + "/traced-once", {"x-mse-tag": "gray"})
    deadline = time.monotonic() + 15
    mine: list[dict] = []
    while time.monotonic() < deadline:
        mine = [s for s in _spans(a.log) if "/traced-once" in json.dumps(s["attributes"])]
        if len(mine) >= 2:
            break
        time.sleep(0.1)
    kinds = sorted(s["kind"] for s in mine)
    assert kinds == ["SpanKind.CLIENT", "SpanKind.SERVER"], kinds  # exactly one of each: nothing duplicated
    server = next(s for s in mine if s["kind"] == "SpanKind.SERVER")
    client = next(s for s in mine if s["kind"] == "SpanKind.CLIENT")
    assert client["parent_id"] == server["context"]["span_id"]
    for span in mine:
        assert span["attributes"]["graybaggage.lane"] == "gray"
        assert span["attributes"]["graybaggage.instance_lane"] == "base"


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("carriers", ["header", "baggage"])
def test_one_carrier_keeps_the_lane_over_three_hops(mode, carriers):
    """GRAYBAGGAGE_CARRIERS=header (or baggage) on every hop: each call carries the lane in that carrier
    only, and the next hop reads it from there (a three-hop chain of real processes, both modes)."""
    env = {**MODES[mode], "GRAYBAGGAGE_CARRIERS": carriers}
    c = support.start("c", {"HOP_KIND": "wsgi", **env})
    b = support.start("b", {"HOP_KIND": "asgi", "HOP_CLIENT": "httpx-async", "HOP_NEXT": c.url, **env})
    a = support.start("a", {"HOP_KIND": "flask", "HOP_CLIENT": "requests", "HOP_NEXT": b.url, **env})
    try:
        for tag in ("gray", "blue"):
            hops = support.chain_of(support.get(a.url + "/x", {"x-mse-tag": tag}))
            assert [h["name"] for h in hops] == ["a", "b", "c"]
            for h in hops[1:]:
                members = [m.strip() for m in (h["baggage"] or "").split(",") if m.strip()]
                if carriers == "header":
                    assert h["header"] == tag and not any(m.startswith("x-mse-tag") for m in members), h
                else:
                    assert h["header"] is None and f"x-mse-tag={tag}" in members, h
        base = support.chain_of(support.get(a.url + "/x"))
        assert all(h["header"] is None and "x-mse-tag" not in (h["baggage"] or "") for h in base), base
    finally:
        for s in (a, b, c):
            s.kill()
