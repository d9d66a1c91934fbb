"""uvicorn: any ASGI application it loads handles requests under the lane."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import after_call, wrap_asgi_app

_instruments = ("uvicorn >= 0.20, < 1",)
_internals = {"uvicorn.config": ("Config.load",)}
_lost = "requests served by uvicorn are handled without their lane (their outbound calls go to base instances)"



def _load(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    after_call(instance, "loaded_app", wrap_asgi_app, "uvicorn")
    return result


def patch(mod: Any) -> None:
    wrap(mod.Config, "load", _load)


MODULES = {"uvicorn.config": patch}
