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

from graybaggage import _runtime, _spans, config, integrations
from graybaggage._log import log_once
from graybaggage.propagator import LaneBaggagePropagator, LanePropagator

_logger = logging.getLogger(__name__)
_saved_textmap: Any = None


def _has_lane_propagator(propagator: Any) -> bool:
    if isinstance(propagator, (LanePropagator, LaneBaggagePropagator)):
        return True
    return any(_has_lane_propagator(p) for p in getattr(propagator, "_propagators", ()))


def ensure_propagator(settings: config.Settings) -> bool:
    """Compose the lane propagator into the global one, unless the user chose OTEL_PROPAGATORS.

    Returns True when it changed the global propagator. (Setting OTEL_PROPAGATORS from inside a distro
    has no effect: opentelemetry.propagate builds the global propagator at import.)
    """
    global _saved_textmap
    current = get_global_textmap()
    if _has_lane_propagator(current):
        return False
    if settings.user_propagators is not None:
        log_once(_logger, "user-propagators",
                 "graybaggage: OTEL_PROPAGATORS=%s does not include 'graybaggage'; graybaggage's own HTTP hooks still "
                 "carry the lane, but other instrumentations (gRPC, Celery, manual inject) will not. Add ',graybaggage' "
                 "(last) to carry it everywhere", settings.user_propagators, level=logging.INFO)
        return False
    _saved_textmap = current
    set_global_textmap(compose(current, settings))
    return True


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


class GraybaggageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Switches lanes on for this process. ``instrument(settings=...)`` accepts explicit settings."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.get("settings") or config.get_settings()
        config.set_settings(settings)
        ensure_propagator(settings)
        _runtime.install(settings)
        names = integrations.install(settings.disabled_integrations)
        _spans.add_span_processor(trace.get_tracer_provider(), settings.header, settings.instance_lane)
        _logger.debug("graybaggage: integrations %s; instance lane %s", names, settings.instance_lane)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _saved_textmap
        integrations.uninstall()
        _runtime.uninstall()
        if _saved_textmap is not None:
            set_global_textmap(_saved_textmap)
            _saved_textmap = None
