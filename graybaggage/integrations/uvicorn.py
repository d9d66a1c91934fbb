"""uvicorn: any ASGI application it loads handles requests under the lane."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import wrap_asgi_app


def _load(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    instance.loaded_app = wrap_asgi_app(instance.loaded_app)
    return result


def patch(mod: Any) -> None:
    wrap(mod.Config, "load", _load)


MODULES = {"uvicorn.config": patch}
