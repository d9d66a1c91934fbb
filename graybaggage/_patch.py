"""Reversible, idempotent patches (wrapt proxies carrying a marker) applied when a module is imported."""
from __future__ import annotations

import importlib
import inspect
import logging
import sys
from typing import Any, Callable

import wrapt

_logger = logging.getLogger(__name__)
_MARK = "_self_graybaggage"
_applied: list[tuple[Any, str]] = []
_hooks_active = True


def _is_ours(obj: Any) -> bool:
    while obj is not None:
        if getattr(obj, _MARK, False):
            return True
        obj = getattr(obj, "__wrapped__", None)
    return False


def _raw(owner: Any, attr: str) -> Any:
    return owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)


def is_hooked(cls: type, attr: str) -> bool:
    """True when the ``attr`` that instances of ``cls`` use (first in the MRO) carries graybaggage's wrapper."""
    for klass in getattr(cls, "__mro__", ()):
        if attr in klass.__dict__:
            return _is_ours(klass.__dict__[attr])
    return False


def _step_aside(wrapper: Callable[..., Any], exc: BaseException) -> None:
    from graybaggage._log import log_once

    name = getattr(wrapper, "__module__", "").rsplit(".", 1)[-1]
    log_once(_logger, f"hook-failed:{name}:{wrapper.__qualname__}",
             "graybaggage: the %s integration's hook %s failed before the call (%s: %s), probably because the "
             "library's internals moved: such calls go out unchanged (no lane, no re-routing)",
             name, wrapper.__qualname__, type(exc).__name__, exc)


def guarded(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` made safe for the request path: if it raises before it called the wrapped function, the
    failure is logged once and the wrapped function is called as the application called it. Once the wrapped
    function was called, whatever happens is the library's outcome and propagates as is (a request is never
    sent twice because of graybaggage). Hooks that touch internals after the call guard those accesses."""
    if inspect.iscoroutinefunction(wrapper):
        async def guard_async(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            called = False

            def call(*a: Any, **k: Any) -> Any:
                nonlocal called
                called = True
                return wrapped(*a, **k)

            try:
                return await wrapper(call, instance, args, kwargs)
            except Exception as exc:
                if called:
                    raise
                _step_aside(wrapper, exc)
            return await wrapped(*args, **kwargs)

        return guard_async

    def guard(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        called = False

        def call(*a: Any, **k: Any) -> Any:
            nonlocal called
            called = True
            return wrapped(*a, **k)

        try:
            return wrapper(call, instance, args, kwargs)
        except Exception as exc:
            if called:
                raise
            _step_aside(wrapper, exc)
        return wrapped(*args, **kwargs)

    return guard


def wrap(owner: Any, attr: str, wrapper: Callable[..., Any]) -> bool:
    """Wrap ``owner.attr`` with a wrapt wrapper ``wrapper(wrapped, instance, args, kwargs)``, once, guarded
    (:func:`guarded`)."""
    current = _raw(owner, attr)
    if current is None:
        raise AttributeError(f"{getattr(owner, '__name__', owner)!s} has no attribute {attr!r}")
    if _is_ours(current):
        return False
    wrapt.wrap_function_wrapper(owner, attr, guarded(wrapper))
    setattr(_raw(owner, attr), _MARK, True)
    _applied.append((owner, attr))
    return True


def unwrap(owner: Any, attr: str) -> bool:
    """Remove graybaggage's wrapper from ``owner.attr``, keeping anyone else's wrappers around it."""
    parent, current = None, _raw(owner, attr)
    while current is not None and not getattr(current, _MARK, False):
        parent, current = current, getattr(current, "__wrapped__", None)
    if current is None:
        return False
    if parent is None:
        setattr(owner, attr, current.__wrapped__)
    else:
        parent.__wrapped__ = current.__wrapped__
    return True


def unwrap_all() -> int:
    n = 0
    while _applied:
        owner, attr = _applied.pop()
        n += unwrap(owner, attr)
    return n


def when_imported(module: str, patch: Callable[[Any], None], name: str) -> None:
    """Run ``patch(module)`` now if ``module`` is imported, else right after its import.

    A failing patch logs one warning and leaves the application running, unpatched for that library.
    """

    def hook(mod: Any) -> None:
        if not _hooks_active:
            return
        try:
            patch(mod)
        except Exception:
            _logger.warning("graybaggage: the %s integration failed to patch %s; it stays off", name, module,
                            exc_info=True)

    if module in sys.modules:
        hook(sys.modules[module])
    else:
        wrapt.register_post_import_hook(hook, module)


def set_hooks_active(active: bool) -> None:
    global _hooks_active
    _hooks_active = active


def import_optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
