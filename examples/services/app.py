"""One of the seed's services (a, b or c), or the edge in front of them. It never imports graybaggage:
lanes are switched on by ``graybaggage run`` and environment variables only.

Env: SERVICE_NAME (a | b | c | edge), SERVICE_VERSION, PORT, NEXT (URL of the service it calls, if any),
GRAYBAGGAGE_LANE (which lane this instance serves; set by the controller in Kubernetes), else
MSE_ALICLOUD_SERVICE_TAG (MSE's name, read the same way by the library; with Kruise Rollout, from the pod's
``alicloud.service.tag`` label through the downward API), else base;
SHUTDOWN_DELAY_SECONDS (default 0): on SIGTERM keep serving this long, then stop accepting and finish the
requests in flight, as a Kubernetes pod should (its endpoints are withdrawn while it still serves).

GET /<anything> answers with this service's name, version and instance lane plus the chain below it:
as JSON (``Accept: application/json`` or ``?format=json``) or as a human line ``a[gray] -> b[base] -> c[gray]``.
The edge forwards to NEXT and returns its answer unchanged.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import requests
from flask import Flask, Response, jsonify, request

NAME = os.environ.get("SERVICE_NAME", "a")
VERSION = os.environ.get("SERVICE_VERSION", "1.0.0")
LANE = os.environ.get("GRAYBAGGAGE_LANE") or os.environ.get("MSE_ALICLOUD_SERVICE_TAG") or "base"
NEXT = os.environ.get("NEXT", "").rstrip("/")
INSTANCE = os.environ.get("HOSTNAME") or socket.gethostname()   # the pod's name in Kubernetes

app = Flask(NAME)
session = requests.Session()  # one keep-alive pool for every lane: graybaggage keeps lanes apart


def wants_json() -> bool:
    return request.args.get("format") == "json" or "application/json" in request.headers.get("Accept", "")


@app.get("/healthz")
def healthz():
    return "ok\n"


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def handle(path: str):
    below = None
    if NEXT:
        r = session.get(f"{NEXT}/{path}", headers={"Accept": "application/json"}, timeout=10)
        r.raise_for_status()
        below = r.json()
    if NAME == "edge":
        body = below or {}
    else:
        me = {"service": NAME, "version": VERSION, "lane": LANE, "instance": INSTANCE}
        hops = [me] + (below["hops"] if below else [])
        body = {"chain": " -> ".join(f"{h['service']}[{h['lane']}]" for h in hops), "hops": hops}
    if wants_json():
        return jsonify(body)
    return Response(body.get("chain", "") + "\n", mimetype="text/plain")


class InFlight:
    """WSGI middleware counting requests in flight, so a graceful stop can wait for them."""

    def __init__(self, wsgi_app):
        self.wsgi_app, self.count, self.idle = wsgi_app, 0, threading.Condition()

    def __call__(self, environ, start_response):
        with self.idle:
            self.count += 1
        try:
            yield from self.wsgi_app(environ, start_response)
        finally:
            with self.idle:
                self.count -= 1
                self.idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.count == 0, timeout)


def serve() -> None:
    from werkzeug.serving import make_server

    inflight = InFlight(app.wsgi_app)
    app.wsgi_app = inflight
    # HOST defaults to loopback; the Kubernetes manifests set HOST=0.0.0.0 inside the pod.
    server = make_server(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080")), app, threaded=True)
    delay = float(os.environ.get("SHUTDOWN_DELAY_SECONDS", "0") or 0)

    def graceful_stop(*_):
        def stop():
            time.sleep(delay)          # still serving while the endpoint is withdrawn everywhere
            server.shutdown()          # no new connections
            inflight.wait_idle(10)     # let the requests in flight finish
        threading.Thread(target=stop, daemon=True).start()
    signal.signal(signal.SIGTERM, graceful_stop)
    server.serve_forever()
    inflight.wait_idle(10)


if __name__ == "__main__":
    serve()
