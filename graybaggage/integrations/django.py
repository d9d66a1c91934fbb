"""Django: the WSGI and ASGI handlers run each request under the lane."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import handle_asgi, handle_wsgi

_instruments = ("django >= 3.2, < 6",)
_internals = {"django.core.handlers.wsgi": ("WSGIHandler.__call__",), "django.core.handlers.asgi": ("ASGIHandler.handle",)}
_lost = "requests served by Django are handled without their lane (their outbound calls go to base instances)"



def _wsgi_call(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    return handle_wsgi(args[0], lambda: wrapped(*args, **kwargs))


async def _asgi_handle(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    scope = args[0] if args else kwargs["scope"]
    return await handle_asgi(scope, lambda: wrapped(*args, **kwargs))


def patch_wsgi(mod: Any) -> None:
    wrap(mod.WSGIHandler, "__call__", _wsgi_call)


def patch_asgi(mod: Any) -> None:
    # ``handle`` (not ``__call__``): ASGI servers inspect ``__call__`` to detect ASGI 3 applications.
    wrap(mod.ASGIHandler, "handle", _asgi_handle)


MODULES = {"django.core.handlers.wsgi": patch_wsgi, "django.core.handlers.asgi": patch_asgi}
