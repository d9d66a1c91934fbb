"""The lane propagator and lane validation (pure units), alone and composed with the W3C propagators."""
from __future__ import annotations

import logging

import pytest
from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from graybaggage import _log, config
from graybaggage.lane import check_lane, lane_from_carrier
from graybaggage.propagator import LanePropagator

SETTINGS = config.load_settings({})


@pytest.fixture
def prop():
    return LanePropagator(SETTINGS)


@pytest.mark.parametrize("value,ok", [
    ("gray", True), ("a", True), ("a" * 63, True), ("gray-2", True), ("0", True),
    ("a" * 64, False), ("GRAY", False), ("-gray", False), ("gray-", False), ("gr ay", False), ("", False),
    ("gray\n", False), ("gray.x", False), ("灰", False), (None, False), (3, False),
])
def test_check_lane(value, ok):
    assert (check_lane(value)[0] is not None) is ok


def test_allow_list():
    assert check_lane("gray", frozenset({"gray"})) == ("gray", None)
    assert check_lane("blue", frozenset({"gray"})) == (None, "not-on-allow-list")


def test_extract_header(prop):
    ctx = prop.extract({"x-mse-tag": "gray"}, Context())
    assert baggage.get_baggage("x-mse-tag", ctx) == "gray"


def test_extract_baggage_entry(prop):
    ctx = prop.extract({"baggage": "a=1, x-mse-tag=blue;prop=1"}, Context())
    assert baggage.get_baggage("x-mse-tag", ctx) == "blue"


def test_header_wins_and_invalid_header_decides(prop):
    assert baggage.get_baggage("x-mse-tag", prop.extract({"x-mse-tag": "gray", "baggage": "x-mse-tag=blue"}, Context())) == "gray"
    assert baggage.get_baggage("x-mse-tag", prop.extract({"x-mse-tag": "BAD", "baggage": "x-mse-tag=blue"}, Context())) is None


def test_nothing_carried_leaves_context_alone(prop):
    ctx = baggage.set_baggage("x-mse-tag", "gray", Context())
    assert prop.extract({}, ctx) is ctx


def test_inject_sets_header_and_baggage(prop):
    ctx = baggage.set_baggage("x-mse-tag", "gray", Context())
    carrier: dict[str, str] = {}
    prop.inject(carrier, ctx)
    assert carrier == {"x-mse-tag": "gray", "baggage": "x-mse-tag=gray"}
    carrier = {"baggage": "user=1"}
    prop.inject(carrier, ctx)
    assert carrier["baggage"] == "user=1,x-mse-tag=gray"
    carrier = {}
    prop.inject(carrier, Context())
    assert carrier == {}


def test_composite_with_w3c_header_wins_and_no_duplicate_baggage(prop):
    comp = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator(), prop])
    ctx = comp.extract({"x-mse-tag": "gray", "baggage": "x-mse-tag=blue,user=7"})
    assert baggage.get_baggage("x-mse-tag", ctx) == "gray"
    assert baggage.get_baggage("user", ctx) == "7"
    out: dict[str, str] = {}
    comp.inject(out, ctx)
    assert out["x-mse-tag"] == "gray"
    assert out["baggage"].count("x-mse-tag=") == 1


def test_composite_removes_invalid_lane_that_w3c_accepted(prop):
    comp = CompositePropagator([W3CBaggagePropagator(), prop])
    ctx = comp.extract({"baggage": "x-mse-tag=Not-A-Lane"})
    assert baggage.get_baggage("x-mse-tag", ctx) is None


def test_fields_and_custom_header():
    p = LanePropagator(config.load_settings({"GRAYBAGGAGE_HEADER": "X-Lane"}))
    assert p.fields == {"x-lane", "baggage"}
    assert baggage.get_baggage("x-lane", p.extract({"x-lane": "gray"}, Context())) == "gray"


def test_malformed_values_log_once_per_kind(prop, caplog):
    _log._reset_for_tests()
    with caplog.at_level(logging.WARNING, logger="graybaggage"):
        for _ in range(50):
            prop.extract({"x-mse-tag": "BAD"}, Context())
            prop.extract({"x-mse-tag": "x" * 100}, Context())
    assert len(caplog.records) == 2
    assert _log.problem_counts()["header:not-a-dns-label"] == 50


def test_hostile_carrier_never_raises(prop):
    class Evil(dict):
        def get(self, key, default=None):
            raise RuntimeError("boom")

    assert prop.extract(Evil(), Context()) is not None


@pytest.mark.parametrize("headers,bag,expect", [
    (["gray"], None, ("gray", None, True)),
    (["gray", "gray"], None, (None, "duplicate-header", True)),
    (None, "x-mse-tag=gray", ("gray", None, True)),
    (None, "other=1", (None, None, False)),
    (None, "x-mse-tag", (None, "baggage-malformed", True)),
    (None, ",".join(["k=v"] * 181) + ",x-mse-tag=gray", (None, "baggage-too-many-members", True)),
])
def test_lane_from_carrier(headers, bag, expect):
    assert lane_from_carrier(headers, bag, "x-mse-tag") == expect
