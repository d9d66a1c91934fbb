"""The ``graybaggage`` OpenTelemetry instrumentor: lane propagator, lane runtime, integrations, spans.

Loaded by any distro through the ``opentelemetry_instrumentor`` entry point, so lanes also work when a
service runs another distro; :class:`graybaggage.distro.GraybaggageDistro` adds the mode choice.
"""
from __future__ import annotations

import logging
from typing import Any, Collection

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.propagators.composite import CompositePropagator

from graybaggage import _runtime, _spans, _status, config, integrations
from graybaggage._log import warn_once
from graybaggage.propagator import KeepLaneDecision, LaneBaggagePropagator, LanePropagator

_logger = logging.getLogger(__name__)
_saved_textmap: Any = None


def _has_lane_propagator(propagator: Any) -> bool:
    if isinstance(propagator, (LanePropagator, LaneBaggagePropagator)):
        return True
    return any(_has_lane_propagator(p) for p in getattr(propagator, "_propagators", ()))


def ensure_propagator(settings: config.Settings, mode: str | None = None) -> bool:
    """Put graybaggage's rule into the global propagator; True when it changed it.

    - ``OTEL_PROPAGATORS`` unset: OpenTelemetry's default gets the lane propagator (:func:`compose`).
    - set by the user: their list is kept as is for injection and extraction, wrapped in
      :class:`~graybaggage.propagator.KeepLaneDecision`, so a later extraction inside a request (an
      OpenTelemetry server middleware, FastAPI's telemetry) keeps the lane graybaggage decided for it.
      When the list has no ``graybaggage`` and ``mode`` is ``tracing``, a WARNING says what that costs.

    (Setting OTEL_PROPAGATORS from inside a distro would have no effect: opentelemetry.propagate builds the
    global propagator at import.)
    """
    global _saved_textmap
    current = get_global_textmap()
    if isinstance(current, KeepLaneDecision) or getattr(current, "_graybaggage", False):
        return False
    if settings.user_propagators is None and not _has_lane_propagator(current):
        new = compose(current, settings)
    else:
        new = KeepLaneDecision(current, settings)
        if not _has_lane_propagator(current):
            _warn_user_propagators(settings, mode)
    new._graybaggage = True  # type: ignore[attr-defined]
    _saved_textmap = current
    set_global_textmap(new)
    return True


def _warn_user_propagators(settings: config.Settings, mode: str | None) -> None:
    names = [x.strip() for x in (settings.user_propagators or "").split(",") if x.strip()]
    carried = ("only as a W3C baggage member (peers that read just the x-mse-tag header lose it)"
               if "baggage" in names else "no lane")
    warn_once(_logger,
              f"graybaggage: OTEL_PROPAGATORS={settings.user_propagators} has no 'graybaggage': inbound lanes are kept "
              "(graybaggage decides once per request) and graybaggage's own HTTP, gRPC and Celery hooks carry the lane on outbound "
              "calls, but calls made through other OpenTelemetry instrumentations (messaging other than Celery, manual inject) "
              f"carry {carried}. Add ',graybaggage' (last) to carry it everywhere",
              level=logging.WARNING if mode == "tracing" else logging.INFO)


def compose(current: Any, settings: config.Settings) -> Any:
    """The global propagator with the lane added.

    OpenTelemetry's default (``tracecontext,baggage``: exactly a TraceContext and a W3C baggage propagator)
    becomes ``[tracecontext, LaneBaggagePropagator]``, one flat composite that does what the default followed
    by the lane propagator does, at about half the cost per request. Anything else is kept whole, with the
    lane propagator after it.
    """
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = getattr(current, "_propagators", None)
    if (type(current) is CompositePropagator and isinstance(parts, list) and len(parts) == 2
            and type(parts[0]) is TraceContextTextMapPropagator and type(parts[1]) is W3CBaggagePropagator):
        return CompositePropagator([parts[0], LaneBaggagePropagator(settings)])
    return CompositePropagator([current, LanePropagator(settings)])


def switched_on(settings: config.Settings) -> bool:
    """Whether graybaggage may act in this process when OpenTelemetry loads its instrumentor.

    ``GRAYBAGGAGE_ENABLED`` decides when set; otherwise graybaggage is on under ``graybaggage run``, the
    graybaggage distro and :func:`graybaggage.instrument`, and off under any other distro: installing the
    package alone changes nothing in an ``opentelemetry-instrument`` process."""
    if settings.enabled is not None:
        if settings.enabled and _status.state.switched_on_by is None:
            _status.state.switched_on_by = "GRAYBAGGAGE_ENABLED=1"
        return settings.enabled
    return _status.state.switched_on_by is not None


_active = False


def active() -> bool:
    """True once the instrumentor switched graybaggage on in this process."""
    return _active


class GraybaggageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Switches lanes on for this process. ``instrument(settings=...)`` accepts explicit settings."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        global _active
        settings = kwargs.get("settings") or config.get_settings()
        if kwargs.get("settings") is None and not switched_on(settings):
            _explain_off(settings)
            return
        config.set_settings(settings)
        if _status.state.mode is None:
            _status.state.mode = config.resolve_mode(settings, trace.get_tracer_provider())
        ensure_propagator(settings, _status.state.mode)
        _runtime.install(settings)
        names = integrations.install(settings.disabled_integrations)
        _status.state.hooks = list(names)
        _spans.add_span_processor(trace.get_tracer_provider(), settings.header, settings.instance_lane)
        _active = True
        _logger.debug("graybaggage: integrations %s; instance lane %s", names, settings.instance_lane)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _saved_textmap, _active
        _active = False
        integrations.uninstall()
        _runtime.uninstall()
        if _saved_textmap is not None:
            set_global_textmap(_saved_textmap)
            _saved_textmap = None


def _explain_off(settings: config.Settings) -> None:
    import os

    configured = sorted(n for n in os.environ if n.startswith("GRAYBAGGAGE_") and n in config.known_names()
                        and n != config.GRAYBAGGAGE_ENABLED)
    if settings.enabled is False:
        _logger.info("graybaggage: %s=0: graybaggage stays off in this process", config.GRAYBAGGAGE_ENABLED)
    elif configured:
        warn_once(_logger, f"graybaggage: {', '.join(configured)} set, but graybaggage is not switched on in this "
                           "process (another OpenTelemetry distro started it): start it with 'graybaggage run', or set "
                           f"{config.GRAYBAGGAGE_ENABLED}=1")
    else:
        _logger.debug("graybaggage: installed but not switched on (another distro); nothing changed")
