"""The lane survives whatever OTEL_PROPAGATORS the user set and whatever re-extracts the request context
(OpenTelemetry's server middlewares in tracing mode, FastAPI's own telemetry when an SDK exists).

Real processes: a -> b -> c, where the lane table sends lane gray's calls to c to c-gray. The request enters
a with ``x-mse-tag: gray`` only (no baggage), so nothing but graybaggage's decision can carry it: gray must
reach c-gray, and an untagged request must stay on base all the way.
"""
from __future__ import annotations

import json

import pytest

from tests import support

PROPAGATORS = [None, "tracecontext,baggage", "tracecontext", "baggage", "b3,tracecontext,baggage"]

SDK = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
       "OTEL_BSP_SCHEDULE_DELAY": "100"}
SERVICES = {
    # Flask under graybaggage run, tracing mode: OpenTelemetry's WSGI middleware re-extracts inside the request
    "flask-tracing": {"HOP_KIND": "flask", "HOP_CLIENT": "requests", **SDK},
    "flask-lanes": {"HOP_KIND": "flask", "HOP_CLIENT": "requests"},
    # FastAPI 0.165 with an SDK configured by env but graybaggage in lanes mode: only FastAPI's built-in
    # telemetry re-extracts (propagate.extract whenever an SDK tracer provider exists)
    "fastapi-sdk-lanes": {"HOP_KIND": "fastapi", "HOP_CLIENT": "httpx-async", "GRAYBAGGAGE_MODE": "lanes", **SDK},
    # FastAPI in tracing mode: OpenTelemetry's ASGI middleware and FastAPI's telemetry
    "fastapi-tracing": {"HOP_KIND": "fastapi", "HOP_CLIENT": "httpx-async", **SDK},
}


@pytest.fixture(scope="module")
def leaves():
    c = support.start("c", {"HOP_KIND": "wsgi"})
    c_gray = support.start("c-gray", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray"})
    yield c, c_gray
    c.kill()
    c_gray.kill()


def _table(c: support.Service, c_gray: support.Service) -> str:
    return json.dumps({"version": 1, "lanes": {"gray": {"routes": {f"127.0.0.1:{c.port}": f"127.0.0.1:{c_gray.port}"}}}})


@pytest.mark.parametrize("propagators", PROPAGATORS, ids=lambda p: p or "unset")
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_gray_reaches_the_gray_leaf_whatever_the_propagators(leaves, service, propagators):
    c, c_gray = leaves
    env = {**SERVICES[service], "GRAYBAGGAGE_LANE_TABLE": _table(c, c_gray)}
    if propagators is not None:
        env["OTEL_PROPAGATORS"] = propagators
    b = support.start("b", {**env, "HOP_NEXT": c.url})
    a = support.start("a", {**env, "HOP_NEXT": b.url})
    try:
        gray = support.chain_of(support.get(a.url + "/x", {"x-mse-tag": "gray"}))
        assert support.served(gray[0]) == "a[base] -> b[base] -> c-gray[gray]", (gray, b.log[-2000:])
        assert [h["header"] for h in gray] == ["gray", "gray", "gray"]
        base = support.chain_of(support.get(a.url + "/x"))
        assert support.served(base[0]) == "a[base] -> b[base] -> c[base]", base
        assert [h["header"] for h in base] == [None, None, None]
        if "tracing" in service or "sdk" in service:
            info = support.get(b.url + "/otel")
            assert info["provider"] == "TracerProvider", info  # the re-extracting path really ran
    finally:
        a.kill()
        b.kill()
