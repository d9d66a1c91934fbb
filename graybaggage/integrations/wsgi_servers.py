"""Plain WSGI servers (wsgiref, gunicorn, werkzeug): any WSGI application they serve gets the lane.

Framework integrations (Flask, Django) do the same at the application; the two never extract twice
(the inner one sees the lane already decided and passes through).
"""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations._server import wrap_wsgi_app


def _wsgiref_run(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    if args:
        args = (wrap_wsgi_app(args[0]),) + tuple(args[1:])
    else:
        kwargs["application"] = wrap_wsgi_app(kwargs["application"])
    return wrapped(*args, **kwargs)


def _gunicorn_load(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    instance.wsgi = wrap_wsgi_app(instance.wsgi)
    return result


def _werkzeug_init(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    instance.app = wrap_wsgi_app(instance.app)
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
