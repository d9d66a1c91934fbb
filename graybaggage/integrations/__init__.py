"""graybaggage's own integrations: one module per library.

Each integration module declares, in one place:

- ``MODULES``: ``{module imported by the app: patch function}``. Patches apply when the app imports the
  library, are idempotent (marked wrappers) and reversible (:func:`uninstall`).
- ``_instruments``: the supported versions, OpenTelemetry-contrib style (``("urllib3 >= 1.26, < 3",)``). A
  requirement applies to the targets whose top-level module is the distribution's name (``urllib3.*``).
- ``_internals``: ``{target module: ("Class.attr", ...)}``, the library internals the patch needs.
- ``_lost``: what the application loses when the integration stays off.
- ``_distribution`` (optional): the distribution of a top-level module named otherwise (``grpc`` -> ``grpcio``).

Before patching a target, :func:`check` compares the installed version with ``_instruments`` and looks up
every internal; when one fails, one log line names the library, its version and what is lost, and the
target is left unpatched. On the request path, :mod:`graybaggage._patch` guards every hook: a hook that fails
before calling the library steps aside (logged once) and the call goes out unchanged.
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, Callable
import sys

from graybaggage import _patch
from graybaggage._log import warn_once

_logger = logging.getLogger(__name__)

SERVERS = ("flask", "django", "starlette", "uvicorn", "wsgi_servers")
CLIENTS = ("requests", "urllib3", "urllib", "httpx", "aiohttp")
RPC = ("grpc", "celery")
"""Both sides of a call (or a task) in one module."""
ALL = SERVERS + CLIENTS + RPC


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None (a seam for tests)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _resolve(obj: Any, path: str) -> bool:
    """Whether ``path`` exists under ``obj``; a class's attribute must be its own (what :func:`_patch.wrap`
    wraps), not one inherited from a base class."""
    for part in path.split("."):
        if isinstance(obj, type):
            obj = obj.__dict__.get(part)
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def check(integration: ModuleType, target: str, module: Any) -> str | None:
    """Why ``integration`` must not patch ``module`` (imported as ``target``): a complete log line, or None."""
    name = integration.__name__.rsplit(".", 1)[-1]
    lost = getattr(integration, "_lost", f"lanes on {name}")
    top = target.split(".", 1)[0]
    top = getattr(integration, "_distribution", {}).get(top, top).lower().replace("_", "-")
    for spec in getattr(integration, "_instruments", ()):
        try:
            from packaging.requirements import Requirement

            req = Requirement(spec)
        except Exception:  # noqa: BLE001 - no packaging, or a bad spec: no version check
            continue
        if req.name.lower().replace("_", "-") != top:
            continue
        have = installed_version(req.name)
        if have is None:  # imported but not installed as a distribution (vendored, source tree): checked below
            continue
        if not req.specifier.contains(have, prereleases=True):
            return (f"graybaggage: {req.name} {have} is not a supported version ({spec}): {lost}; "
                    f"the {name} integration stays off")
    for path in getattr(integration, "_internals", {}).get(target, ()):
        if not _resolve(module, path):
            version = None
            try:
                version = installed_version(top)
            except Exception:  # noqa: BLE001
                pass
            return (f"graybaggage: {top} {version or '(unknown version)'} has no {target}.{path} (the library's "
                    f"internals moved): {lost}; the {name} integration stays off")
    return None


def _checked(integration: ModuleType, target: str, patch: Callable[[Any], None]) -> Callable[[Any], None]:
    def checked_patch(module: Any) -> None:
        problem = check(integration, target, module)
        if problem is not None:
            warn_once(_logger, problem)
            return
        patch(module)

    return checked_patch


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
                _patch.when_imported(target, _checked(mod, target, patch), name)
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
