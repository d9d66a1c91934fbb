"""Shared inbound step for every server integration: decide the lane once per request, attach it."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from opentelemetry.context import Context, attach, detach, get_current, set_value

from graybaggage import _memo
from graybaggage import _patch, _runtime
from graybaggage._request import ASGIRequestView, WSGIRequestView
from graybaggage.lane import set_lane
from graybaggage.propagator import DECIDED_KEY


MARK = "graybaggage.lane"
"""Key set in the WSGI environ / ASGI scope once the lane is decided: nested hooks on the same request
pass through (a leftover context from another request never counts as "already decided")."""


_entry_contexts: dict[tuple[str, str | None], Context] = {}
_MAX_ENTRY_CONTEXTS = 256


def _enter(lane: str | None, key: str) -> object:
    """Attach the request's lane (and the decision) to the current context; returns the token.

    A server thread usually has nothing attached between requests, so the context to attach depends only on
    the lane: it is built once per lane and shared (OpenTelemetry contexts are never changed in place, every
    ``set_value`` makes a new one). Anything else attached builds a fresh context on top of it.
    """
    current = get_current()
    if not current:
        ctx = _entry_contexts.get((key, lane))
        if ctx is None:
            ctx = set_value(DECIDED_KEY, lane or "", set_lane(key, lane, current))
            _memo.put(_entry_contexts, (key, lane), ctx, _MAX_ENTRY_CONTEXTS)
        return attach(ctx)
    return attach(set_value(DECIDED_KEY, lane or "", set_lane(key, lane, current)))


class _LaneBody:
    """The app's response iterable, iterated in the request's lane; the lane is detached when the server
    closes it (WSGI calls ``close()`` after the last byte), after the app's own close()."""

    __slots__ = ("_body", "_token")

    def __init__(self, body: Any, token: object) -> None:
        self._body = body
        self._token = token

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            token, self._token = self._token, None
            if token is not None:
                detach(token)


def handle_wsgi(environ: dict, call: Callable[[], Any]) -> Any:
    """Run the WSGI app ``call`` with the request's lane attached until its response is closed."""
    if MARK in environ:
        return call()
    rt = _runtime.get()
    inbound = rt.inbound
    h = environ.get(inbound.wsgi_key)
    lane = inbound.decide([h] if h is not None else None, environ.get("HTTP_BAGGAGE"),
                          lambda: WSGIRequestView(environ))
    environ[MARK] = lane or ""
    token = _enter(lane, inbound.header)
    try:
        body = call()
    except BaseException:
        detach(token)
        raise
    return _LaneBody(body, token)


def after_call(instance: Any, attr: str, wrap_app: Callable[[Any], Any], library: str) -> None:
    """``instance.attr = wrap_app(instance.attr)`` after the server's own call returned; if the attribute
    moved, one log line and the server runs its application without lanes (never an exception)."""
    try:
        setattr(instance, attr, wrap_app(getattr(instance, attr)))
    except Exception as exc:  # noqa: BLE001 - the server already loaded its app: never fail it
        import logging

        from graybaggage._log import log_once

        log_once(logging.getLogger(__name__), f"after-call:{library}:{attr}",
                 "graybaggage: %s has no usable %s.%s (%s: %s; the library's internals moved): its application is "
                 "served without lanes (outbound calls go to base instances)",
                 library, type(instance).__name__, attr, type(exc).__name__, exc)


def wrap_wsgi_app(app: Any) -> Any:
    """A WSGI app that runs ``app`` under :func:`handle_wsgi` (idempotent).

    ``app`` itself is returned when it already is ours, or when its class is one graybaggage hooks (Flask,
    Django's WSGIHandler): that hook decides the lane, and a second layer would only add cost per request.
    """
    if getattr(app, "_graybaggage", False) or _patch.is_hooked(type(app), "__call__"):
        return app

    def graybaggage_wsgi(environ: dict, start_response: Any) -> Any:
        return handle_wsgi(environ, lambda: app(environ, start_response))

    graybaggage_wsgi._graybaggage = True  # type: ignore[attr-defined]
    graybaggage_wsgi.__wrapped__ = app  # type: ignore[attr-defined]
    return graybaggage_wsgi


async def handle_asgi(scope: dict, call: Callable[[], Awaitable[Any]]) -> Any:
    if scope.get("type") not in ("http", "websocket") or MARK in scope:
        return await call()
    rt = _runtime.get()
    inbound = rt.inbound
    hkey = inbound.asgi_key
    values: list[str] | None = None
    bag: str | None = None
    for name, value in scope.get("headers") or ():
        if name == hkey:
            (values := values if values is not None else []).append(value.decode("latin-1"))
        elif name == b"baggage" and bag is None:
            bag = value.decode("latin-1")
    lane = inbound.decide(values, bag, lambda: ASGIRequestView(scope))
    scope[MARK] = lane or ""
    token = _enter(lane, inbound.header)
    try:
        return await call()
    finally:
        detach(token)


def wrap_asgi_app(app: Any) -> Any:
    if getattr(app, "_graybaggage", False):
        return app

    async def graybaggage_asgi(scope: dict, receive: Any, send: Any) -> Any:
        return await handle_asgi(scope, lambda: app(scope, receive, send))

    graybaggage_asgi._graybaggage = True  # type: ignore[attr-defined]
    graybaggage_asgi.__wrapped__ = app  # type: ignore[attr-defined]
    return graybaggage_asgi
