"""The programmatic equivalent of ``opentelemetry-instrument`` with the graybaggage distro."""
from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import trace
try:  # OpenTelemetry's (private) shim; the standard library's has the same call on Python >= 3.10
    from opentelemetry.util._importlib_metadata import entry_points
except ImportError:  # pragma: no cover - depends on the installed OpenTelemetry
    from importlib.metadata import entry_points  # type: ignore[assignment]

from graybaggage import config

_logger = logging.getLogger(__name__)


def instrument(**overrides: Any) -> None:
    from graybaggage import _status
    from graybaggage.distro import GraybaggageDistro, resolve_mode

    settings = config.load_settings(**overrides)
    config.set_settings(settings)
    if _status.state.switched_on_by is None:
        _status.state.switched_on_by = "graybaggage.instrument()"
    distro = GraybaggageDistro()
    distro.configure(programmatic=True)
    GraybaggageDistro.mode = _status.state.mode = resolve_mode(settings, trace.get_tracer_provider())
    disabled = {x.strip() for x in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",") if x.strip()}
    if "*" in disabled:
        disabled = {n for n in (ep.name for ep in entry_points(group="opentelemetry_instrumentor")) if n != "graybaggage"}
    from graybaggage.instrumentor import GraybaggageInstrumentor

    inst = GraybaggageInstrumentor()
    if inst.is_instrumented_by_opentelemetry:  # re-instrument with the new settings
        inst.uninstrument()
    inst.instrument(settings=settings)
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    for ep in entry_points(group="opentelemetry_instrumentor"):
        if ep.name in disabled or ep.name == "graybaggage":
            continue
        dist = getattr(ep, "dist", None)
        if dist is not None and get_dist_dependency_conflicts(dist) is not None:
            continue  # the instrumented library is not installed (same check as opentelemetry-instrument)
        distro.load_instrumentor(ep, skip_dep_check=True)
    _status.announce()


def uninstrument() -> None:
    from graybaggage.instrumentor import GraybaggageInstrumentor

    GraybaggageInstrumentor().uninstrument()
