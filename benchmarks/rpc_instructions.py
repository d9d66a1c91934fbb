#!/usr/bin/env python
"""Instructions per call of graybaggage's gRPC and Celery hooks, counted by valgrind (no sockets, no broker).

    python benchmarks/rpc_instructions.py [--calls 2000] [--cases grpc-client-carry,...] [--json out.json]

Each case runs one step in-process the way the library runs it, against stand-ins for what lies beyond the hook
(a multicallable that returns at once, Celery's sender function that returns at once, a handler behavior that
returns at once), paired with a ``plain-*`` case that calls the same stand-in without the hook. As in
``hop_instructions.py``, every case runs twice under ``valgrind --tool=cachegrind --cache-sim=no``, with
``--base`` warm-up calls only and with ``--calls`` more after them (after ``gc.collect(); gc.freeze()``); the
difference divided by ``--calls`` is one call. hook cost = case - its plain case.

Cases (lane ``gray``; the lane table routes gRPC ``127.0.0.1:1`` and lists Celery queue ``tasks``):
- ``grpc-client-base`` / ``-carry`` / ``-routed``: a unary call through the wrapping channel with no lane; in
  lane gray to a target the table does not route (metadata only); to the routed target (a READY lane channel).
- ``grpc-server``: the server interceptor's handler rewrap for one call plus the call (decide, attach, detach).
- ``celery-publish-base`` / ``-carry`` / ``-routed``: the sender hook with no lane; in lane gray to a queue the
  table does not list; to the listed queue (the lane queue is built).
- ``celery-receive``: ``task_prerun`` + ``task_postrun`` for a task carrying the lane.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import gc, json, os, sys
sys.path.insert(0, sys.argv[1])
case, base, extra = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["GRAYBAGGAGE_LANE_TABLE"] = json.dumps({"version": 1, "lanes": {"gray": {
    "routes": {"127.0.0.1:1": "127.0.0.1:2"}, "queues": {"version": 1, "celery": ["tasks"]}}}})
import grpc
from opentelemetry import baggage, context
from graybaggage import config, _runtime
from graybaggage.integrations import grpc as g, celery as cel
_runtime.install(config.load_settings(env={"GRAYBAGGAGE_LANE_TABLE": os.environ["GRAYBAGGAGE_LANE_TABLE"]}))

class Multi:  # grpc's multicallable signature
    def __call__(self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None, compression=None):
        return request
class Chan:
    def unary_unary(self, method, *a, **k): return Multi()
    def subscribe(self, cb, try_to_connect=False): cb(grpc.ChannelConnectivity.READY)
    def unsubscribe(self, cb): pass
    def close(self): pass

LaneChannel = g._sync_classes()
ch = LaneChannel(Chan(), "127.0.0.1:1", lambda t: Chan())
other = LaneChannel(Chan(), "127.0.0.1:3", lambda t: Chan())
mc, mc_other, plain_mc = ch.unary_unary("/s/M"), other.unary_unary("/s/M"), Multi()

def behavior(req, ctx): return req
handler = grpc.unary_unary_rpc_method_handler(behavior)
class Details:
    method = "/s/M"
    invocation_metadata = (("x-mse-tag", "gray"), ("user-agent", "grpc-python"))

from kombu import Exchange, Queue
class Queues(dict): pass
class Amqp:
    default_queue = Queue("tasks", Exchange("tasks"), "tasks")
    queues = Queues(tasks=default_queue, other=Queue("other", Exchange("other"), "other"))
def sender(producer, name, message, **options): return options
hooked = cel._sender(sender, Amqp())
class Req:
    pass
req = Req(); setattr(req, "x-mse-tag", "gray"); req.baggage = "x-mse-tag=gray"
class Task: request = req

gray = baggage.set_baggage("x-mse-tag", "gray")

def message():
    return ({"lang": "py", "task": "t", "id": "1"}, {}, b"[]", None)

def step():
    if case == "plain-grpc-client": plain_mc(b"x", metadata=None)
    elif case == "grpc-client-base": mc(b"x")
    elif case in ("grpc-client-carry", "plain-grpc-client-lane"):
        t = context.attach(gray)
        try:
            (mc_other if case == "grpc-client-carry" else plain_mc)(b"x")
        finally:
            context.detach(t)
    elif case == "grpc-client-routed":
        t = context.attach(gray)
        try: mc(b"x")
        finally: context.detach(t)
    elif case == "plain-grpc-server": handler.unary_unary(b"x", None)
    elif case == "grpc-server": g._safe_rewrap(handler, Details, aio=False).unary_unary(b"x", None)
    elif case == "plain-celery-publish": sender(None, "t", message(), queue=Amqp.default_queue)
    elif case == "celery-publish-base": hooked(None, "t", message(), queue=Amqp.default_queue)
    elif case in ("celery-publish-carry", "celery-publish-routed", "plain-celery-publish-lane"):
        t = context.attach(gray)
        try:
            if case == "plain-celery-publish-lane": sender(None, "t", message(), queue=Amqp.default_queue)
            else: hooked(None, "t", message(), queue=Amqp.queues["other" if case == "celery-publish-carry" else "tasks"])
        finally:
            context.detach(t)
    elif case == "plain-celery-receive": pass
    elif case == "celery-receive":
        cel._prerun(task_id="1", task=Task); cel._postrun(task_id="1")
    else: raise SystemExit("unknown case " + case)

for _ in range(base): step()
gc.collect(); gc.freeze()
for _ in range(extra): step()
'''
CASES = ["plain-grpc-client", "grpc-client-base", "plain-grpc-client-lane", "grpc-client-carry", "grpc-client-routed",
         "plain-grpc-server", "grpc-server", "plain-celery-publish", "celery-publish-base", "plain-celery-publish-lane",
         "celery-publish-carry", "celery-publish-routed", "plain-celery-receive", "celery-receive"]
PLAIN = {"grpc-client-base": "plain-grpc-client", "grpc-client-carry": "plain-grpc-client-lane",
         "grpc-client-routed": "plain-grpc-client-lane", "grpc-server": "plain-grpc-server",
         "celery-publish-base": "plain-celery-publish", "celery-publish-carry": "plain-celery-publish-lane",
         "celery-publish-routed": "plain-celery-publish-lane", "celery-receive": "plain-celery-receive"}
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def irefs(case: str, base: int, extra: int) -> int:
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, "-c", CHILD, str(ROOT), case, str(base), str(extra)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{case}: the child failed\n{out.stderr[-3000:]}")
    return int(_IREFS.search(out.stderr).group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--base", type=int, default=200)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    per: dict[str, float] = {}
    for case in a.cases.split(","):
        per[case] = (irefs(case, a.base, a.calls) - irefs(case, a.base, 0)) / a.calls
        print(f"{case:28s} {per[case]:10,.0f} instructions/call", flush=True)
    print()
    for case, plain in PLAIN.items():
        if case in per and plain in per:
            print(f"{case:28s} hook cost {per[case] - per[plain]:10,.0f} instructions/call")
    if a.json:
        Path(a.json).write_text(json.dumps({"calls": a.calls, "base": a.base, "per_call": per,
                                            "hook_cost": {c: per[c] - per[p] for c, p in PLAIN.items()
                                                          if c in per and p in per}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
