"""graybaggage's own integrations: one module per library, each a dict ``MODULES`` of
``{module imported by the app: patch function}``. Patches apply when the app imports the library, are
idempotent (marked wrappers) and reversible (:func:`uninstall`)."""
from __future__ import annotations

import importlib
import logging
import sys

from graybaggage import _patch

_logger = logging.getLogger(__name__)

SERVERS = ("flask", "django", "starlette", "uvicorn", "wsgi_servers")
CLIENTS = ("requests", "urllib3", "urllib", "httpx", "aiohttp")
RPC = ("grpc", "celery")
"""Both sides of a call (or a task) in one module."""
ALL = SERVERS + CLIENTS + RPC


def install(disabled: frozenset[str] = frozenset()) -> list[str]:
    """Register every integration not in ``disabled``; returns the names registered."""
    _patch.set_hooks_active(True)
    done = []
    for name in ALL:
        if name in disabled:
            continue
        try:
            mod = importlib.import_module(f"graybaggage.integrations.{name}")
            for target, patch in mod.MODULES.items():
                _patch.when_imported(target, patch, name)
            done.append(name)
        except Exception:
            _logger.warning("graybaggage: integration %s failed to load; continuing without it", name, exc_info=True)
    return done


def uninstall() -> int:
    _patch.set_hooks_active(False)
    for name in ALL:  # integrations that hook more than wrappers (signal receivers) undo that too
        mod = sys.modules.get(f"graybaggage.integrations.{name}")
        unpatch = getattr(mod, "unpatch", None)
        if unpatch is not None:
            try:
                unpatch()
            except Exception:
                _logger.warning("graybaggage: integration %s failed to unpatch", name, exc_info=True)
    return _patch.unwrap_all()
