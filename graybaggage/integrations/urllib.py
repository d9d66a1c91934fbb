"""urllib.request: lane headers and re-routing in ``OpenerDirector.open`` (urllib keeps no connection pool)."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations import _client
from graybaggage.routing import send, strict_error_class

_instruments = ()  # the standard library
_internals = {"urllib.request": ("OpenerDirector.open", "Request.full_url", "Request.get_header", "Request.add_header",
                                  "Request.remove_header", "Request.get_method")}
_lost = "outbound urllib.request calls carry no lane and are not re-routed to lane instances"


def _is_connect_error(exc: BaseException) -> bool:
    from urllib.error import HTTPError, URLError

    if isinstance(exc, HTTPError):
        return False
    if isinstance(exc, URLError) and isinstance(exc.reason, BaseException):
        return _client.is_os_connect_error(exc.reason)
    return _client.is_os_connect_error(exc)


def _aborted(exc: BaseException) -> bool:
    from urllib.error import HTTPError

    return not isinstance(exc, HTTPError) and _client.is_os_aborted(exc)


class _Headers:
    """Adapts a urllib Request's header store to the case-insensitive mapping set_lane_headers expects."""

    def __init__(self, req: Any) -> None:
        self.req = req

    def get(self, name: str) -> Any:
        return self.req.get_header(name.capitalize())  # urllib stores names capitalize()d

    def __setitem__(self, name: str, value: str) -> None:
        self.req.add_header(name, value)

    def __delitem__(self, name: str) -> None:
        self.req.remove_header(name.capitalize())


def _open(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    import urllib.request

    rt, lane = _client.current()
    if lane is None and not rt.settings.edge:
        return wrapped(*args, **kwargs)
    fullurl = args[0] if args else kwargs.pop("fullurl")
    rest = args[1:]
    if isinstance(fullurl, str):
        data = rest[0] if rest else kwargs.pop("data", None)
        rest = rest[1:]
        req = urllib.request.Request(fullurl, data)
        rest = (None,) + tuple(rest)  # data already on the Request
    else:
        req = fullurl
    _client.set_lane_headers(_Headers(req), lane, rt)
    route, u = _client.decide(rt, lane, req.full_url)
    if route is None:
        return wrapped(req, *rest, **kwargs)
    original = req.full_url

    def to_target() -> Any:
        req.full_url = _client.rewrite(u, route)
        return wrapped(req, *rest, **kwargs)

    def to_base() -> Any:
        req.full_url = original
        return wrapped(req, *rest, **kwargs)

    def strict_error(msg: str, cause: BaseException | None) -> BaseException:
        from urllib.error import URLError

        return strict_error_class(URLError)(msg)

    return send(rt.router, route, to_target, to_base,
                _client.fallback_predicate(_is_connect_error, _aborted, req.get_method()), strict_error,
                _client.retry_predicate(_aborted, req.get_method()))


def patch(mod: Any) -> None:
    wrap(mod.OpenerDirector, "open", _open)


MODULES = {"urllib.request": patch}
