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
from graybaggage.lane import baggage_update, header_update
from graybaggage.routing import send, strict_error_class

_instruments = ("requests >= 2.25, < 3",)
_internals = {"requests.adapters": ("HTTPAdapter.send",)}
_lost = "outbound requests calls carry no lane and are not re-routed to lane instances"


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


def _lane_headers(headers: Any, lane: str | None, rt: Any) -> None:
    """:func:`_client.set_lane_headers` for a request. The usual case (a lane, and the app set neither carrier)
    writes the chosen carriers straight into requests' ``CaseInsensitiveDict`` store, as its own ``__setitem__``
    writes it: lowercase name -> (name, value). Everything else takes the general step."""
    settings = rt.settings
    if lane is not None and type(headers) is _CID:
        store = headers._store
        key = settings.header
        if key not in store and "baggage" not in store:
            header = header_update(None, lane, settings.send_header)
            if header is not None:
                store[key] = (key, header)
            bag = baggage_update(None, key, lane, settings.send_baggage)
            if bag is not None:
                store["baggage"] = ("baggage", bag)
            return
    _client.set_lane_headers(headers, lane, rt)


def _send(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    request = args[0] if args else kwargs["request"]
    rt, lane = _client.current()
    headers = request.headers
    if lane is not None or rt.settings.edge:
        _lane_headers(headers, lane, rt)
    try:
        setattr(headers, HANDLED, True)  # the urllib3 pool hook underneath has nothing left to do
    except AttributeError:  # an unusual header mapping: the pool hook will just check again
        pass
    route, u = _client.decide(rt, lane, request.url)
    if route is None:
        return wrapped(*args, **kwargs)
    original = request.url
    host_header = request.headers.get("Host")
    method = request.method or "GET"
    safe = method.upper() in _client.SAFE_METHODS

    def to_target() -> Any:
        request.url = _client.rewrite(u, route)
        if host_header is not None and host_header.split(":")[0].lower() == (u.hostname or ""):
            request.headers["Host"] = _client.netloc(route)
        resp = wrapped(*args, **kwargs)
        if safe and not kwargs.get("stream", False):
            # Session.send would read the body right after this returns; reading it here lets a connection that
            # breaks mid-body fall back like one that breaks before the headers (for safe methods only)
            try:
                _client.check_length(resp.headers, len(resp.content), method)
            except Exception:
                resp.close()
                raise
        return resp

    def to_base() -> Any:
        request.url = original
        if host_header is not None:
            request.headers["Host"] = host_header
        return wrapped(*args, **kwargs)

    def strict_error(msg: str, cause: BaseException | None) -> BaseException:
        import requests

        return strict_error_class(requests.exceptions.ConnectionError)(msg, request=request)

    return send(rt.router, route, to_target, to_base,
                _client.fallback_predicate(_is_connect_error, _is_aborted, request.method), strict_error,
                _client.retry_predicate(_is_aborted, request.method))


_CID: Any = None
"""requests' CaseInsensitiveDict once requests.adapters is patched, if its store has the layout the fast
paths read and write (checked with a probe); else None and the mapping's own methods are used."""


def _known_layout(cid: Any) -> bool:
    try:
        probe = cid()
        probe["X-Probe"] = "1"
        store = probe.__dict__.get("_store")
        return type(store) in (OrderedDict, dict) and list(store.items()) == [("x-probe", ("X-Probe", "1"))]
    except Exception:  # noqa: BLE001 - anything unexpected: no fast path
        return False


def patch(mod: Any) -> None:
    global _CID
    cid = getattr(mod, "CaseInsensitiveDict", None)
    _CID = cid if cid is not None and _known_layout(cid) else None
    wrap(mod.HTTPAdapter, "send", _send)


MODULES = {"requests.adapters": patch}
