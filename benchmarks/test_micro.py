"""Micro benchmarks for graybaggage's per-request steps (pytest-benchmark).

Run (not part of the normal test run: pytest's ``testpaths`` is ``tests``):

    pytest benchmarks/test_micro.py --benchmark-only

Targets (issue 2 / issue 3): extract <= 3 us, inject <= 2 us, route decision <= 1 us per call.
These are benchmarks, not pass/fail tests: they assert correctness, never timing.
Every benchmark runs against settings built from an empty environment, so the caller's
GRAYBAGGAGE_* variables do not change what is measured.
"""
from __future__ import annotations

import json

import pytest
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from graybaggage import _runtime, config
from graybaggage._request import WSGIRequestView
from graybaggage.dye import parse_rules
from graybaggage.integrations import _client
from graybaggage.integrations import requests as gb_requests
from graybaggage.integrations._server import handle_wsgi
from graybaggage.lane import get_lane, set_lane
from graybaggage.propagator import LanePropagator
from graybaggage.table import parse_table

KEY = "x-mse-tag"
SEED_RULE = [{"lane": "gray", "conditions": [
    {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]}]


def _settings(**env: str) -> config.Settings:
    return config.load_settings(env=dict(env))


@pytest.fixture(autouse=True)
def _clean_context():
    """Each benchmark starts (and ends) with an empty OTel context."""
    token = attach(Context())
    yield
    detach(token)


@pytest.fixture
def runtime():
    """Install a runtime from an explicit (empty unless given) environment; restore afterwards."""
    installed = []

    def make(**env: str) -> _runtime.Runtime:
        rt = _runtime.install(_settings(**env))
        installed.append(rt)
        return rt

    yield make
    if installed:
        _runtime.uninstall()


# --------------------------------------------------------------------------------------------------
# Lane propagator: extract / inject
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prop() -> LanePropagator:
    return LanePropagator(_settings())


@pytest.mark.benchmark(group="propagator-extract")
def test_extract_header(benchmark, prop):
    carrier = {KEY: "gray", "user-agent": "bench", "accept": "*/*"}
    ctx = benchmark(prop.extract, carrier)
    assert get_lane(KEY, ctx) == "gray"


@pytest.mark.benchmark(group="propagator-extract")
def test_extract_baggage_only(benchmark, prop):
    carrier = {"baggage": f"{KEY}=gray", "user-agent": "bench"}
    ctx = benchmark(prop.extract, carrier)
    assert get_lane(KEY, ctx) == "gray"


@pytest.mark.benchmark(group="propagator-extract")
def test_extract_baggage_only_3_members(benchmark, prop):
    carrier = {"baggage": f"userid=alice,{KEY}=gray;prop=1,isproduction=false"}
    ctx = benchmark(prop.extract, carrier)
    assert get_lane(KEY, ctx) == "gray"


@pytest.mark.benchmark(group="propagator-extract")
def test_extract_absent(benchmark, prop):
    carrier = {"user-agent": "bench", "accept": "*/*"}
    ctx = benchmark(prop.extract, carrier)
    assert get_lane(KEY, ctx) is None


@pytest.mark.benchmark(group="propagator-extract")
def test_reference_otel_w3c_baggage_extract(benchmark):
    """Reference point: OpenTelemetry's own W3C baggage propagator on the same baggage header."""
    w3c = W3CBaggagePropagator()
    carrier = {"baggage": f"{KEY}=gray"}
    ctx = benchmark(w3c.extract, carrier)
    assert otel_baggage.get_baggage(KEY, ctx) == "gray"


# --------------------------------------------------------------------------------------------------
# The global propagator in tracing mode: OpenTelemetry's default plus the lane, as graybaggage composes it
# (tracecontext + LaneBaggagePropagator) and as the plain composition would (default, then lane)
# --------------------------------------------------------------------------------------------------
_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _global_pair():
    from opentelemetry.propagators.composite import CompositePropagator

    from graybaggage.instrumentor import compose

    default = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    return {"graybaggage": compose(default, _settings()),
            "reference_plain_composition": CompositePropagator([default, LanePropagator(_settings())])}


@pytest.mark.benchmark(group="global-propagator")
@pytest.mark.parametrize("which", ["graybaggage", "reference_plain_composition"])
def test_global_extract_tagged_request(benchmark, which):
    p = _global_pair()[which]
    carrier = {KEY: "gray", "baggage": f"{KEY}=gray", "traceparent": _TRACEPARENT}
    ctx = benchmark(p.extract, carrier)
    assert get_lane(KEY, ctx) == "gray"


@pytest.mark.benchmark(group="global-propagator")
@pytest.mark.parametrize("which", ["graybaggage", "reference_plain_composition"])
def test_global_inject_lane(benchmark, which):
    p = _global_pair()[which]
    ctx = set_lane(KEY, "gray", Context())

    def run() -> dict:
        carrier: dict = {}
        p.inject(carrier, ctx)
        return carrier

    assert benchmark(run) == {"baggage": f"{KEY}=gray", KEY: "gray"}


@pytest.mark.benchmark(group="propagator-inject")
def test_inject_dict(benchmark, prop):
    ctx = set_lane(KEY, "gray", Context())

    def run() -> dict:
        carrier: dict = {}
        prop.inject(carrier, ctx)
        return carrier

    carrier = benchmark(run)
    assert carrier == {KEY: "gray", "baggage": f"{KEY}=gray"}


@pytest.mark.benchmark(group="propagator-inject")
def test_inject_dict_current_context(benchmark, prop):
    """Inject with ``context=None`` (reads the current context, as instrumentations do)."""
    token = attach(set_lane(KEY, "gray", Context()))
    try:
        def run() -> dict:
            carrier: dict = {}
            prop.inject(carrier)
            return carrier

        carrier = benchmark(run)
    finally:
        detach(token)
    assert carrier == {KEY: "gray", "baggage": f"{KEY}=gray"}


@pytest.mark.benchmark(group="propagator-inject")
def test_inject_no_lane(benchmark, prop):
    ctx = Context()

    def run() -> dict:
        carrier: dict = {}
        prop.inject(carrier, ctx)
        return carrier

    assert benchmark(run) == {}


@pytest.mark.benchmark(group="propagator-inject")
def test_reference_empty_dict(benchmark):
    """Reference point: the cost of the benchmark's own ``carrier = {}`` + call overhead."""

    def run() -> dict:
        carrier: dict = {}
        return carrier

    assert benchmark(run) == {}


@pytest.mark.benchmark(group="propagator-inject")
def test_reference_otel_w3c_baggage_inject(benchmark):
    w3c = W3CBaggagePropagator()
    ctx = otel_baggage.set_baggage(KEY, "gray", Context())

    def run() -> dict:
        carrier: dict = {}
        w3c.inject(carrier, ctx)
        return carrier

    assert benchmark(run) == {"baggage": f"{KEY}=gray"}


@pytest.mark.benchmark(group="propagator-inject")
def test_reference_otel_tracecontext_inject_no_span(benchmark):
    """Reference point: tracecontext inject with no span (what the no-SDK case pays per outbound call)."""
    tc = TraceContextTextMapPropagator()
    ctx = Context()

    def run() -> dict:
        carrier: dict = {}
        tc.inject(carrier, ctx)
        return carrier

    assert benchmark(run) == {}


# --------------------------------------------------------------------------------------------------
# Route decision: LaneTable.decide on 1,000 services x 10 lanes
# --------------------------------------------------------------------------------------------------
N_SERVICES = 1000
N_LANES = 10


def _big_table_data() -> dict:
    lanes = {}
    for j in range(N_LANES):
        routes = {}
        for i in range(N_SERVICES):
            # mix the destination forms the table allows: bare service, svc.ns, host:port
            if i % 3 == 0:
                routes[f"svc-{i}"] = f"svc-{i}-lane{j}"
            elif i % 3 == 1:
                routes[f"svc-{i}.default"] = f"svc-{i}-lane{j}.default"
            else:
                routes[f"svc-{i}:8080"] = f"svc-{i}-lane{j}:9090"
        lanes[f"lane{j}"] = {"fallback": "base", "routes": routes}
    return {"version": 1, "namespace": "default", "lanes": lanes}


@pytest.fixture(scope="module")
def big_table():
    return parse_table(_big_table_data())


def test_table_size(big_table):
    assert len(big_table.lanes) == N_LANES
    assert all(len(lane.routes) == N_SERVICES for lane in big_table.lanes.values())


@pytest.mark.benchmark(group="route-decide")
def test_decide_hit(benchmark, big_table):
    route = benchmark(big_table.decide, "lane7", "svc-501", 8080)
    assert route is not None and route.host == "svc-501-lane7" and route.port == 8080


@pytest.mark.benchmark(group="route-decide")
def test_decide_hit_host_port(benchmark, big_table):
    route = benchmark(big_table.decide, "lane7", "svc-500", 8080)
    assert route is not None and route.authority == "svc-500-lane7:9090"


@pytest.mark.benchmark(group="route-decide")
def test_decide_hit_fqdn(benchmark, big_table):
    route = benchmark(big_table.decide, "lane7", "svc-501.default.svc.cluster.local", 8080)
    assert route is not None and route.host == "svc-501-lane7.default.svc.cluster.local"


@pytest.mark.benchmark(group="route-decide")
def test_decide_miss_unknown_host(benchmark, big_table):
    assert benchmark(big_table.decide, "lane7", "not-a-service", 8080) is None


@pytest.mark.benchmark(group="route-decide")
def test_decide_unknown_lane(benchmark, big_table):
    assert benchmark(big_table.decide, "blue", "svc-501", 8080) is None


@pytest.mark.benchmark(group="route-decide")
def test_decide_no_lane(benchmark, big_table):
    assert benchmark(big_table.decide, None, "svc-501", 8080) is None


@pytest.mark.benchmark(group="route-decide")
def test_decide_uncached_hit(benchmark, big_table):
    """The first decision for a (lane, host, port): the memo is bypassed (private ``_decide``)."""
    entry = big_table.lanes["lane7"]

    def run():
        big_table._host_cache.clear()
        return big_table._decide(entry, "lane7", "svc-501", 8080, "default")

    route = benchmark(run)
    assert route is not None and route.host == "svc-501-lane7"


@pytest.mark.benchmark(group="route-decide")
def test_decide_uncached_miss(benchmark, big_table):
    entry = big_table.lanes["lane7"]

    def run():
        big_table._host_cache.clear()
        return big_table._decide(entry, "lane7", "not-a-service", 8080, "default")

    assert benchmark(run) is None


@pytest.mark.benchmark(group="route-decide")
def test_client_decide_from_url(benchmark, runtime):
    """What a client integration pays per call: urlsplit + Router.decide (table from GRAYBAGGAGE_LANE_TABLE)."""
    rt = runtime(GRAYBAGGAGE_LANE_TABLE=json.dumps(_big_table_data()))
    route, _ = benchmark(_client.decide, rt, "lane7", "http://svc-501:8080/api/items?x=1")
    assert route is not None and route.host == "svc-501-lane7"


# --------------------------------------------------------------------------------------------------
# Dye rules: the seed rule over a WSGI request view
# --------------------------------------------------------------------------------------------------
def _environ(**headers: str) -> dict:
    env = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/api", "QUERY_STRING": "a=1", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_ACCEPT": "*/*", "HTTP_ACCEPT_ENCODING": "gzip, deflate",
    }
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    return env


@pytest.fixture(scope="module")
def seed_rules():
    return parse_rules(SEED_RULE)


@pytest.mark.benchmark(group="dye")
def test_dye_seed_rule_match(benchmark, seed_rules):
    environ = _environ(USER_AGENT="xiaoming")
    assert benchmark(lambda: seed_rules.evaluate(WSGIRequestView(environ))) == "gray"


@pytest.mark.benchmark(group="dye")
def test_dye_seed_rule_no_match(benchmark, seed_rules):
    environ = _environ(USER_AGENT="python-requests/2.34")
    assert benchmark(lambda: seed_rules.evaluate(WSGIRequestView(environ))) is None


@pytest.mark.benchmark(group="dye")
def test_dye_seed_rule_header_absent(benchmark, seed_rules):
    environ = _environ()
    assert benchmark(lambda: seed_rules.evaluate(WSGIRequestView(environ))) is None


# --------------------------------------------------------------------------------------------------
# WSGI inbound step: graybaggage.integrations._server.handle_wsgi
# --------------------------------------------------------------------------------------------------
def _current_lane() -> str | None:
    return get_lane(KEY)


def _request(environ: dict):
    """One request through the inbound step, as a WSGI server runs it: a fresh environ (handle_wsgi marks the
    environ it decided), the app, then the response closed (which detaches the lane). Returns the lane the
    app saw."""
    env = environ.copy()
    seen = []
    body = handle_wsgi(env, lambda: seen.append(get_lane(KEY)) or ())
    body.close()
    return seen[0]


def _bench_inbound(benchmark, environ: dict):
    lane = benchmark(_request, environ)
    assert get_value_none()  # detached again after the response
    return lane


@pytest.mark.benchmark(group="wsgi-inbound")
def test_wsgi_inbound_header(benchmark, runtime):
    runtime()
    assert _bench_inbound(benchmark, _environ(X_MSE_TAG="gray")) == "gray"


@pytest.mark.benchmark(group="wsgi-inbound")
def test_wsgi_inbound_baggage_only(benchmark, runtime):
    runtime()
    assert _bench_inbound(benchmark, _environ(BAGGAGE=f"userid=alice,{KEY}=gray")) == "gray"


@pytest.mark.benchmark(group="wsgi-inbound")
def test_wsgi_inbound_untagged(benchmark, runtime):
    runtime()
    assert _bench_inbound(benchmark, _environ()) is None


@pytest.mark.benchmark(group="wsgi-inbound")
def test_wsgi_inbound_dye_rule_match(benchmark, runtime):
    """Edge service with the seed dye rule: an untagged request is dyed gray by User-Agent."""
    runtime(GRAYBAGGAGE_DYE_RULES=json.dumps(SEED_RULE), GRAYBAGGAGE_EDGE="1")
    assert _bench_inbound(benchmark, _environ(USER_AGENT="xiaoming")) == "gray"


@pytest.mark.benchmark(group="wsgi-inbound")
def test_wsgi_inbound_dye_rule_no_match(benchmark, runtime):
    runtime(GRAYBAGGAGE_DYE_RULES=json.dumps(SEED_RULE), GRAYBAGGAGE_EDGE="1")
    assert _bench_inbound(benchmark, _environ(USER_AGENT="python-requests/2.34")) is None


@pytest.mark.benchmark(group="wsgi-inbound")
def test_reference_wsgi_call_only(benchmark):
    """Reference point: the same scaffolding (environ copy, the app reading the lane) with no graybaggage step."""
    environ = _environ(X_MSE_TAG="gray")

    def run():
        env = environ.copy()
        seen = []
        body = (lambda: seen.append(get_lane(KEY)) or ())()
        getattr(body, "close", lambda: None)()
        return seen[0] if env else None

    assert benchmark(run) is None


def get_value_none() -> bool:
    """After a request the lane is detached again (context restored)."""
    return get_lane(KEY, get_current()) is None


# --------------------------------------------------------------------------------------------------
# requests outbound step: graybaggage.integrations.requests._send (headers + route decision)
# --------------------------------------------------------------------------------------------------
class _FakeRequest:
    """Just what the hook touches on a ``requests.PreparedRequest``: ``method``, ``headers``, ``url``."""

    __slots__ = ("headers", "method", "url")

    def __init__(self, url: str) -> None:
        from requests.structures import CaseInsensitiveDict

        # requests' default headers, as a prepared request carries them
        self.headers = CaseInsensitiveDict({
            "User-Agent": "python-requests/2.34.2", "Accept-Encoding": "gzip, deflate",
            "Accept": "*/*", "Connection": "keep-alive",
        })
        self.url = url
        self.method = "GET"


def _wrapped_send(request: _FakeRequest, **kwargs):  # stands in for HTTPAdapter.send
    return request


URL = "http://127.0.0.1:8002/api?x=1"


@pytest.mark.benchmark(group="requests-outbound")
def test_reference_build_request(benchmark):
    """Reference point: building the fake prepared request (subtract from the numbers below)."""
    req = benchmark(_FakeRequest, URL)
    assert req.url == URL


@pytest.mark.benchmark(group="requests-outbound")
def test_requests_outbound_lane_no_table(benchmark, runtime):
    rt = runtime()
    token = attach(set_lane(KEY, "gray", Context()))
    try:
        req = benchmark(lambda: gb_requests._send(_wrapped_send, None, (_FakeRequest(URL),), {}))
    finally:
        detach(token)
    assert req.headers[KEY] == "gray" and req.headers["baggage"] == f"{KEY}=gray" and req.url == URL
    assert rt.settings.routing


@pytest.mark.benchmark(group="requests-outbound")
def test_requests_outbound_lane_table_miss(benchmark, runtime):
    """Lane set, table has the lane but not this destination: headers + decision, no re-route."""
    runtime(GRAYBAGGAGE_LANE_TABLE=json.dumps(
        {"version": 1, "lanes": {"gray": {"routes": {"127.0.0.1:9999": "127.0.0.1:9998"}}}}))
    token = attach(set_lane(KEY, "gray", Context()))
    try:
        req = benchmark(lambda: gb_requests._send(_wrapped_send, None, (_FakeRequest(URL),), {}))
    finally:
        detach(token)
    assert req.url == URL and req.headers[KEY] == "gray"


@pytest.mark.benchmark(group="requests-outbound")
def test_requests_outbound_lane_routed(benchmark, runtime):
    """Lane set and routed: headers + decision + URL rewrite + routing.send bookkeeping (no-op meter)."""
    runtime(GRAYBAGGAGE_LANE_TABLE=json.dumps(
        {"version": 1, "lanes": {"gray": {"routes": {"127.0.0.1:8002": "127.0.0.1:8012"}}}}))
    token = attach(set_lane(KEY, "gray", Context()))
    try:
        req = benchmark(lambda: gb_requests._send(_wrapped_send, None, (_FakeRequest(URL),), {}))
    finally:
        detach(token)
    assert req.url == "http://127.0.0.1:8012/api?x=1" and req.headers[KEY] == "gray"


@pytest.mark.benchmark(group="requests-outbound")
def test_urllib3_pool_hook_after_requests(benchmark, runtime):
    """The second outbound pass a requests call pays: graybaggage's urllib3 ``HTTPConnectionPool.urlopen``
    hook, with the headers requests already tagged (``kwargs["headers"]`` as requests passes them)."""
    from graybaggage.integrations import urllib3 as gb_urllib3

    runtime()
    headers = _FakeRequest(URL).headers
    headers[KEY] = "gray"
    headers["baggage"] = f"{KEY}=gray"
    setattr(headers, gb_urllib3.HANDLED, True)  # what requests' hook leaves on the headers it tagged

    def wrapped(*args, **kwargs):
        return kwargs["headers"]

    token = attach(set_lane(KEY, "gray", Context()))
    try:
        out = benchmark(gb_urllib3._pool_urlopen, wrapped, None, ("GET", "/api?x=1"), {"headers": headers})
    finally:
        detach(token)
    assert out is headers


@pytest.mark.benchmark(group="requests-outbound")
def test_requests_outbound_no_lane(benchmark, runtime):
    runtime()
    req = benchmark(lambda: gb_requests._send(_wrapped_send, None, (_FakeRequest(URL),), {}))
    assert KEY not in req.headers and "baggage" not in req.headers


# --------------------------------------------------------------------------------------------------
# Tracing mode: the lane span processor's cost per span (SDK TracerProvider, no exporter)
# --------------------------------------------------------------------------------------------------
def _sdk_tracer(with_lane_processor: bool):
    from opentelemetry.sdk.trace import TracerProvider

    from graybaggage import _spans

    provider = TracerProvider()
    if with_lane_processor:
        assert _spans.add_span_processor(provider, KEY, "base")
    return provider.get_tracer("bench")


@pytest.mark.benchmark(group="sdk-span")
def test_reference_sdk_span_start_end(benchmark):
    tracer = _sdk_tracer(False)
    token = attach(set_lane(KEY, "gray", Context()))
    try:
        benchmark(lambda: tracer.start_span("op").end())
    finally:
        detach(token)


@pytest.mark.benchmark(group="sdk-span")
def test_sdk_span_start_end_with_lane_processor(benchmark):
    tracer = _sdk_tracer(True)
    token = attach(set_lane(KEY, "gray", Context()))
    try:
        benchmark(lambda: tracer.start_span("op").end())
        span = tracer.start_span("check")
        assert span.attributes["graybaggage.lane"] == "gray"
        span.end()
    finally:
        detach(token)
