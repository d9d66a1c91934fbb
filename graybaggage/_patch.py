"""Reversible, idempotent patches (wrapt proxies carrying a marker) applied when a module is imported."""
from __future__ import annotations

import importlib
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


def wrap(owner: Any, attr: str, wrapper: Callable[..., Any]) -> bool:
    """Wrap ``owner.attr`` with a wrapt wrapper ``wrapper(wrapped, instance, args, kwargs)``, once."""
    current = _raw(owner, attr)
    if current is None:
        raise AttributeError(f"{getattr(owner, '__name__', owner)!s} has no attribute {attr!r}")
    if _is_ours(current):
        return False
    wrapt.wrap_function_wrapper(owner, attr, wrapper)
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
