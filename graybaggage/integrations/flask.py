"""Flask: every ``Flask`` app handles requests under the lane (patches ``flask.app.Flask.__call__``)."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import handle_wsgi

_instruments = ("flask >= 2.0, < 4",)
_internals = {"flask.app": ("Flask.__call__",)}
_lost = "requests served by Flask are handled without their lane (their outbound calls go to base instances)"



def _call(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    environ = args[0] if args else kwargs["environ"]
    return handle_wsgi(environ, lambda: wrapped(*args, **kwargs))


def patch(mod: Any) -> None:
    wrap(mod.Flask, "__call__", _call)


MODULES = {"flask.app": patch}
