"""Pure rules of the configuration, the mode choice, the start-up line and the lane-decision propagator:
one row per rule."""
from __future__ import annotations

import pytest
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from graybaggage import _status, config
from graybaggage.lane import get_lane, set_lane
from graybaggage.propagator import DECIDED_KEY, KeepLaneDecision


@pytest.mark.parametrize("env,expected", [
    ({}, []),
    ({"GRAYBAGGAGE_LANE_TABEL_FILE": "x"},
     ["unknown variable GRAYBAGGAGE_LANE_TABEL_FILE is ignored; did you mean GRAYBAGGAGE_LANE_TABLE_FILE?"]),
    ({"GRAYBAGGAGE_MOD": "lanes"}, ["unknown variable GRAYBAGGAGE_MOD is ignored; did you mean GRAYBAGGAGE_MODE?"]),
    ({"GRAYBAGGAGE_ZZZZZZZZZZZZ": "1"}, ["unknown variable GRAYBAGGAGE_ZZZZZZZZZZZZ is ignored"]),
    ({"GRAYBAGGAGE_K8S_BIN": "/x", "GRAYBAGGAGE_TEST_KUBECONFIG": "/y"}, []),  # test tooling's own names
    ({"GRAYBAGGAGE_LANE_TABLE": "{}", "GRAYBAGGAGE_LANE_TABLE_FILE": "f"},
     ["GRAYBAGGAGE_LANE_TABLE and GRAYBAGGAGE_LANE_TABLE_FILE are set; the lane table comes from "
      "GRAYBAGGAGE_LANE_TABLE only (GRAYBAGGAGE_LANE_TABLE_FILE ignored; precedence: text, file, ConfigMap)"]),
    ({"GRAYBAGGAGE_LANE_TABLE_FILE": "f", "GRAYBAGGAGE_LANE_TABLE_CONFIGMAP": "off"}, []),  # off is no source
    ({"GRAYBAGGAGE_LANE_TABLE_FILE": "f", "GRAYBAGGAGE_LANE_TABLE_CONFIGMAP": "lanes"},
     ["GRAYBAGGAGE_LANE_TABLE_FILE and GRAYBAGGAGE_LANE_TABLE_CONFIGMAP are set; the lane table comes from "
      "GRAYBAGGAGE_LANE_TABLE_FILE only (GRAYBAGGAGE_LANE_TABLE_CONFIGMAP ignored; precedence: text, file, ConfigMap)"]),
    ({"GRAYBAGGAGE_DYE_RULES": "[]", "GRAYBAGGAGE_DYE_RULES_FILE": "f"},
     ["GRAYBAGGAGE_DYE_RULES and GRAYBAGGAGE_DYE_RULES_FILE are both set; the dye rules come from "
      "GRAYBAGGAGE_DYE_RULES only"]),
    ({"GRAYBAGGAGE_LANE": "gray", "MSE_ALICLOUD_SERVICE_TAG": "blue"},
     ["GRAYBAGGAGE_LANE='gray' and MSE_ALICLOUD_SERVICE_TAG='blue' disagree; this instance serves 'gray'"]),
    ({"GRAYBAGGAGE_LANE": "gray", "MSE_ALICLOUD_SERVICE_TAG": "gray"}, []),
    ({"GRAYBAGGAGE_DISABLED_INTEGRATIONS": "requests, flsk"},
     ["GRAYBAGGAGE_DISABLED_INTEGRATIONS: unknown integration 'flsk' is ignored; did you mean flask? (known: "
      + ", ".join(config.INTEGRATIONS) + ")"]),
])
def test_environment_problems(env, expected):
    assert config.environment_problems(env) == expected


def test_integration_names_match_the_integrations():
    from graybaggage import integrations

    assert config.INTEGRATIONS == integrations.ALL


@pytest.mark.parametrize("env,expected", [
    ({"GRAYBAGGAGE_MODE": "wrong"}, "graybaggage: GRAYBAGGAGE_MODE='wrong' is not one of auto, lanes, tracing; using auto"),
    ({"GRAYBAGGAGE_THREADS": "maybe"}, "graybaggage: GRAYBAGGAGE_THREADS='maybe' is not a boolean (use 1/0, true/false); using 1"),
    ({"GRAYBAGGAGE_FALLBACK_FAILURES": "x"}, "graybaggage: GRAYBAGGAGE_FALLBACK_FAILURES='x' is not a number; using 2"),
    ({"GRAYBAGGAGE_LANES": "gray,Bad!"}, "graybaggage: GRAYBAGGAGE_LANES: ignoring invalid lane names Bad!"),
])
def test_config_warnings_are_prefixed_plain_lines(env, expected, caplog):
    from graybaggage import _log

    _log._reset_for_tests()
    with caplog.at_level("WARNING", logger="graybaggage.config"):
        config.load_settings(env)
    assert expected in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("env,provider,expected", [
    ({}, None, "lanes"),
    ({"GRAYBAGGAGE_MODE": "tracing"}, None, "tracing"),
    ({"GRAYBAGGAGE_MODE": "lanes", "OTEL_TRACES_EXPORTER": "otlp"}, None, "lanes"),
    ({"OTEL_TRACES_EXPORTER": "console"}, None, "tracing"),
    ({"OTEL_TRACES_EXPORTER": "none"}, None, "lanes"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, None, "tracing"),
    ({}, type("SDKProvider", (), {"add_span_processor": lambda self, p: None})(), "tracing"),
])
def test_resolve_mode(env, provider, expected):
    assert config.resolve_mode(config.load_settings(env), provider) == expected


def test_exporter_without_sdk_is_lanes_with_a_warning(monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "opentelemetry.sdk" else real(name, *a))
    from graybaggage import _log

    _log._reset_for_tests()
    with caplog.at_level("WARNING"):
        assert config.resolve_mode(config.load_settings({"OTEL_TRACES_EXPORTER": "console"})) == "lanes"
    assert any("opentelemetry-sdk is not installed, so nothing can be exported" in r.getMessage() for r in caplog.records)


# -- the start-up line and the status document --------------------------------------------------------
class _Source:
    def __init__(self, kind="file", detail="/t.json", error=None, loaded_at=1.0, value=None, generation=1):
        from graybaggage.table import EMPTY

        self.kind, self.detail, self.error, self.loaded_at = kind, detail, error, loaded_at
        self.value, self.generation = value if value is not None else EMPTY, generation


def _table():
    from graybaggage.table import load_table_text

    return load_table_text('{"version": 1, "revision": "4", "lanes": {"gray": {"routes": {"a": "a-gray", "c": "c-gray"}},'
                           ' "blue": {"fallback": "strict", "routes": {}}}}', "demo")


@pytest.mark.parametrize("source,words", [
    (_Source(value=_table()), "lane-table=file /t.json (ok, 2 lanes, 2 routes, revision 4)"),
    (_Source(error="bad JSON", value=_table()), "lane-table=file /t.json (error: bad JSON)"),
    (_Source(loaded_at=None), "lane-table=file /t.json (loading)"),
    (_Source(kind="none", detail="", loaded_at=None), "lane-table=none (every call stays on base)"),
])
def test_startup_line_names_the_table_state(source, words):
    st = _status.State()
    st.switched_on_by, st.mode, st.hooks = "graybaggage run", "lanes", ["flask", "requests"]
    st.otel_loaded, st.otel_skipped = ["threading"], ["flask"]
    snap = _status.snapshot(config.load_settings({}), source, st, CompositePropagator([TraceContextTextMapPropagator()]))
    line = _status.startup_line(snap, "/tmp/s/1.json")
    assert line.startswith("graybaggage: on (graybaggage run) mode=lanes lane=base "), line
    assert words in line
    assert "hooks=flask,requests otel-instrumentations=threading (skipped: flask) status=/tmp/s/1.json" in line
    assert line.endswith("(GRAYBAGGAGE_QUIET=1 logs this at INFO)")


def test_status_table_document_round_trips():
    from graybaggage.table import load_table_text

    doc = _status.table_document(_table())
    again = load_table_text(__import__("json").dumps(doc), "demo")
    assert again.describe() == _table().describe() and again.revision == "4"
    assert doc["lanes"]["blue"] == {"fallback": "strict", "routes": {}}


# -- the decision is re-asserted on every later extraction ---------------------------------------------
USER_LISTS = {
    "tracecontext,baggage": CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]),
    "tracecontext": CompositePropagator([TraceContextTextMapPropagator()]),
    "baggage": CompositePropagator([W3CBaggagePropagator()]),
}


@pytest.mark.parametrize("name", sorted(USER_LISTS))
@pytest.mark.parametrize("decided,carrier,expected", [
    ("gray", {"x-mse-tag": "gray"}, "gray"),          # the header only: the user's list cannot see it
    ("gray", {"baggage": "x-mse-tag=blue"}, "gray"),  # a baggage entry never overrides the decision
    ("", {"baggage": "x-mse-tag=gray"}, None),        # decided base (an edge dropped the tag): stays base
    (None, {"baggage": "x-mse-tag=blue"}, "blue"),    # no decision (no graybaggage hook): the user's list rules
])
def test_keep_lane_decision(name, decided, carrier, expected):
    user = USER_LISTS[name]
    prop = KeepLaneDecision(user, config.load_settings({}))
    assert prop._propagators == user._propagators and prop.fields == user.fields  # the user's list, unchanged
    token = attach(set_value(DECIDED_KEY, decided, set_lane("x-mse-tag", decided or None, Context()))
                   if decided is not None else Context())
    try:
        ctx = prop.extract(carrier)
        if expected == "blue" and "baggage" not in name:
            expected = None  # no baggage propagator and no decision: nothing carries it
        assert get_lane("x-mse-tag", ctx) == expected
        if decided is not None:  # and an extraction inside the extracted context keeps it again
            inner = attach(ctx)
            try:
                assert get_lane("x-mse-tag", prop.extract({"baggage": "x-mse-tag=other"})) == expected
            finally:
                detach(inner)
    finally:
        detach(token)
