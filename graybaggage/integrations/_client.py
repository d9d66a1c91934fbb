"""Shared outbound step for every client integration: lane headers and the route decision."""
from __future__ import annotations

import errno
import socket
from typing import Any, Callable, MutableMapping
from urllib.parse import SplitResult, urlsplit, urlunsplit

from graybaggage import _runtime
from graybaggage.lane import baggage_update, get_lane, header_update, replace_baggage_member
from graybaggage.table import Route

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


def current() -> tuple[_runtime.Runtime, str | None]:
    rt = _runtime.get()
    return rt, get_lane(rt.settings.header)


def text(value: Any) -> Any:
    """A header value as text: clients accept bytes values (sent as they are, i.e. latin-1), and the
    baggage merge must not turn a call the client would have made into a TypeError."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    return str(value)  # e.g. an int, which http.client sends as str(value)


def set_lane_headers(headers: MutableMapping[str, Any], lane: str | None, rt: _runtime.Runtime) -> None:
    """Make the outbound headers carry exactly the current lane.

    ``headers`` must be a case-insensitive mapping whose ``__setitem__`` replaces every value of the name
    (requests' CaseInsensitiveDict, urllib3's HTTPHeaderDict, httpx.Headers, multidict.CIMultiDict).
    The header is set (overwriting a hand-forwarded value) and the lane is added to ``baggage``; a carrier
    that ``GRAYBAGGAGE_CARRIERS`` leaves out is not added, only corrected when the app sent it.
    With no lane, an edge strips any lane header or baggage entry the application copied from the
    incoming request, so a forged tag cannot leak through a proxying edge.
    """
    settings = rt.settings
    key = settings.header
    get = headers.get
    if lane is not None:
        header = header_update(get(key), lane, settings.send_header)
        if header is not None:
            headers[key] = header
        bag = baggage_update(text(get("baggage")), key, lane, settings.send_baggage)
        if bag is not None:
            headers["baggage"] = bag
        return
    if rt.settings.edge:
        if get(key) is not None:
            del headers[key]
        existing = text(get("baggage"))
        if existing:
            kept = replace_baggage_member(existing, key, None)
            if kept != existing:
                del headers["baggage"]
                if kept:
                    headers["baggage"] = kept


def _authority(url: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of an absolute http(s) URL, cheaply; None when it needs the full parser."""
    i = url.find("://")
    if i <= 0:
        return None
    start = i + 3
    end = len(url)
    for ch in "/?#":
        k = url.find(ch, start, end)
        if k != -1:
            end = k
    netloc = url[start:end]
    if not netloc or "@" in netloc or "[" in netloc or "\\" in netloc or "%" in netloc:
        return None
    host, sep, port_s = netloc.partition(":")
    if sep:
        if not port_s.isdigit():
            return None
        return host.lower(), int(port_s)
    return host.lower(), DEFAULT_PORTS.get(url[:i].lower())


def decide(rt: _runtime.Runtime, lane: str | None, url: str) -> tuple[Route | None, SplitResult | None]:
    """The route for an outbound call to ``url`` in ``lane`` and the parsed URL, or ``(None, None)``.

    A fast authority parse finds most "no route" answers; a route is only taken after the standard
    parser (the one the rewrite uses) agrees on host and port.
    """
    if lane is None or not rt.settings.routing or not rt.router.routes_lane(lane):
        return None, None
    fast = _authority(url)
    if fast is not None:
        if rt.router.decide(lane, fast[0], fast[1]) is None:
            return None, None
    try:
        u = urlsplit(url)
        host = u.hostname
        port = u.port or DEFAULT_PORTS.get(u.scheme)
    except ValueError:
        return None, None
    if not host or (fast is not None and (host, port) != fast):
        return None, None
    route = rt.router.decide(lane, host, port)
    return route, (u if route is not None else None)


def netloc(route: Route) -> str:
    host = f"[{route.host}]" if ":" in route.host else route.host
    return f"{host}:{route.port}" if route.port is not None else host


def rewrite(u: SplitResult, route: Route) -> str:
    """The URL with its authority replaced by the route's target (userinfo dropped)."""
    return urlunsplit((u.scheme, netloc(route), u.path, u.query, u.fragment))


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_os_aborted(exc: BaseException | None) -> bool:
    """True when the connection was reset or closed before any response arrived."""
    import http.client

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)):
            return True
        nxt = getattr(exc, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], BaseException) else None
        if not isinstance(nxt, BaseException):
            nxt = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = nxt or exc.__cause__ or exc.__context__
        seen += 1
    return False


def fallback_predicate(connect_error: Callable[[BaseException], bool], aborted: Callable[[BaseException], bool],
                       method: str | None) -> Callable[[BaseException], bool]:
    """When a failed call to a lane target may go to base instead.

    Always when the connection was never made. Also, for safe methods (GET, HEAD, OPTIONS) only, when the
    target closed or reset the connection before the response was complete: before any response byte (a
    kept-alive connection to an instance that is shutting down), or after the headers but before the whole
    body arrived (an instance that died mid-response; the hooks read the body where the client would have
    read it anyway, see :func:`is_body_broken`). RFC 9110 section 9.2.2 makes safe requests retryable;
    requests with unsafe methods are never re-sent once they reached the target.
    """
    safe = (method or "GET").upper() in SAFE_METHODS
    return lambda exc: connect_error(exc) or (safe and (aborted(exc) or is_body_broken(exc)))


def retry_predicate(aborted: Callable[[BaseException], bool], method: str | None) -> Callable[[BaseException], bool] | None:
    """For safe methods: a failure worth one retry on the same target (closed before any response byte, not
    mid-body); None for other methods (never retried)."""
    if (method or "GET").upper() not in SAFE_METHODS:
        return None
    return lambda exc: aborted(exc) and not is_body_broken(exc)


class IncompleteBody(ConnectionError):
    """Raised inside a hook when a response body ended before its ``Content-Length`` (clients that do not
    enforce it, e.g. urllib3 1.26, return a short body silently); the safe-method rule then falls back."""


def is_body_broken(exc: BaseException | None) -> bool:
    """True when the response body was cut short: ``http.client.IncompleteRead`` (urllib3's subclasses it),
    or :class:`IncompleteBody`, anywhere in the error's chain (arguments, reason, cause, context)."""
    import http.client

    todo, seen = [exc], 0
    while todo and seen < 16:
        cur = todo.pop()
        if not isinstance(cur, BaseException):
            continue
        seen += 1
        if isinstance(cur, (http.client.IncompleteRead, IncompleteBody)):
            return True
        todo.extend(a for a in cur.args if isinstance(a, BaseException))
        todo.extend(x for x in (getattr(cur, "reason", None), cur.__cause__, cur.__context__) if x is not None)
    return False


PRELOAD_MAX = 1 << 20
"""Largest declared body a hook reads before returning (clients whose callers may stream: httpx, aiohttp)."""


def should_preload(method: str | None, headers: Any) -> bool:
    """Whether a hook may read a safe response's body before returning it: only with a declared
    ``Content-Length`` of at most :data:`PRELOAD_MAX` (a caller streaming a large or open-ended body keeps
    streaming; a break in such a body is not covered)."""
    if (method or "GET").upper() not in ("GET", "OPTIONS"):
        return False
    declared = headers.get("Content-Length")
    return bool(declared) and declared.isdigit() and int(declared) <= PRELOAD_MAX


def check_length(headers: Any, got: int, method: str) -> None:
    """Raise :class:`IncompleteBody` when a body of ``got`` bytes is shorter than the response's declared
    ``Content-Length`` (not for HEAD, nor for encoded bodies whose decoded length differs)."""
    if method.upper() == "HEAD" or headers.get("Content-Encoding"):
        return
    declared = headers.get("Content-Length")
    if declared and declared.isdigit() and got < int(declared):
        raise IncompleteBody(f"response body ended after {got} of {declared} bytes")


def is_os_connect_error(exc: BaseException | None) -> bool:
    """True for OS errors that can only happen before a connection exists (refused, unroutable, DNS)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
            return True
        if isinstance(exc, OSError) and exc.errno in _CONNECT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
