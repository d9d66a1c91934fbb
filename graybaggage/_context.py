"""OpenTelemetry's current context, read and set with one call instead of three on the hot path.

``opentelemetry.context.get_current()`` calls the runtime context's ``get_current()``, which calls
``ContextVar.get()``; attach and detach are the same. When the runtime context is OpenTelemetry's stock
``ContextVarsRuntimeContext`` (the default, and the only one OpenTelemetry ships), graybaggage calls the
``ContextVar`` directly; with any other runtime context (``OTEL_PYTHON_CONTEXT`` chose one) it goes through
the public functions. Detaching never raises: like OpenTelemetry's ``detach``, a token that cannot be reset
is logged by OpenTelemetry and ignored.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable

from opentelemetry import context as _otel


def _context_var() -> ContextVar | None:
    """The ContextVar behind OpenTelemetry's runtime context, when it is the stock implementation and the
    public functions read exactly it (checked once, with a probe)."""
    runtime = getattr(_otel, "_RUNTIME_CONTEXT", None)
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    except ImportError:  # pragma: no cover - OpenTelemetry moved it: use the public API
        return None
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is not ContextVarsRuntimeContext or not isinstance(var, ContextVar):
        return None
    probe = _otel.set_value("graybaggage-context-probe", True)
    token = var.set(probe)
    try:
        seen = _otel.get_current() is probe
    finally:
        var.reset(token)
    return var if seen else None


_VAR = _context_var()

get_current: Callable[[], Any] = _VAR.get if _VAR is not None else _otel.get_current
"""The current OpenTelemetry context."""

attach: Callable[[Any], Any] = _VAR.set if _VAR is not None else _otel.attach
"""Make ``context`` current; returns the token for :func:`detach`."""


def detach(token: Any) -> None:
    """Restore the context that was current before ``token``'s attach (never raises)."""
    if _VAR is not None:
        try:
            _VAR.reset(token)
            return
        except (ValueError, RuntimeError, TypeError):  # another context's or a used token: let OTel log it
            pass
    _otel.detach(token)
