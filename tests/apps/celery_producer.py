"""Sends TASKS tasks from THREADS threads, odd numbers in lane gray (set the way an inbound request would: in
OpenTelemetry baggage), even ones on base. The first half goes out at once; the second half waits for the file
GO_FILE. Prints "sent-1" and "sent-2" after each half. Never imports graybaggage."""
from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.getcwd())
from opentelemetry import baggage, context  # noqa: E402

from tests.apps.celery_app import record  # noqa: E402

TASKS = int(os.environ.get("TASKS", "1000"))
THREADS = int(os.environ.get("THREADS", "8"))
GO_FILE = os.environ["GO_FILE"]


def send(numbers: list[int]) -> None:
    for no in numbers:
        if no % 2:
            token = context.attach(baggage.set_baggage("x-mse-tag", "gray"))
            try:
                record.delay(no, "gray")
            finally:
                context.detach(token)
        else:
            record.delay(no, None)


def phase(numbers: list[int]) -> None:
    threads = [threading.Thread(target=send, args=(numbers[i::THREADS],)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


half = TASKS // 2
phase(list(range(half)))
print("sent-1", flush=True)
while not os.path.exists(GO_FILE):
    time.sleep(0.02)
phase(list(range(half, TASKS)))
print("sent-2", flush=True)
