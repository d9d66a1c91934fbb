"""graybaggage._context: the one-call access to OpenTelemetry's current context agrees with the public API."""
from __future__ import annotations

import contextvars
import logging

from opentelemetry import context as otel

from graybaggage import _context


def test_stock_runtime_context_is_used_directly():
    assert _context._VAR is not None
    assert _context.get_current == _context._VAR.get


def test_agrees_with_the_public_api_both_ways():
    ctx = otel.set_value("k", "ours")
    token = _context.attach(ctx)
    try:
        assert otel.get_current() is ctx and _context.get_current() is ctx
        inner = otel.set_value("k", "theirs")
        t2 = otel.attach(inner)
        assert _context.get_current() is inner
        otel.detach(t2)
        assert _context.get_current() is ctx
    finally:
        _context.detach(token)
    assert otel.get_value("k") is None


def test_detach_of_a_foreign_token_never_raises(caplog):
    token = contextvars.copy_context().run(lambda: _context.attach(otel.set_value("k", 1)))
    with caplog.at_level(logging.ERROR):
        _context.detach(token)  # created in another context: OpenTelemetry logs it, nothing raises
    assert "Failed to detach context" in caplog.text
    _context.detach(_context.attach(otel.get_current()))  # a normal pair still works afterwards


def test_another_runtime_context_goes_through_the_public_api(monkeypatch):
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    class Custom(ContextVarsRuntimeContext):  # e.g. chosen with OTEL_PYTHON_CONTEXT
        pass

    monkeypatch.setattr(otel, "_RUNTIME_CONTEXT", Custom())
    assert _context._context_var() is None
    monkeypatch.setattr(otel, "_RUNTIME_CONTEXT", object())
    assert _context._context_var() is None
