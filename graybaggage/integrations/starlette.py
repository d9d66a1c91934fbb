"""Starlette and FastAPI: every application handles requests under the lane."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import handle_asgi


async def _call(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    scope = args[0] if args else kwargs["scope"]
    return await handle_asgi(scope, lambda: wrapped(*args, **kwargs))


def patch(mod: Any) -> None:
    wrap(mod.Starlette, "__call__", _call)


MODULES = {"starlette.applications": patch}
