"""requeue.py with real threads: waits are on events, never on wall-clock bounds of the machine's speed."""
from __future__ import annotations

import threading

from graybaggage_controller.requeue import Requeue


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_due_keys_run_once_in_time_order():
    ran, done, clock = [], threading.Event(), Clock()

    def run(key):
        ran.append(key)
        if len(ran) == 2:
            done.set()
    rq = Requeue(run, workers=1, clock=clock)
    rq.after("late", 5.0)
    rq.after("soon", 1.0)
    rq.after("late", 9.0)           # asked later than already asked: the earlier time stays
    assert rq.pending() == 2
    clock.now = 10.0
    rq.after("nudge", 100.0)        # wakes the scheduler, which sees the new time
    assert done.wait(10)
    assert ran == ["soon", "late"]
    assert rq.pending() == 1
    rq.stop()


def test_asking_sooner_moves_a_key_forward():
    ran, done, clock = [], threading.Event(), Clock()
    rq = Requeue(lambda key: (ran.append(key), done.set()), workers=1, clock=clock)
    rq.after("k", 50.0)
    rq.after("k", 0.0)
    assert done.wait(10)
    assert ran == ["k"] and rq.pending() == 0
    rq.stop()


def test_a_failing_pass_does_not_stop_the_scheduler():
    ran, done = [], threading.Event()

    def run(key):
        ran.append(key)
        if key == "bad":
            raise RuntimeError("boom")
        done.set()
    rq = Requeue(run, workers=1)
    rq.after("bad", 0.0)
    rq.after("good", 0.0)
    assert done.wait(10)
    assert ran == ["bad", "good"]
    rq.stop()


def test_stopped_takes_nothing_more():
    rq = Requeue(lambda key: None)
    rq.stop()
    rq.after("k", 0.0)
    assert rq.pending() == 0
