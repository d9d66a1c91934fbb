"""Switch-on behaviour of the distro, in real processes: propagator composition, OTEL_PROPAGATORS,
no surprise exporting, and broken instrumentations that must not stop the app."""
from __future__ import annotations

import textwrap

import pytest

from tests import support


@pytest.fixture(scope="module")
def sink():
    s = support.start("sink", {"HOP_KIND": "wsgi"})
    yield s
    s.kill()


def _gray_reaches(front: support.Service) -> str | None:
    return support.chain_of(support.get(front.url + "/p", {"x-mse-tag": "gray"}))[-1]["header"]


def test_lanes_only_composes_propagator_and_exports_nothing(sink):
    front = support.start("front", {"HOP_KIND": "flask", "HOP_NEXT": sink.url})
    try:
        info = support.get(front.url + "/otel")
        assert "x-mse-tag" in info["propagator"] and "traceparent" in info["propagator"] and "baggage" in info["propagator"]
        # OpenTelemetry's default pair became one flat composite: tracecontext + the lane-aware baggage step
        assert info["propagators"] == ["TraceContextTextMapPropagator", "LaneBaggagePropagator"], info
        # opentelemetry-distro's configurator is installed in the test env; lanes mode skips it: no SDK, no export
        assert info["provider"] == "ProxyTracerProvider" and info["exporters"] == [], info
        assert _gray_reaches(front) == "gray"
    finally:
        front.kill()


@pytest.mark.parametrize("propagators,expect_field,leaves", [  # (wrapped in KeepLaneDecision, leaves unchanged)
    ("tracecontext", False, ["TraceContextTextMapPropagator"]),
    ("tracecontext,baggage,graybaggage", True, ["TraceContextTextMapPropagator", "W3CBaggagePropagator", "LanePropagator"]),
    ("tracecontext,baggage", False, ["TraceContextTextMapPropagator", "W3CBaggagePropagator"]),  # = the default,
])  # but chosen by the user: never rewritten
def test_user_otel_propagators_respected(sink, propagators, expect_field, leaves):
    front = support.start("front", {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "OTEL_PROPAGATORS": propagators})
    try:
        info = support.get(front.url + "/otel")
        assert ("x-mse-tag" in info["propagator"]) is expect_field, info
        assert info["propagators"] == leaves, info
        # graybaggage's own HTTP hooks carry the lane either way
        assert _gray_reaches(front) == "gray"
    finally:
        front.kill()


def test_broken_instrumentation_logs_and_app_is_still_instrumented(sink, tmp_path):
    pkg = tmp_path / "site"
    (pkg / "broken_instr-1.0.dist-info").mkdir(parents=True)
    (pkg / "broken_instr-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-instr\nVersion: 1.0\n")
    (pkg / "broken_instr-1.0.dist-info" / "entry_points.txt").write_text(
        "[opentelemetry_instrumentor]\nbroken = broken_instr:Broken\n")
    (pkg / "broken_instr.py").write_text(textwrap.dedent("""
        from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
        class Broken(BaseInstrumentor):
            def instrumentation_dependencies(self):
                return ()
            def _instrument(self, **kw):
                raise RuntimeError("this instrumentation is broken on purpose")
            def _uninstrument(self, **kw):
                pass
    """))
    front = support.start("front", {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "PYTHONPATH": str(pkg),
                                    "GRAYBAGGAGE_MODE": "tracing", "OTEL_TRACES_EXPORTER": "none"})
    try:
        assert _gray_reaches(front) == "gray"  # really instrumented, not silently skipped
        assert "instrumentation broken failed and is skipped" in front.log
        assert "broken on purpose" in front.log
    finally:
        front.kill()


def test_missing_framework_instrumentation_does_not_matter(sink):
    """A lean-only install (contrib instrumentations disabled entirely) still carries lanes."""
    front = support.start("front", {"HOP_KIND": "flask", "HOP_NEXT": sink.url,
                                    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "flask,requests,urllib3,urllib,wsgi"})
    try:
        assert _gray_reaches(front) == "gray"
    finally:
        front.kill()
