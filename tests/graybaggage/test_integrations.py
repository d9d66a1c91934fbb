"""Every server, client and concurrency primitive forwards the lane, in both carrying modes.

Each case starts a real service (never importing graybaggage) with ``graybaggage run`` in front of a sink
service, sends a gray and an untagged request, and checks what the sink received.
"""
from __future__ import annotations

import pytest

from tests import support

MODES = {
    "lanes": {},
    "tracing": {"GRAYBAGGAGE_MODE": "tracing", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none"},
}


@pytest.fixture(scope="module", params=sorted(MODES))
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def sink(mode):
    s = support.start("sink", {"HOP_KIND": "wsgi", **MODES[mode]})
    yield s
    s.kill()


def _check(front: support.Service, sink: support.Service) -> None:
    gray = support.chain_of(support.get(front.url + "/p", {"x-mse-tag": "gray"}))
    assert gray[-1]["name"] == "sink"
    assert gray[-1]["header"] == "gray", gray
    assert "x-mse-tag=gray" in (gray[-1]["baggage"] or ""), gray
    base = support.chain_of(support.get(front.url + "/p"))
    assert base[-1]["header"] is None, base
    assert "x-mse-tag" not in (base[-1]["baggage"] or ""), base


@pytest.mark.parametrize("kind", ["flask", "wsgi", "asgi", "starlette", "django"])
def test_server(kind, mode, sink):
    front = support.start(f"front-{kind}", {"HOP_KIND": kind, "HOP_CLIENT": "requests", "HOP_NEXT": sink.url,
                                            **MODES[mode]})
    try:
        _check(front, sink)
    finally:
        front.kill()


@pytest.mark.parametrize("client", ["requests", "urllib3", "urllib", "httpx", "httpx-async", "aiohttp"])
def test_client(client, mode, sink):
    kind = "starlette" if client in ("httpx-async", "aiohttp") else "flask"
    front = support.start(f"front-{client}", {"HOP_KIND": kind, "HOP_CLIENT": client, "HOP_NEXT": sink.url,
                                              **MODES[mode]})
    try:
        _check(front, sink)
    finally:
        front.kill()


@pytest.mark.parametrize("inside,kind,client", [
    ("thread", "flask", "requests"),        # threading.Thread
    ("pool", "flask", "requests"),          # ThreadPoolExecutor.submit
    ("executor", "flask", "requests"),      # loop.run_in_executor
    ("gather", "flask", "requests"),        # asyncio.gather(to_thread)
    ("task", "flask", "requests"),          # asyncio.create_task
    ("gather", "starlette", "aiohttp"),     # asyncio.gather in an ASGI handler
    ("task", "starlette", "httpx-async"),   # create_task in an ASGI handler
])
def test_lane_survives_concurrency(inside, kind, client, mode, sink):
    front = support.start(f"front-{inside}", {"HOP_KIND": kind, "HOP_CLIENT": client, "HOP_INSIDE": inside,
                                              "HOP_NEXT": sink.url, **MODES[mode]})
    try:
        _check(front, sink)
    finally:
        front.kill()


def test_thread_propagation_can_be_switched_off(sink):
    """Control for the test above: with GRAYBAGGAGE_THREADS=0 a pooled call loses the lane."""
    front = support.start("front-nothreads", {"HOP_KIND": "flask", "HOP_INSIDE": "pool", "HOP_NEXT": sink.url,
                                              "GRAYBAGGAGE_THREADS": "0"})
    try:
        gray = support.chain_of(support.get(front.url + "/p", {"x-mse-tag": "gray"}))
        assert gray[-1]["header"] is None
    finally:
        front.kill()


def _gunicorn(name: str, app: str, mode: str, sink: support.Service) -> support.Service:
    """``app`` (a tests.apps.hop attribute) served by gunicorn with 2 workers, in front of ``sink``."""
    port = support.free_port()
    return support.start(name, {"HOP_NEXT": sink.url, "PYTHONPATH": str(support.ROOT), **MODES[mode]},
                         port=port, cmd=[str(support.BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}",
                                         f"tests.apps.hop:{app}"])


def test_gunicorn_serving_a_plain_wsgi_app(mode, sink):
    front = _gunicorn("front-gunicorn", "wsgi_app", mode, sink)
    try:
        _check(front, sink)
    finally:
        front.kill()


def test_gunicorn_serving_a_flask_app(mode, sink):
    """gunicorn adds no layer of its own over a Flask app (Flask's hook decides); lanes still flow, and an
    invalid tag still lands on base."""
    front = _gunicorn("front-gunicorn-flask", "make_flask()", mode, sink)
    try:
        _check(front, sink)
        bad = support.chain_of(support.get(front.url + "/p", {"x-mse-tag": "GRAY;drop"}))
        assert bad[-1]["header"] is None and "x-mse-tag" not in (bad[-1]["baggage"] or ""), bad
    finally:
        front.kill()


def test_server_hooks_add_no_second_layer_over_a_hooked_framework():
    """The skip rule behind the test above: wrap_wsgi_app leaves an app of a class graybaggage hooks alone
    and wraps anything else."""
    import flask

    import graybaggage
    from graybaggage.integrations._server import wrap_wsgi_app

    graybaggage.instrument(mode="lanes")
    try:
        app = flask.Flask("t")

        class Sub(flask.Flask):
            pass

        def plain(environ, start_response):
            return []

        assert wrap_wsgi_app(app) is app
        assert wrap_wsgi_app(Sub("s")).__class__ is Sub
        wrapped = wrap_wsgi_app(plain)
        assert wrapped is not plain and wrapped.__wrapped__ is plain
        assert wrap_wsgi_app(wrapped) is wrapped
    finally:
        graybaggage.uninstrument()
    assert wrap_wsgi_app(app) is not app  # Flask is no longer hooked: the server layer is needed again


def test_no_lane_leaks_between_requests_through_an_inner_otel_middleware(mode, sink):
    """OpenTelemetry's WSGI middleware detaches after the body is iterated; graybaggage's hook must detach
    after that too, or the next request on the worker thread inherits the lane."""
    port = support.free_port()
    front = support.start("front-otelwsgi", {"HOP_NEXT": sink.url, "PYTHONPATH": str(support.ROOT), **MODES[mode]},
                          port=port, cmd=[str(support.BIN / "gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}",
                                          "tests.apps.hop:otel_wsgi_app"])
    try:
        seen = [support.chain_of(support.get(front.url + "/p", {"x-mse-tag": lane} if lane else {}))[-1]["header"]
                for lane in ("gray", None, "blue", None, None)]
        assert seen == ["gray", None, "blue", None, None]
    finally:
        front.kill()


def test_streaming_body_runs_in_the_lane(mode):
    front = support.start("front-stream", {"HOP_KIND": "wsgi", **MODES[mode]})
    try:
        assert support.get(front.url + "/stream", {"x-mse-tag": "gray"})["lane_while_streaming"] == "gray"
        assert support.get(front.url + "/stream")["lane_while_streaming"] is None
    finally:
        front.kill()


@pytest.mark.parametrize("client", ["requests", "urllib3", "urllib", "httpx", "httpx-async", "aiohttp"])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_the_apps_own_baggage_is_merged_with_the_lane(client, as_bytes, mode, sink):
    """An app that sends its own ``baggage`` header (as bytes too, which requests, urllib3, urllib and httpx
    accept) still makes its call: the lane is merged in, and in lanes-only mode the app's members stay."""
    if as_bytes and client == "aiohttp":
        pytest.skip("aiohttp itself refuses bytes header values")
    kind = "starlette" if client in ("httpx-async", "aiohttp") else "flask"
    front = support.start(f"front-{client}-own-baggage", {
        "HOP_KIND": kind, "HOP_CLIENT": client, "HOP_NEXT": sink.url, "HOP_SEND_BAGGAGE": "user=7",
        "HOP_SEND_BYTES": "1" if as_bytes else "0", **MODES[mode]})
    try:
        gray = support.chain_of(support.get(front.url + "/p", {"x-mse-tag": "gray"}))
        assert gray[-1]["name"] == "sink" and gray[-1]["header"] == "gray", gray
        members = (gray[-1]["baggage"] or "").split(",")
        assert "x-mse-tag=gray" in members, gray
        if mode == "lanes":
            assert "user=7" in members, gray
        base = support.chain_of(support.get(front.url + "/p"))
        assert base[-1]["header"] is None and "x-mse-tag=gray" not in (base[-1]["baggage"] or ""), base
    finally:
        front.kill()
