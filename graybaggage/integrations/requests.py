"""requests: lane headers and re-routing in ``HTTPAdapter.send``, before urllib3 picks a pool.

Rewriting the URL there gives each lane target its own connection pool, so kept-alive sockets never
cross lanes. It runs inside ``Session.send`` (and so inside the OTel requests span, when tracing).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations import _client
from graybaggage.integrations.urllib3 import HANDLED
from graybaggage.routing import send, strict_error_class

def _is_connect_error(exc: BaseException) -> bool:
    import urllib3.exceptions as ue

    seen, cur = 0, exc
    while cur is not None and seen < 8:
        if isinstance(cur, (ue.NewConnectionError, ue.ConnectTimeoutError)):
            return True
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            cur = reason
        elif cur.args and isinstance(cur.args[0], BaseException):
            cur = cur.args[0]
        else:
            cur = cur.__cause__ or cur.__context__
        seen += 1
    return _client.is_os_connect_error(exc)


def _is_aborted(exc: BaseException) -> bool:
    """urllib3 says "Connection aborted." only for failures before the response headers arrived."""
    import urllib3.exceptions as ue

    cur: BaseException | None = exc
    for _ in range(4):
        if isinstance(cur, ue.ProtocolError) and cur.args and cur.args[0] == "Connection aborted.":
            return _client.is_os_aborted(cur)
        nxt = cur.args[0] if cur is not None and cur.args and isinstance(cur.args[0], BaseException) else None
        cur = nxt or getattr(cur, "reason", None)
        if cur is None:
            break
    return False


def _store_reader(headers: Any) -> Any:
    """A read of requests' ``CaseInsensitiveDict`` by lowercase name straight from its store, or None for
    another mapping. Its own ``get`` raises and catches a KeyError for every missing name: for the usual
    call (neither lane header nor baggage there yet) that was most of the header step's cost."""
    if type(headers) is not _CID:
        return None
    store = getattr(headers, "_store", None)
    if type(store) is not OrderedDict:  # requests changed its layout: use the mapping's own get
        return None
    get = store.get

    def read(name: str) -> Any:
        item = get(name)
        return item[1] if item is not None else None

    return read


def _send(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    request = args[0] if args else kwargs["request"]
    rt, lane = _client.current()
    headers = request.headers
    if lane is not None or rt.settings.edge:
        _client.set_lane_headers(headers, lane, rt, _store_reader(headers))
    try:
        setattr(headers, HANDLED, True)  # the urllib3 pool hook underneath has nothing left to do
    except AttributeError:  # an unusual header mapping: the pool hook will just check again
        pass
    route, u = _client.decide(rt, lane, request.url)
    if route is None:
        return wrapped(*args, **kwargs)
    original = request.url
    host_header = request.headers.get("Host")

    def to_target() -> Any:
        request.url = _client.rewrite(u, route)
        if host_header is not None and host_header.split(":")[0].lower() == (u.hostname or ""):
            request.headers["Host"] = _client.netloc(route)
        return wrapped(*args, **kwargs)

    def to_base() -> Any:
        request.url = original
        if host_header is not None:
            request.headers["Host"] = host_header
        return wrapped(*args, **kwargs)

    def strict_error(msg: str, cause: BaseException | None) -> BaseException:
        import requests

        return strict_error_class(requests.exceptions.ConnectionError)(msg, request=request)

    return send(rt.router, route, to_target, to_base,
                _client.fallback_predicate(_is_connect_error, _is_aborted, request.method), strict_error)


_CID: Any = None  # requests' CaseInsensitiveDict, once requests.adapters is patched


def patch(mod: Any) -> None:
    global _CID
    _CID = getattr(mod, "CaseInsensitiveDict", None)
    wrap(mod.HTTPAdapter, "send", _send)


MODULES = {"requests.adapters": patch}
