"""A test service that never imports graybaggage: it reports what it received and calls the next hop.

Env: HOP_NAME, HOP_PORT, HOP_KIND (flask | wsgi | asgi | starlette | fastapi | django), HOP_CLIENT (requests |
urllib3 | urllib | httpx | httpx-async | aiohttp), HOP_NEXT (URL of the next hop or empty),
HOP_INSIDE (direct | thread | pool | executor | gather: how the outbound call is made), HOP_SEND_BAGGAGE (a
``baggage`` header the app itself sends on its outbound call; as bytes with HOP_SEND_BYTES=1).
Every response is JSON: {"name", "lane" (instance lane), "header", "baggage", "served", "next"}.
GET /stats returns how many requests this process served per received lane header.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
import threading

NAME = os.environ.get("HOP_NAME", "hop")
PORT = int(os.environ.get("HOP_PORT", "0"))
KIND = os.environ.get("HOP_KIND", "flask")
CLIENT = os.environ.get("HOP_CLIENT", "requests")
NEXT = os.environ.get("HOP_NEXT", "")
INSIDE = os.environ.get("HOP_INSIDE", "direct")
_SEND = os.environ.get("HOP_SEND_BAGGAGE")
SEND_HEADERS = {} if _SEND is None else {
    "baggage": _SEND.encode("latin-1") if os.environ.get("HOP_SEND_BYTES") == "1" else _SEND}
INSTANCE = os.environ.get("GRAYBAGGAGE_LANE", "base")
HEADER = os.environ.get("GRAYBAGGAGE_HEADER", "x-mse-tag")
_stats: dict[str, int] = {}
_stats_lock = threading.Lock()
_session = None
_pool = None
_async_clients: dict = {}


def _sync_call(url: str) -> dict:
    global _session, _pool
    if CLIENT == "requests":
        import requests

        if _session is None:
            _session = requests.Session()
        r = _session.get(url, headers=SEND_HEADERS, timeout=10)
        r.raise_for_status()
        return r.json()
    if CLIENT == "urllib3":
        import urllib3

        if _pool is None:
            _pool = urllib3.PoolManager()
        r = _pool.request("GET", url, headers=SEND_HEADERS or None, timeout=10)
        return json.loads(r.data)
    if CLIENT == "urllib":
        import urllib.request

        with urllib.request.urlopen(urllib.request.Request(url, headers=SEND_HEADERS), timeout=10) as r:
            return json.loads(r.read())
    if CLIENT == "httpx":
        import httpx

        if _session is None:
            _session = httpx.Client(timeout=10)
        return _session.get(url, headers=SEND_HEADERS).json()
    if CLIENT in ("httpx-async", "aiohttp"):
        return asyncio.run(_async_call(url))
    raise SystemExit(f"unknown HOP_CLIENT {CLIENT}")


async def _async_call(url: str) -> dict:
    if CLIENT == "httpx-async":
        import httpx

        async with httpx.AsyncClient(timeout=10) as c:
            return (await c.get(url, headers=SEND_HEADERS)).json()
    if CLIENT == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers=SEND_HEADERS) as r:
                return await r.json()
    return await asyncio.get_running_loop().run_in_executor(None, _sync_call, url)


def call_next(path: str) -> dict | None:
    if not NEXT:
        return None
    url = NEXT + path
    if INSIDE == "thread":
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(_sync_call(url)))
        t.start()
        t.join()
        return out
    if INSIDE == "pool":
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            return ex.submit(_sync_call, url).result()
    if INSIDE in ("executor", "gather", "task"):
        async def main() -> dict:
            loop = asyncio.get_running_loop()
            if INSIDE == "executor":
                return await loop.run_in_executor(None, _sync_call, url)
            if INSIDE == "task":
                return await asyncio.create_task(asyncio.to_thread(_sync_call, url))
            (res,) = await asyncio.gather(asyncio.to_thread(_sync_call, url))
            return res
        return asyncio.run(main())
    return _sync_call(url)


async def call_next_async(path: str) -> dict | None:
    if not NEXT:
        return None
    if CLIENT in ("httpx-async", "aiohttp"):
        if INSIDE == "gather":
            (res,) = await asyncio.gather(_async_call(NEXT + path))
            return res
        if INSIDE == "task":
            return await asyncio.create_task(_async_call(NEXT + path))
        return await _async_call(NEXT + path)
    return await asyncio.get_running_loop().run_in_executor(None, call_next, path)


def report(header: str | None, baggage: str | None, nxt: dict | None) -> bytes:
    with _stats_lock:
        _stats[header or ""] = _stats.get(header or "", 0) + 1
    return json.dumps({"name": NAME, "lane": INSTANCE, "header": header, "baggage": baggage,
                       "served": f"{NAME}[{INSTANCE}]", "next": nxt}).encode()


def otel_info() -> bytes:
    """What OpenTelemetry looks like inside this process (the app may import opentelemetry, not graybaggage)."""
    from opentelemetry import propagate, trace

    provider = trace.get_tracer_provider()
    asp = getattr(provider, "_active_span_processor", None)
    processors = [type(p).__name__ for p in getattr(asp, "_span_processors", ())]
    exporters = [type(getattr(p, "span_exporter", None) or getattr(getattr(p, "_batch_processor", None), "_exporter", None)).__name__
                 for p in getattr(asp, "_span_processors", ())]
    def flat(p):  # the global propagator's leaves, in order
        parts = getattr(p, "_propagators", None)
        return [type(p).__name__] if parts is None else [name for part in parts for name in flat(part)]

    return json.dumps({"provider": type(provider).__name__, "processors": processors, "exporters": exporters,
                       "propagator": repr(propagate.get_global_textmap().fields),
                       "propagators": flat(propagate.get_global_textmap())}).encode()


def stats() -> bytes:
    with _stats_lock:
        return json.dumps({"name": NAME, "lane": INSTANCE, "stats": dict(_stats)}).encode()


def __getattr__(name: str):
    """``otel_wsgi_app``: the plain WSGI app inside OpenTelemetry's WSGI middleware (for gunicorn)."""
    if name == "otel_wsgi_app":
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(wsgi_app)
    raise AttributeError(name)


def _wsgi_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def wsgi_app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/stream":  # a streaming body: produced after the app returned, still inside the request
        def body():
            from opentelemetry import baggage

            yield json.dumps({"name": NAME, "lane_while_streaming": baggage.get_baggage(HEADER)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return body()
    if path == "/stats":
        body = stats()
    elif path == "/otel":
        body = otel_info()
    else:
        body = report(environ.get(_wsgi_key(HEADER)), environ.get("HTTP_BAGGAGE"),
                      call_next(path + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if scope["path"] == "/stats":
        body = stats()
    else:
        body = report(headers.get(HEADER), headers.get("baggage"), await call_next_async(scope["path"]))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make_flask():
    from flask import Flask, Response, request

    app = Flask(NAME)

    @app.route("/stats")
    def _stats_view():
        return Response(stats(), mimetype="application/json")

    @app.route("/otel")
    def _otel_view():
        return Response(otel_info(), mimetype="application/json")

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def _hop(path):
        nxt = call_next("/" + path)
        return Response(report(request.headers.get(HEADER), request.headers.get("baggage"), nxt),
                        mimetype="application/json")

    return app


def make_starlette():
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def hop(request):
        if request.url.path == "/stats":
            return Response(stats(), media_type="application/json")
        nxt = await call_next_async(request.url.path)
        return Response(report(request.headers.get(HEADER), request.headers.get("baggage"), nxt),
                        media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", hop)])


def make_fastapi():
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()

    async def hop(request):  # a plain endpoint (this module's postponed annotations would hide Request)
        if request.url.path == "/stats":
            return Response(stats(), media_type="application/json")
        if request.url.path == "/otel":
            return Response(otel_info(), media_type="application/json")
        nxt = await call_next_async(request.url.path)
        return Response(report(request.headers.get(HEADER), request.headers.get("baggage"), nxt),
                        media_type="application/json")

    app.add_route("/{path:path}", hop)
    return app


def make_django():
    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import re_path

    def hop(request, path=""):
        if request.path == "/stats":
            return HttpResponse(stats(), content_type="application/json")
        nxt = call_next(request.path)
        return HttpResponse(report(request.headers.get(HEADER), request.headers.get("baggage"), nxt),
                            content_type="application/json")

    values = dict(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test", INSTALLED_APPS=[])
    if settings.configured:  # the OTel Django instrumentation configured (and added its middleware) already
        for k, v in values.items():
            setattr(settings, k, v)
    else:
        settings.configure(MIDDLEWARE=[], **values)
    global urlpatterns
    urlpatterns = [re_path(r"^(?P<path>.*)$", hop)]
    django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def serve() -> None:
    if KIND in ("asgi", "starlette", "fastapi"):
        import uvicorn

        app = {"asgi": lambda: asgi_app, "starlette": make_starlette, "fastapi": make_fastapi}[KIND]()
        # keep-alive longer than uvicorn's 5 s: on a loaded machine a client may reuse a pooled connection just
        # as the server times it out (a reset seen in test_concurrency); uvicorn still closes idle ones at stop
        uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False, timeout_keep_alive=30)
        return
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
    from socketserver import ThreadingMixIn

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = False  # graceful stop: server_close() waits for in-flight requests
        block_on_close = True
        request_queue_size = 256

    stopping = threading.Event()

    class Quiet(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"
        # how long a connection may take to send its request: wsgiref answers one request per connection
        # (HTTP/1.0), so this bounds only a client's silence. 2 s cut off clients a loaded 2-core machine had
        # not scheduled yet ("Server disconnected without sending a response" in test_concurrency)
        timeout = 30

        def handle_one_request(self):
            super().handle_one_request()
            if stopping.is_set():  # draining: finish this request, then close its keep-alive connection
                self.close_connection = True

        def log_message(self, *a):
            pass

    app = {"flask": make_flask, "django": make_django}.get(KIND, lambda: wsgi_app)()
    import signal

    srv = make_server("127.0.0.1", PORT, app, server_class=Server, handler_class=Quiet)

    def on_term(*_):  # like a production server: stop listening at once, then finish in-flight requests
        stopping.set()
        srv.socket.close()

    signal.signal(signal.SIGTERM, on_term)
    print(f"{NAME} listening on {srv.server_port}", file=sys.stderr, flush=True)
    srv.timeout = 0.2
    while not stopping.is_set():
        try:
            srv.handle_request()
        except (OSError, ValueError):
            if stopping.is_set():
                break
            raise
    srv.server_close()  # joins the request threads


if __name__ == "__main__":
    serve()
