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


# ---------------------------------------------------------------------------------------------------
# LaneBaggagePropagator: the same behaviour as OpenTelemetry's W3C baggage propagator followed by the
# lane propagator (the pair it replaces in the default global propagator), first call and memoised call.
# ---------------------------------------------------------------------------------------------------
from opentelemetry.context import attach, detach, set_value  # noqa: E402

from graybaggage.propagator import DECIDED_KEY, LaneBaggagePropagator  # noqa: E402

_BAGGAGE_VALUES = [
    None, "", "x-mse-tag=gray", "x-mse-tag=blue", "userId=7,x-mse-tag=gray", "x-mse-tag=gray,userId=7",
    "X-MSE-TAG=gray", "x-mse-tag=GRAY", "x-mse-tag=gray;prop=1", "x-mse-tag = gray , a=b",
    "x-mse-tag=gray,x-mse-tag=blue", "a=1,b=2", "a=%20x,x-mse-tag=gray", "bad entry,x-mse-tag=gray",
    "x-mse-tag=" + "a" * 64, "x-mse-tag=gray," + ",".join(f"k{i}=v" for i in range(200)),
    "k=" + "v" * 5000 + ",x-mse-tag=gray", "x-mse-tag=gr%61y", "é=1,x-mse-tag=gray", "x-mse-tag",
]
_HEADER_VALUES = [None, "gray", "blue", "GRAY", "", "gray,blue", " gray "]


def _starting_contexts():
    yield "empty", Context()
    yield "other-baggage", baggage.set_baggage("tenant", "t1", Context())
    yield "lane-in-baggage", baggage.set_baggage("x-mse-tag", "blue", baggage.set_baggage("u", "1", Context()))


def _pair():
    return CompositePropagator([W3CBaggagePropagator(), LanePropagator(SETTINGS)])


@pytest.mark.parametrize("bag", _BAGGAGE_VALUES)
def test_lane_baggage_extract_equals_upstream_pair(bag):
    ours, ref = LaneBaggagePropagator(SETTINGS), _pair()
    for header in _HEADER_VALUES:
        carrier = {}
        if bag is not None:
            carrier["baggage"] = bag
        if header is not None:
            carrier["x-mse-tag"] = header
        for name, start in _starting_contexts():
            expected = dict(baggage.get_all(ref.extract(carrier, start)))
            for attempt in ("first", "memoised"):
                got = dict(baggage.get_all(ours.extract(carrier, start)))
                assert list(got.items()) == list(expected.items()), (bag, header, name, attempt)


@pytest.mark.parametrize("decided", ["gray", ""])
def test_lane_baggage_extract_keeps_the_inbound_decision(decided):
    ours, ref = LaneBaggagePropagator(SETTINGS), _pair()
    token = attach(set_value(DECIDED_KEY, decided))
    try:
        for bag in ("x-mse-tag=blue", "a=1", None):
            carrier = {"x-mse-tag": "blue"} if bag is None else {"baggage": bag, "x-mse-tag": "blue"}
            for _, start in _starting_contexts():
                expected = dict(baggage.get_all(ref.extract(carrier, start)))
                assert dict(baggage.get_all(ours.extract(carrier, start))) == expected
                assert baggage.get_baggage("x-mse-tag", ours.extract(carrier, start)) == (decided or None)
    finally:
        detach(token)


def _inject_contexts():
    yield Context()
    yield baggage.set_baggage("x-mse-tag", "gray", Context())
    yield baggage.set_baggage("x-mse-tag", "GRAY", Context())  # not a lane: never injected as one
    yield baggage.set_baggage("x-mse-tag", "gray", baggage.set_baggage("userId", "a b", Context()))
    yield baggage.set_baggage("tenant", "t1", Context())
    yield baggage.set_baggage("x-mse-tag", "gray", baggage.set_baggage("n", 3, Context()))  # non-str value
    yield baggage.set_baggage("x-mse-tag", "gray", baggage.set_baggage("n", 1, Context()))  # 1 == True, and
    yield baggage.set_baggage("x-mse-tag", "gray", baggage.set_baggage("n", True, Context()))  # hash(1) == hash(True)
    many = Context()
    for i in range(185):  # past OpenTelemetry's 180-member limit: it drops the lane, the lane step adds it back
        many = baggage.set_baggage(f"k{i}", "v", many)
    yield baggage.set_baggage("x-mse-tag", "gray", many)
    yield baggage.set_baggage("x-mse-tag", "gray", baggage.set_baggage("big", "v" * 5000, Context()))
    yield baggage.set_baggage("x-mse-tag", "blue", baggage.set_baggage("x", "y;z", Context()))


def _prefilled():
    yield {}
    yield {"baggage": "x-mse-tag=blue,keep=1"}
    yield {"Baggage": "keep=1", "x-mse-tag": "old"}


def test_lane_baggage_inject_equals_upstream_pair():
    ours, ref = LaneBaggagePropagator(SETTINGS), _pair()
    for i, ctx in enumerate(_inject_contexts()):
        for j, pre in enumerate(_prefilled()):
            expected = dict(pre)
            ref.inject(expected, ctx)
            for attempt in ("first", "memoised"):
                got = dict(pre)
                ours.inject(got, ctx)
                assert got == expected, (i, j, attempt)
                assert list(got) == list(expected), (i, j, attempt)


def test_lane_baggage_inject_into_a_carrier_without_get():
    class Sink:  # a carrier only its setter understands
        def __init__(self):
            self.items = []

    class Append:
        def set(self, carrier, key, value):
            carrier.items.append((key, value))

    ctx = baggage.set_baggage("x-mse-tag", "gray", baggage.set_baggage("u", "1", Context()))
    ours, ref = Sink(), Sink()
    LaneBaggagePropagator(SETTINGS).inject(ours, ctx, Append())
    _pair().inject(ref, ctx, Append())
    assert ours.items == ref.items


def test_lane_baggage_memory_is_bounded():
    p = LaneBaggagePropagator(SETTINGS)
    for i in range(3000):
        p.extract({"baggage": f"x-mse-tag=gray,req={i}"}, Context())
        p.inject({}, baggage.set_baggage("req", str(i), baggage.set_baggage("x-mse-tag", "gray", Context())))
    p.extract({"baggage": "x-mse-tag=gray,big=" + "v" * 2000}, Context())
    assert len(p._parsed) <= 512 and len(p._formatted) <= 512
    assert all(len(k) <= 1024 for k in p._parsed)


def test_lane_baggage_warns_once_per_bad_value(caplog):
    p = LaneBaggagePropagator(SETTINGS)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            p.extract({"baggage": "bad entry,x-mse-tag=gray"}, Context())
    otel = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(otel) == 1, [r.getMessage() for r in otel]


def test_lane_baggage_hostile_carrier_never_raises():
    class Hostile:
        def get(self, key):
            raise RuntimeError("no")

    class Getter:
        def get(self, carrier, key):
            return carrier.get(key)

        def keys(self, carrier):
            return []

    ctx = LaneBaggagePropagator(SETTINGS).extract(Hostile(), Context(), Getter())
    assert baggage.get_all(ctx) == {}


def test_default_propagator_becomes_tracecontext_plus_lane_baggage():
    from graybaggage.instrumentor import compose

    default = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    flat = compose(default, SETTINGS)
    assert [type(p) for p in flat._propagators] == [TraceContextTextMapPropagator, LaneBaggagePropagator]
    assert flat.fields == default.fields | {"x-mse-tag"}
    other = CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()])  # not the default
    kept = compose(other, SETTINGS)
    assert kept._propagators[0] is other and type(kept._propagators[1]) is LanePropagator


def test_baggage_reads_fall_back_to_the_public_api_if_opentelemetry_moves_its_key(monkeypatch):
    import importlib

    lane_mod = importlib.import_module("graybaggage.lane")

    assert lane_mod._BAGGAGE_KEY is not None  # today: the direct read is in use
    with monkeypatch.context() as m:
        m.delattr(baggage, "_BAGGAGE_KEY")
        assert lane_mod._baggage_key() is None  # detected at import time, never guessed
    monkeypatch.setattr(lane_mod, "_BAGGAGE_KEY", None)
    ctx = lane_mod.set_lane("x-mse-tag", "gray", baggage.set_baggage("u", "1", Context()))
    assert lane_mod.get_lane("x-mse-tag", ctx) == "gray" and lane_mod.baggage_value("u", ctx) == "1"
    assert lane_mod.set_lane("x-mse-tag", "gray", ctx) is ctx
    assert lane_mod.get_lane("x-mse-tag", lane_mod.set_lane("x-mse-tag", None, ctx)) is None
    test_lane_baggage_inject_equals_upstream_pair()
    test_lane_baggage_extract_equals_upstream_pair("userId=7,x-mse-tag=gray")


def test_carrier_reader_answers_exactly_like_lane_from_carrier():
    from graybaggage.lane import CarrierReader

    headers = [None, [], ["gray"], ["GRAY"], [""], ["gray", "blue"], ["gray,blue"], [" gray "], ["a" * 64],
               ["gray\x00"], ["blue"]]
    bags = [None, "", "x-mse-tag=gray", "x-mse-tag=blue", "a=1", "x-mse-tag", "x-mse-tag=gray,x-mse-tag=blue",
            "k=" + "v" * 9000, ",".join(f"k{i}=v" for i in range(200)) + ",x-mse-tag=gray", "X-Mse-Tag=gray"]
    for allowed in (None, frozenset({"gray"})):
        reader = CarrierReader("x-mse-tag", allowed, 8192)
        for _ in range(2):  # first answer and remembered answer
            for h in headers:
                for b in bags:
                    assert reader.read(h, b) == lane_from_carrier(h, b, "x-mse-tag", allowed, 8192), (h, b, allowed)


def test_lane_baggage_oversized_header_is_ignored_like_upstream_but_logged_once(caplog, monkeypatch):
    p, ref = LaneBaggagePropagator(SETTINGS), _pair()
    carrier = {"baggage": "k=" + "v" * 9000 + ",x-mse-tag=gray"}
    monkeypatch.setattr(_log, "_seen", {})  # a fresh "logged once" memory for this test
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            got = p.extract(carrier, Context())
            assert dict(baggage.get_all(got)) == dict(baggage.get_all(ref.extract(carrier, Context()))) == {}
    ours = [r for r in caplog.records if r.name.startswith("graybaggage")]
    otel_from_ours = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert len(ours) == 1 and "v" * 100 not in ours[0].getMessage(), [r.getMessage() for r in ours]
    assert len(otel_from_ours) == 3  # all three from the reference pair, none from graybaggage's step


def _lane_members(carrier: dict) -> list[str]:
    bag = carrier.get("baggage") or carrier.get("Baggage") or ""
    return [m.split("=", 1)[1].strip() for m in bag.split(",") if "=" in m and m.split("=", 1)[0].strip().lower() == "x-mse-tag"]


@pytest.mark.parametrize("carriers", ["header", "baggage"])
@pytest.mark.parametrize("kind", ["lane", "lane+baggage"])
def test_inject_with_one_carrier(carriers, kind):
    """GRAYBAGGAGE_CARRIERS: the chosen carrier always goes out; the other is never added, and never left
    naming another lane; without a lane nothing differs from the default."""
    s = config.load_settings({"GRAYBAGGAGE_CARRIERS": carriers})
    default = config.load_settings({})
    make = {"lane": LanePropagator, "lane+baggage": LaneBaggagePropagator}[kind]
    prop, ref = make(s), make(default)
    for i, ctx in enumerate(_inject_contexts()):
        lane = baggage.get_baggage("x-mse-tag", ctx)
        lane = lane if check_lane(lane)[0] else None
        for j, pre in enumerate(_prefilled()):
            got, expected = dict(pre), dict(pre)
            prop.inject(got, ctx)
            ref.inject(expected, ctx)
            if lane is None:
                assert got == expected, (i, j)
                continue
            members = _lane_members(got)
            assert all(m == lane for m in members), (i, j, got)
            if carriers == "header":
                assert got["x-mse-tag"] == lane, (i, j, got)
                assert members == [] if not _lane_members(pre) else members in ([], [lane]), (i, j, got)
            else:
                assert members == [lane], (i, j, got)
                assert got.get("x-mse-tag") == (lane if "x-mse-tag" in pre else None), (i, j, got)


def test_carriers_setting_is_validated(caplog):
    assert (config.load_settings({}).send_header, config.load_settings({}).send_baggage) == (True, True)
    s = config.load_settings({"GRAYBAGGAGE_CARRIERS": " Baggage "})
    assert (s.send_header, s.send_baggage) == (False, True)
    s = config.load_settings({"GRAYBAGGAGE_CARRIERS": "header,baggage"})
    assert (s.send_header, s.send_baggage) == (True, True)
    with caplog.at_level(logging.WARNING):
        s = config.load_settings({"GRAYBAGGAGE_CARRIERS": "headers"})
    assert (s.send_header, s.send_baggage) == (True, True)
    assert "GRAYBAGGAGE_CARRIERS" in caplog.text
