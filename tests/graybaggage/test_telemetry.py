"""Every routing decision is visible: span attributes and the routed-calls metric (in-process, real sockets)."""
from __future__ import annotations

import json

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import graybaggage
from tests import support

_reader = InMemoryMetricReader()
_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def sdk():
    # set once per process (the OTel API refuses to replace global providers)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    yield


def _counts() -> dict[tuple[str, str, str], int]:
    out = {}
    data = _reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "graybaggage.routed_calls":
                    for p in m.data.data_points:
                        a = p.attributes
                        out[(a["lane"], a["target"], a["outcome"])] = p.value
    return out


def test_routed_and_fallback_calls_are_counted_and_on_spans(base_server, refused_port):
    import requests

    live = support.start("live", {"HOP_KIND": "wsgi"})
    dead = refused_port
    try:
        b = base_server.server_port
        table = {"version": 1, "lanes": {
            "gray": {"routes": {f"127.0.0.1:{b}": f"127.0.0.1:{live.port}"}},
            "blue": {"routes": {f"127.0.0.1:{b}": f"127.0.0.1:{dead}"}}}}
        graybaggage.instrument(table_json=json.dumps(table), fallback_failures=100)
        tracer = trace.get_tracer("test")
        before = _counts()
        with graybaggage.lane("gray"), tracer.start_as_current_span("call-gray"):
            assert requests.get(f"http://127.0.0.1:{b}/x", timeout=5).json()["name"] == "live"
        with graybaggage.lane("blue"), tracer.start_as_current_span("call-blue"):
            assert requests.get(f"http://127.0.0.1:{b}/x", timeout=5).json() == {"lane": "blue"}
        after = _counts()
        assert after.get(("gray", f"127.0.0.1:{live.port}", "routed"), 0) - before.get(
            ("gray", f"127.0.0.1:{live.port}", "routed"), 0) == 1
        assert after.get(("blue", f"127.0.0.1:{dead}", "fallback"), 0) - before.get(
            ("blue", f"127.0.0.1:{dead}", "fallback"), 0) == 1
        finished = _exporter.get_finished_spans()
        parents = {s.name: s.context.span_id for s in finished}

        def client_span(parent: str):  # tracing mode: the requests CLIENT span carries the route
            return next(s for s in finished if s.parent is not None and s.parent.span_id == parents[parent]).attributes

        g, bl = client_span("call-gray"), client_span("call-blue")
        assert g["graybaggage.route.target"] == f"127.0.0.1:{live.port}" and g["graybaggage.route.fallback"] is False
        assert bl["graybaggage.route.outcome"] == "fallback" and bl["graybaggage.route.fallback"] is True
        assert g["graybaggage.lane"] == "gray" and g["graybaggage.instance_lane"] == "base"
        # the routed span describes the URL actually requested (semantic conventions); the original is kept
        url_keys = [k for k in ("url.full", "http.url") if k in g]
        assert url_keys, dict(g)
        for k in url_keys:
            assert g[k] == f"http://127.0.0.1:{live.port}/x", dict(g)
        assert g["graybaggage.route.original_url"] == f"http://127.0.0.1:{b}/x"
        for k in ("server.port", "net.peer.port"):
            if k in g:
                assert g[k] == live.port
        # a fallback went to the original destination in the end: its URL stays
        assert all(bl[k] == f"http://127.0.0.1:{b}/x" for k in url_keys) and "graybaggage.route.original_url" not in bl
    finally:
        graybaggage.uninstrument()
        live.kill()


def test_pass_through_dyes_untagged_requests_at_a_lane_instance():
    sink = support.start("sink", {"HOP_KIND": "wsgi"})
    gray = support.start("gray-inst", {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "GRAYBAGGAGE_LANE": "gray",
                                       "GRAYBAGGAGE_PASS_THROUGH": "1"})
    off = support.start("gray-off", {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "GRAYBAGGAGE_LANE": "gray"})
    try:
        assert support.chain_of(support.get(gray.url + "/p"))[-1]["header"] == "gray"
        assert support.chain_of(support.get(gray.url + "/p", {"x-mse-tag": "blue"}))[-1]["header"] == "blue"
        assert support.chain_of(support.get(off.url + "/p"))[-1]["header"] is None  # off by default
    finally:
        for s in (sink, gray, off):
            s.kill()


@pytest.mark.parametrize("attributes,host,port,expected", [
    # old HTTP conventions (http.url, net.peer.*)
    ({"http.url": "http://c:20001/p?q=1", "net.peer.name": "c", "net.peer.port": 20001}, "c-gray", 20001,
     {"http.url": "http://c-gray:20001/p?q=1", "net.peer.name": "c-gray", "net.peer.port": 20001,
      "graybaggage.route.original_url": "http://c:20001/p?q=1"}),
    # stable conventions (url.full, server.*), another port
    ({"url.full": "https://c/p", "server.address": "c", "server.port": 443}, "c-gray.ns", 8443,
     {"url.full": "https://c-gray.ns:8443/p", "server.address": "c-gray.ns", "server.port": 8443,
      "graybaggage.route.original_url": "https://c/p"}),
    # both (OTEL_SEMCONV_STABILITY_OPT_IN=http/dup): both changed, the original once
    ({"url.full": "http://c:80/", "http.url": "http://c:80/"}, "10.0.0.7", 80,
     {"url.full": "http://10.0.0.7/", "http.url": "http://10.0.0.7/", "graybaggage.route.original_url": "http://c:80/"}),
    # an IPv6 target is bracketed; the old http.host follows
    ({"http.url": "http://c:1/", "http.host": "c:1"}, "::1", 2,
     {"http.url": "http://[::1]:2/", "http.host": "[::1]:2", "graybaggage.route.original_url": "http://c:1/"}),
    # attributes the span does not have are not added
    ({"http.method": "GET"}, "c-gray", 1, {}),
])
def test_reroute_attributes_follow_the_semantic_conventions(attributes, host, port, expected):
    from graybaggage._spans import reroute_attributes

    assert reroute_attributes(attributes, host, port) == expected


def test_only_a_client_span_is_rewritten():
    from opentelemetry.trace import SpanKind

    from graybaggage._spans import client_span_reroute

    class Span:
        def __init__(self, kind):
            self.kind, self.attributes = kind, {"http.url": "http://c/"}

    assert client_span_reroute(Span(SpanKind.SERVER), "g", 1) == {}
    assert client_span_reroute(Span(SpanKind.CLIENT), "g", 1)["http.url"] == "http://g:1/"


def test_strict_error_is_named_as_documented_in_tracebacks():
    import traceback

    from graybaggage.routing import LaneUnavailableError, strict_error_class

    cls = strict_error_class(ConnectionRefusedError)
    assert issubclass(cls, LaneUnavailableError) and issubclass(cls, ConnectionRefusedError)
    line = traceback.format_exception_only(cls("lane 'gray' target x is unavailable"))[-1]
    assert line.startswith("graybaggage.routing.LaneUnavailableError: lane 'gray'"), line
