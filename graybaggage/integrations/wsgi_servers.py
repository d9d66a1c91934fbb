"""Plain WSGI servers (wsgiref, gunicorn, werkzeug): any WSGI application they serve gets the lane.

Framework integrations (Flask, Django) do the same at the application; the two never extract twice
(the inner one sees the lane already decided and passes through).
"""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import after_call, wrap_wsgi_app

_instruments = ("gunicorn >= 20, < 28", "werkzeug >= 2.0, < 4")
_internals = {"wsgiref.handlers": ("BaseHandler.run",), "gunicorn.workers.base": ("Worker.load_wsgi",),
               "werkzeug.serving": ("BaseWSGIServer.__init__",)}
_lost = "requests served by this WSGI server are handled without their lane (their outbound calls go to base instances)"



def _wsgiref_run(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    if args:
        args = (wrap_wsgi_app(args[0]),) + tuple(args[1:])
    else:
        kwargs["application"] = wrap_wsgi_app(kwargs["application"])
    return wrapped(*args, **kwargs)


def _gunicorn_load(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    after_call(instance, "wsgi", wrap_wsgi_app, "gunicorn")
    return result


def _werkzeug_init(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    after_call(instance, "app", wrap_wsgi_app, "werkzeug")
    return result


def patch_wsgiref(mod: Any) -> None:
    wrap(mod.BaseHandler, "run", _wsgiref_run)


def patch_gunicorn(mod: Any) -> None:
    wrap(mod.Worker, "load_wsgi", _gunicorn_load)


def patch_werkzeug(mod: Any) -> None:
    wrap(mod.BaseWSGIServer, "__init__", _werkzeug_init)


MODULES = {
    "wsgiref.handlers": patch_wsgiref,
    "gunicorn.workers.base": patch_gunicorn,
    "werkzeug.serving": patch_werkzeug,
}
