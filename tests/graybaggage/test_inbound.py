"""The inbound decision (graybaggage/inbound.py) and the shared inbound step of every server integration
(graybaggage/integrations/_server.py): same answers every time, bounded memory, no lane leaking between
requests."""
from __future__ import annotations

import threading

from opentelemetry import baggage
from opentelemetry.context import attach, detach, get_current, get_value, set_value

from graybaggage import _runtime, config
from graybaggage.inbound import Inbound
from graybaggage.integrations import _server
from graybaggage.lane import get_lane
from graybaggage.propagator import DECIDED_KEY


def _inbound(allowed=None, edge=False, rules=None):
    problems: list[tuple[str, str]] = []
    inb = Inbound("x-mse-tag", allowed, 8192, edge, None, lambda: rules, lambda p, w, *_: problems.append((p, w)))
    return inb, problems


def test_header_verdicts_are_the_same_every_time_and_problems_are_reported_every_time():
    inb, problems = _inbound(allowed=frozenset({"gray", "blue"}))
    cases = {"gray": "gray", "blue": "blue", "red": None, "GRAY": None, "": None, "gray,blue": None,
             " gray ": "gray", "a" * 100: None, "gray\x00": None}
    for _ in range(3):
        for raw, want in cases.items():
            assert inb.decide([raw], None, lambda: None) == want, raw
    # every bad value is reported on every request (log_once downstream dedups the log lines)
    assert len(problems) == 3 * sum(1 for v in cases.values() if v is None)
    problems.clear()
    for raw in cases:
        inb.decide([raw], None, lambda: None)
    assert [p for p, _ in problems] == ["not-on-allow-list", "not-a-dns-label", "empty", "duplicate-header",
                                        "oversized", "control-characters"]


def test_verdict_memo_is_bounded_and_keyed_on_the_whole_value():
    inb, _ = _inbound()
    size = inb._reader.size
    for i in range(size * 3):
        assert inb.decide([f"lane-{i}"], None, lambda: None) == f"lane-{i}"
        assert inb.decide(None, f"x-mse-tag=b{i}", lambda: None) == f"b{i}"
    assert len(inb._reader._verdicts) <= size
    inb.decide(["x" * 300], None, lambda: None)
    assert (True, "x" * 300) not in inb._reader._verdicts  # long values are never remembered
    inb2, _ = _inbound()
    assert inb2.decide(["gray"], None, lambda: None) == "gray"
    assert inb2.decide(["grayx"], None, lambda: None) == "grayx"
    assert inb2.decide(["gray-"], None, lambda: None) is None


def test_edge_ignores_a_remembered_header():
    inb, _ = _inbound()
    assert inb.decide(["gray"], None, lambda: None) == "gray"
    edge, _ = _inbound(edge=True)
    edge._reader._verdicts.update(inb._reader._verdicts)
    assert edge.decide(["gray"], None, lambda: None) is None


def test_baggage_and_multiple_headers_are_not_memoised_wrongly():
    inb, _ = _inbound()
    assert inb.decide(None, "x-mse-tag=gray", lambda: None) == "gray"
    assert inb.decide(["gray", "blue"], None, lambda: None) is None  # duplicate headers: base
    assert inb.decide(["gray"], "x-mse-tag=blue", lambda: None) == "gray"  # the header wins


# --- the shared entry context -------------------------------------------------------------------

def _run_wsgi(environ: dict) -> tuple[str | None, object, object]:
    seen = {}

    def app():
        seen["lane"] = get_lane("x-mse-tag")
        seen["ctx"] = get_current()
        seen["decided"] = get_value(DECIDED_KEY)
        return [b"ok"]

    body = _server.handle_wsgi(environ, app)
    list(body)
    body.close()
    return seen["lane"], seen["ctx"], seen["decided"]


def test_entry_context_is_shared_per_lane_and_detached_after_the_response():
    _runtime.install(config.load_settings(env={}))
    try:
        before = get_current()
        lane1, ctx1, d1 = _run_wsgi({"HTTP_X_MSE_TAG": "gray"})
        lane2, ctx2, d2 = _run_wsgi({"HTTP_X_MSE_TAG": "gray"})
        lane3, ctx3, d3 = _run_wsgi({})
        assert (lane1, d1) == ("gray", "gray") and (lane2, d2) == ("gray", "gray")
        assert ctx1 is ctx2  # built once for the lane, shared
        assert (lane3, d3) == (None, "") and ctx3 is not ctx1
        assert get_current() is before  # nothing left attached
        assert get_lane("x-mse-tag") is None
    finally:
        _runtime.uninstall()


def test_entry_context_builds_on_what_is_already_attached():
    _runtime.install(config.load_settings(env={}))
    token = attach(set_value("other", 1, baggage.set_baggage("tenant", "t1")))
    try:
        lane, ctx, _ = _run_wsgi({"HTTP_X_MSE_TAG": "gray"})
        assert lane == "gray" and ctx.get("other") == 1 and baggage.get_baggage("tenant", ctx) == "t1"
        shared = _server._entry_contexts.get(("x-mse-tag", "gray"))
        assert shared is None or "other" not in shared  # the shared context never picks up request state
    finally:
        detach(token)
        _runtime.uninstall()


def test_entry_contexts_do_not_leak_between_threads():
    _runtime.install(config.load_settings(env={}))
    errors = []

    def worker(lane):
        for _ in range(200):
            env = {"HTTP_X_MSE_TAG": lane} if lane else {}
            got, _, _ = _run_wsgi(env)
            if got != lane:
                errors.append((lane, got))
        if get_lane("x-mse-tag") is not None:
            errors.append(("leftover", lane))

    try:
        threads = [threading.Thread(target=worker, args=(lane,)) for lane in ("gray", "blue", None, "gray")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
    finally:
        _runtime.uninstall()


def test_entry_context_cache_is_bounded():
    _runtime.install(config.load_settings(env={}))
    try:
        for i in range(_server._MAX_ENTRY_CONTEXTS + 50):
            assert _run_wsgi({"HTTP_X_MSE_TAG": f"l{i}"})[0] == f"l{i}"
        assert len(_server._entry_contexts) <= _server._MAX_ENTRY_CONTEXTS
    finally:
        _runtime.uninstall()
