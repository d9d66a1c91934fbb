"""urllib3: re-routing in ``PoolManager.urlopen`` (before a pool is chosen); lane headers on every request,
including direct ``HTTPConnectionPool`` use (which cannot be re-routed: the pool is bound to its host)."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations import _client
from graybaggage.routing import send, strict_error_class

_instruments = ("urllib3 >= 1.26, < 3",)
_internals = {"urllib3.connectionpool": ("HTTPConnectionPool.urlopen", "HTTPHeaderDict.iteritems"),
               "urllib3.poolmanager": ("PoolManager.urlopen",)}
_lost = "outbound urllib3 calls carry no lane and are not re-routed to lane instances"


HANDLED = "_graybaggage_lane_set"
"""Attribute the requests integration sets on a request's headers once it has set the lane on them."""

def _is_connect_error(exc: BaseException) -> bool:
    import urllib3.exceptions as ue

    cur: Any = exc
    for _ in range(8):
        if isinstance(cur, (ue.NewConnectionError, ue.ConnectTimeoutError)):
            return True
        nxt = getattr(cur, "reason", None)
        if not isinstance(nxt, BaseException):
            break
        cur = nxt
    return _client.is_os_connect_error(exc)


_HTTPHeaderDict: Any = None
"""urllib3's HTTPHeaderDict, as ``urllib3.connectionpool`` imports it (1.26 and 2.x alike; the top-level
``urllib3.HTTPHeaderDict`` is 2.x only)."""


def _with_lane(headers: Any, instance: Any, lane: str | None, rt: Any) -> Any:
    HTTPHeaderDict = _HTTPHeaderDict
    if headers is None:
        headers = getattr(instance, "headers", None) or {}
    merged = HTTPHeaderDict(headers)  # a copy: the caller's mapping is left alone
    try:
        _client.set_lane_headers(merged, lane, rt)
    except TypeError:  # bytes values, which urllib3 sends as they are but HTTPHeaderDict cannot join
        merged = HTTPHeaderDict()
        for name, value in HTTPHeaderDict(headers).iteritems():
            merged.add(name, _client.text(value))
        _client.set_lane_headers(merged, lane, rt)
    return merged


def _pool_urlopen(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    headers = args[3] if len(args) > 3 else kwargs.get("headers")
    if getattr(headers, HANDLED, False):  # requests' hook already set exactly the lane headers
        return wrapped(*args, **kwargs)
    rt, lane = _client.current()
    if lane is None and not rt.settings.edge:
        return wrapped(*args, **kwargs)
    if len(args) > 3:  # urlopen(method, url, body, headers, ...)
        args = args[:3] + (_with_lane(args[3], instance, lane, rt),) + args[4:]
    else:
        kwargs["headers"] = _with_lane(kwargs.get("headers"), instance, lane, rt)
    return wrapped(*args, **kwargs)


def _manager_urlopen(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    if len(args) < 2:  # unusual keyword call: no routing, headers still added by the pool hook
        return wrapped(*args, **kwargs)
    method, url, *rest = args
    rt, lane = _client.current()
    route, u = _client.decide(rt, lane, url)
    if route is None:
        return wrapped(*args, **kwargs)
    target = _client.rewrite(u, route)

    def strict_error(msg: str, cause: BaseException | None) -> BaseException:
        import urllib3.exceptions as ue

        return strict_error_class(ue.HTTPError)(msg)

    def to_target() -> Any:
        if str(method).upper() not in _client.SAFE_METHODS or not kwargs.get("preload_content", True):
            return wrapped(method, target, *rest, **kwargs)
        # the body is read inside urlopen (preload_content): a body cut short raises there, and the
        # safe-method rule falls back; urllib3 1.26 does not enforce Content-Length unless asked
        resp = wrapped(method, target, *rest, **{"enforce_content_length": True, **kwargs})
        if kwargs.get("enforce_content_length") is None:
            _client.check_length(resp.headers, len(resp.data or b""), str(method))
        return resp

    return send(rt.router, route, to_target,
                lambda: wrapped(*args, **kwargs),
                _client.fallback_predicate(_is_connect_error, _client.is_os_aborted, str(method)), strict_error,
                _client.retry_predicate(_client.is_os_aborted, str(method)))


def patch_pool(mod: Any) -> None:
    global _HTTPHeaderDict
    _HTTPHeaderDict = mod.HTTPHeaderDict
    wrap(mod.HTTPConnectionPool, "urlopen", _pool_urlopen)


def patch_manager(mod: Any) -> None:
    wrap(mod.PoolManager, "urlopen", _manager_urlopen)


MODULES = {"urllib3.connectionpool": patch_pool, "urllib3.poolmanager": patch_manager}
