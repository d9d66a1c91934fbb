"""The ``graybaggage`` OpenTelemetry distro (``OTEL_PYTHON_DISTRO=graybaggage``; ``graybaggage run``'s start-up
hook, graybaggage/_auto/sitecustomize.py, chooses it without leaving the variable in the environment).

It chooses how lanes are carried, and composes with opentelemetry-distro instead of replacing it:
- ``lanes`` (``auto`` when no OpenTelemetry export is configured): only graybaggage's lean hooks and the
  threading context propagation load; contrib instrumentations that would create spans are skipped, and no
  SDK configurator runs (unless you configured OpenTelemetry export or ``OTEL_PYTHON_CONFIGURATOR``), so no
  SDK is built that nobody asked for.
- ``tracing`` (an exporter or OTLP endpoint is configured, ``GRAYBAGGAGE_MODE=tracing``, or
  :func:`graybaggage.instrument` finds an SDK TracerProvider): opentelemetry-distro's defaults apply when it
  is installed (``OTEL_TRACES_EXPORTER=otlp`` etc., exactly what ``opentelemetry-instrument`` would set), the
  SDK configurator runs, every installed instrumentation loads as usual, and the lane rides on the global
  propagator; graybaggage's hooks dedupe against them.
A failing instrumentation is logged and skipped; the application always starts.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro

from graybaggage import _status, config
from graybaggage.instrumentor import ensure_propagator

_logger = logging.getLogger(__name__)
ALWAYS = ("graybaggage", "threading")


def resolve_mode(settings: config.Settings, provider: Any = None) -> str:
    return config.resolve_mode(settings, provider)


def wants_sdk(settings: config.Settings, mode: str) -> bool:
    """Whether the SDK configurator should run: in tracing mode, or when the user configured OpenTelemetry."""
    return mode == "tracing" or settings.tracing_env or bool(os.environ.get("OTEL_PYTHON_CONFIGURATOR"))


def _opentelemetry_distro_defaults() -> bool:
    """Apply opentelemetry-distro's defaults (what ``opentelemetry-instrument`` does with it), if installed."""
    try:
        from opentelemetry.distro import OpenTelemetryDistro
    except ImportError:
        return False
    try:
        OpenTelemetryDistro()._configure()
        return True
    except Exception:  # noqa: BLE001 - its defaults are only environment defaults; never stop the app
        _logger.warning("graybaggage: opentelemetry-distro's defaults could not be applied", exc_info=True)
        return False


def _replace_configurators_once(run: bool) -> None:
    """Decide what OpenTelemetry's auto-instrumentation does with its SDK configurators this one time.

    ``run=False`` (lanes mode, no OpenTelemetry configured): skip them; OpenTelemetry offers no switch for that
    (``OTEL_PYTHON_CONFIGURATOR`` naming nothing logs a warning per configurator). ``run=True``: run them, but a
    configurator that fails (say, an exporter that is not installed) no longer stops the instrumentations from
    loading: OpenTelemetry has logged the error, graybaggage says that nothing is exported, and lanes work.
    The module-level ``_load_configurators`` that ``initialize()`` calls next is replaced by a one-shot stand-in
    that puts the original back. If OpenTelemetry moved it, nothing changes."""
    try:
        import opentelemetry.instrumentation.auto_instrumentation as auto
    except Exception:  # noqa: BLE001
        return
    original = getattr(auto, "_load_configurators", None)
    if not callable(original) or getattr(original, "_graybaggage_original", None) is not None:
        return

    def once() -> None:
        auto._load_configurators = original
        if not run:
            _status.state.sdk_configured = False
            _logger.debug("graybaggage: lanes mode, no OpenTelemetry export configured: SDK configurators skipped")
            return
        try:
            original()
            _status.state.sdk_configured = True
        except Exception as exc:  # noqa: BLE001 - OpenTelemetry logged it with its traceback
            _status.state.sdk_configured = False
            _logger.warning("graybaggage: OpenTelemetry's SDK configuration failed (%s: %s, see above): no spans are "
                            "exported; graybaggage switches lanes on all the same", type(exc).__name__, exc)

    once._graybaggage_original = original  # type: ignore[attr-defined]
    auto._load_configurators = once


def restore_configurators() -> None:
    """Undo :func:`_replace_configurators_once` if ``initialize()`` never came to call it."""
    try:
        import opentelemetry.instrumentation.auto_instrumentation as auto
    except Exception:  # noqa: BLE001
        return
    current = getattr(auto, "_load_configurators", None)
    original = getattr(current, "_graybaggage_original", None)
    if original is not None:
        auto._load_configurators = original


class GraybaggageDistro(BaseDistro):  # type: ignore[misc]
    mode: str | None = None
    skipped: list[str] = []
    failed: list[str] = []
    loaded: list[str] = []

    def _configure(self, **kwargs: Any) -> None:
        settings = config.get_settings()
        if _status.state.switched_on_by is None and os.environ.get("OTEL_PYTHON_DISTRO") == "graybaggage":
            _status.state.switched_on_by = "OTEL_PYTHON_DISTRO=graybaggage"
        if not kwargs.get("programmatic") and (settings.enabled is False or _status.state.switched_on_by is None):
            # GRAYBAGGAGE_ENABLED=0, or opentelemetry-instrument took this distro only because it came first
            # (OTEL_PYTHON_DISTRO unset): behave exactly as opentelemetry-distro would
            _opentelemetry_distro_defaults()
            return
        mode = config.resolve_mode(settings)
        type(self).mode = _status.state.mode = mode
        if not kwargs.get("programmatic"):
            if mode == "tracing":
                _opentelemetry_distro_defaults()
            _replace_configurators_once(wants_sdk(settings, mode))
        ensure_propagator(settings, mode)

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        settings = config.get_settings()
        name = entry_point.name
        if self.mode is not None:
            if name == "threading" and not settings.threads:
                self._note(name, "skipped")
                return
            if self.mode == "lanes" and name not in ALWAYS:
                self._note(name, "skipped")
                return
        try:
            super().load_instrumentor(entry_point, **kwargs)
            if name != "graybaggage":
                self._note(name, "loaded")
        except ImportError as exc:
            _logger.debug("graybaggage: instrumentation %s not loaded (%s)", name, exc)
        except Exception:
            self._note(name, "failed")
            _logger.warning("graybaggage: instrumentation %s failed and is skipped; the application continues",
                            name, exc_info=True)

    @staticmethod
    def _note(name: str, what: str) -> None:
        getattr(GraybaggageDistro, what).append(name)
        {"loaded": _status.state.otel_loaded, "skipped": _status.state.otel_skipped,
         "failed": _status.state.otel_failed}[what].append(name)


def report() -> None:
    """``opentelemetry_post_instrument`` hook: the start-up line, once, in a process where graybaggage is on."""
    if not _status.state.hooks and not _status.state.switched_on_by:
        return
    from graybaggage import instrumentor

    if not instrumentor.active():
        return
    _status.announce()
