"""Starlette and FastAPI: every application handles requests under the lane.

Wraps the ASGI app that ``Starlette.build_middleware_stack`` returns (the outermost middleware), rather
than ``Starlette.__call__``, so ASGI servers still see a plain ASGI 3 application when they inspect it.
"""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import wrap_asgi_app

_instruments = ("starlette >= 0.20, < 2",)
_internals = {"starlette.applications": ("Starlette.build_middleware_stack",)}
_lost = "requests served by Starlette/FastAPI are handled without their lane (their outbound calls go to base instances)"



def _build(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    return wrap_asgi_app(wrapped(*args, **kwargs))


def patch(mod: Any) -> None:
    wrap(mod.Starlette, "build_middleware_stack", _build)


MODULES = {"starlette.applications": patch}
