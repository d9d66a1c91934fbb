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


def test_routed_and_fallback_calls_are_counted_and_on_spans(base_server):
    import requests

    live = support.start("live", {"HOP_KIND": "wsgi"})
    dead = support.free_port()
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
