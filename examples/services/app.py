"""One of the seed's services (a, b or c), or the edge in front of them. It never imports graybaggage:
lanes are switched on by ``graybaggage run`` and environment variables only.

Env: SERVICE_NAME (a | b | c | edge), SERVICE_VERSION, PORT, NEXT (URL of the service it calls, if any),
GRAYBAGGAGE_LANE (which lane this instance serves; set by the controller in Kubernetes).

GET /<anything> answers with this service's name, version and instance lane plus the chain below it:
as JSON (``Accept: application/json`` or ``?format=json``) or as a human line ``a[gray] -> b[base] -> c[gray]``.
The edge forwards to NEXT and returns its answer unchanged.
"""
from __future__ import annotations

import os

import requests
from flask import Flask, Response, jsonify, request

NAME = os.environ.get("SERVICE_NAME", "a")
VERSION = os.environ.get("SERVICE_VERSION", "1.0.0")
LANE = os.environ.get("GRAYBAGGAGE_LANE", "base")
NEXT = os.environ.get("NEXT", "").rstrip("/")

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
        me = {"service": NAME, "version": VERSION, "lane": LANE}
        hops = [me] + (below["hops"] if below else [])
        body = {"chain": " -> ".join(f"{h['service']}[{h['lane']}]" for h in hops), "hops": hops}
    if wants_json():
        return jsonify(body)
    return Response(body.get("chain", "") + "\n", mimetype="text/plain")


if __name__ == "__main__":
    from werkzeug.serving import make_server

    # HOST defaults to loopback; the Kubernetes manifests set HOST=0.0.0.0 inside the pod.
    server = make_server(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080")), app, threaded=True)
    server.serve_forever()
