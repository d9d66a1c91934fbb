"""A Celery app for the lane tests; never imports graybaggage.

Env: CELERY_BROKER (redis://...), GRAYBAGGAGE_LANE (instance lane, reported only), TASK_SLEEP (seconds). Each task run appends a JSON
record to the Redis list ``results``: the task number, the lane it was sent in, the lane in OpenTelemetry
baggage while it ran, the header it carried, the worker's instance lane and the current ``epoch`` key.
"""
from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery
from opentelemetry import baggage

BROKER = os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/0")
INSTANCE = os.environ.get("GRAYBAGGAGE_LANE", "base")
TASK_SLEEP = float(os.environ.get("TASK_SLEEP", "0"))  # a slow worker leaves tasks queued when it stops
app = Celery("lanes", broker=BROKER)
app.conf.update(task_default_queue="tasks", worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)
_redis = redis.Redis.from_url(BROKER)


@app.task(name="lanes.record", bind=True)
def record(self, no: int, sent: str | None) -> None:
    if TASK_SLEEP:
        time.sleep(TASK_SLEEP)
    _redis.rpush("results", json.dumps({
        "no": no, "sent": sent, "ctx": baggage.get_baggage("x-mse-tag"), "worker": INSTANCE,
        "header": getattr(self.request, "x-mse-tag", None), "baggage": getattr(self.request, "baggage", None),
        "epoch": int(_redis.get("epoch") or 1)}))


@app.task(name="lanes.call", bind=True)
def call(self, no: int, url: str) -> None:
    """Calls ``url`` (a test hop) and records what it received."""
    import requests

    got = requests.get(url, timeout=10).json()
    _redis.rpush("calls", json.dumps({"no": no, "ctx": baggage.get_baggage("x-mse-tag"), "worker": INSTANCE,
                                      "hop_header": got.get("header"), "hop_baggage": got.get("baggage"),
                                      "served": got.get("served")}))
