"""The two-hop app for benchmarks/chain.py: Flask -> requests -> Flask. Never imports graybaggage.

Env:
  CHAIN_ROLE   hop1 (calls CHAIN_NEXT) or hop2 (leaf)
  CHAIN_NAME   the name this instance reports (e.g. hop2, hop2-gray)
  CHAIN_NEXT   hop1 only: base URL of hop2, e.g. http://127.0.0.1:18102
  CHAIN_FORWARD  "1": hop1 forwards the incoming lane itself, as x-mse-tag and baggage (chain.py's "by-hand"
               reference: what propagation written into the app costs, one environment variable included)
"""
from __future__ import annotations

import os
import sys

import requests
from flask import Flask, jsonify, request

ROLE = os.environ.get("CHAIN_ROLE", "hop2")
NAME = os.environ.get("CHAIN_NAME", ROLE)
NEXT = os.environ.get("CHAIN_NEXT", "")
FORWARD = os.environ.get("CHAIN_FORWARD") == "1"

app = Flask(__name__)
_session = requests.Session()  # one per worker process (sync workers are single-threaded)


@app.get("/")
def hop1():
    headers = None
    if FORWARD:
        lane = request.headers.get("x-mse-tag")
        if lane:
            headers = {"x-mse-tag": lane, "baggage": f"x-mse-tag={lane}"}
    r = _session.get(f"{NEXT}/work", headers=headers, timeout=5)
    r.raise_for_status()
    return jsonify(name=NAME, next=r.json())


@app.get("/work")
def hop2():
    h = request.headers
    return jsonify(name=NAME, lane=h.get("x-mse-tag"), baggage=h.get("baggage"), traceparent=h.get("traceparent"))


@app.get("/stats")
def stats():
    """What instrumentation this worker actually runs (checked once by chain.py before measuring)."""
    from opentelemetry import trace

    noop = sys.modules.get("gb_bench_noop")
    gb_distro = sys.modules.get("graybaggage.distro")
    return jsonify(
        name=NAME,
        pid=os.getpid(),
        tracer_provider=type(trace.get_tracer_provider()).__name__,
        spans_exported=getattr(noop, "EXPORTED", None),
        graybaggage_mode=getattr(getattr(gb_distro, "GraybaggageDistro", None), "mode", None),
        flask_call=type(Flask.__call__).__name__,
        wsgi_app=type(app.wsgi_app).__name__,
    )
