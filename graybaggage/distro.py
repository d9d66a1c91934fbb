"""The ``graybaggage`` OpenTelemetry distro (``OTEL_PYTHON_DISTRO=graybaggage``; ``graybaggage run``'s start-up
hook, graybaggage/_auto/sitecustomize.py, chooses it without leaving the variable in the environment).

It chooses how lanes are carried:
- ``lanes`` (default when no tracing is configured): only graybaggage's lean hooks and the threading
  context propagation load; contrib instrumentations that would create spans are skipped. Nothing is
  exported anywhere.
- ``tracing`` (an exporter is configured, ``GRAYBAGGAGE_MODE=tracing``, or :func:`graybaggage.instrument`
  finds an SDK TracerProvider): every installed instrumentation loads as usual and the lane rides on the
  global propagator; graybaggage's hooks dedupe against them.
A failing instrumentation is logged and skipped; the application always starts.
"""
from __future__ import annotations

import logging
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro

from graybaggage import config
from graybaggage.instrumentor import ensure_propagator

_logger = logging.getLogger(__name__)
ALWAYS = ("graybaggage", "threading")


def resolve_mode(settings: config.Settings, provider: Any = None) -> str:
    if settings.mode != "auto":
        return settings.mode
    if settings.tracing_env:
        return "tracing"
    if provider is not None and hasattr(provider, "add_span_processor"):
        return "tracing"
    return "lanes"


class GraybaggageDistro(BaseDistro):  # type: ignore[misc]
    mode: str | None = None
    skipped: list[str] = []
    failed: list[str] = []
    loaded: list[str] = []

    def _configure(self, **kwargs: Any) -> None:
        settings = config.get_settings()
        ensure_propagator(settings)

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        settings = config.get_settings()
        if self.mode is None:
            type(self).mode = resolve_mode(settings)
        name = entry_point.name
        if name == "threading" and not settings.threads:
            self.skipped.append(name)
            return
        if self.mode == "lanes" and name not in ALWAYS:
            self.skipped.append(name)
            return
        try:
            super().load_instrumentor(entry_point, **kwargs)
            self.loaded.append(name)
        except ImportError as exc:
            _logger.debug("graybaggage: instrumentation %s not loaded (%s)", name, exc)
        except Exception:
            self.failed.append(name)
            _logger.warning("graybaggage: instrumentation %s failed and is skipped; the application continues",
                            name, exc_info=True)


def report() -> None:
    """``opentelemetry_post_instrument`` hook: one line saying what was switched on."""
    d = GraybaggageDistro
    if d.mode is None:
        return
    s = config.get_settings()
    _logger.info(
        "graybaggage: mode=%s instance-lane=%s header=%s lane-table=%s loaded=%s%s%s",
        d.mode, s.instance_lane, s.header, s.table_source, ",".join(d.loaded) or "-",
        f" skipped={','.join(d.skipped)}" if d.skipped else "",
        f" FAILED={','.join(d.failed)}" if d.failed else "",
    )
