"""httpx: lane headers and re-routing in the sync and async transports, before httpcore picks a pool.

The ``Host`` header is rewritten together with the URL (httpx sets it when the request is built).
"""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations import _client
from graybaggage.routing import send, send_async, strict_error_class

_instruments = ("httpx >= 0.23, < 1",)
_internals = {"httpx": ("HTTPTransport.handle_request", "AsyncHTTPTransport.handle_async_request", "URL.copy_with")}
_lost = "outbound httpx calls carry no lane and are not re-routed to lane instances"


def _timed_out(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TimeoutException)


def _is_connect_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or _client.is_os_connect_error(exc)


def _is_aborted(exc: BaseException) -> bool:
    """Inside the transport call no response has been returned yet: a read/write/protocol error here
    means the target dropped the connection before responding."""
    import httpx

    return isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError))


def _strict_error(request: Any) -> Any:
    def make(msg: str, cause: BaseException | None) -> BaseException:
        import httpx

        err = strict_error_class(httpx.ConnectError)(msg)
        err.request = request
        return err

    return make


def _prepare(request: Any) -> tuple[Any, Any, Any, Any]:
    rt, lane = _client.current()
    if lane is not None or rt.settings.edge:
        _client.set_lane_headers(request.headers, lane, rt)
    route, _ = _client.decide(rt, lane, str(request.url))
    return rt, route, request.url, request.headers.get("Host")


def _retarget(request: Any, route: Any) -> None:
    request.url = request.url.copy_with(host=route.host, port=route.port)
    request.headers["Host"] = _client.netloc(route) if route.port not in (80, 443) else route.host


def _restore(request: Any, url: Any, host: Any) -> None:
    request.url = url
    if host is not None:
        request.headers["Host"] = host


def _handle(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    request = args[0] if args else kwargs["request"]
    rt, route, url, host = _prepare(request)
    if route is None:
        return wrapped(*args, **kwargs)

    def to_target() -> Any:
        _retarget(request, route)
        resp = wrapped(*args, **kwargs)
        if _client.should_preload(request.method, resp.headers):
            try:  # a body cut short raises here, where the safe-method rule can still fall back
                resp.read()
            except Exception as exc:
                resp.close()
                if _timed_out(exc):  # a slow body is not a broken one: never re-sent
                    raise
                raise _client.IncompleteBody(f"response body cut short ({type(exc).__name__}: {exc})") from exc
        return resp

    def to_base() -> Any:
        _restore(request, url, host)
        return wrapped(*args, **kwargs)

    return send(rt.router, route, to_target, to_base,
                _client.fallback_predicate(_is_connect_error, _is_aborted, request.method), _strict_error(request),
                _client.retry_predicate(_is_aborted, request.method))


async def _handle_async(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    request = args[0] if args else kwargs["request"]
    rt, route, url, host = _prepare(request)
    if route is None:
        return await wrapped(*args, **kwargs)

    async def to_target() -> Any:
        _retarget(request, route)
        resp = await wrapped(*args, **kwargs)
        if _client.should_preload(request.method, resp.headers):
            try:
                await resp.aread()
            except Exception as exc:
                await resp.aclose()
                if _timed_out(exc):  # a slow body is not a broken one: never re-sent
                    raise
                raise _client.IncompleteBody(f"response body cut short ({type(exc).__name__}: {exc})") from exc
        return resp

    async def to_base() -> Any:
        _restore(request, url, host)
        return await wrapped(*args, **kwargs)

    return await send_async(rt.router, route, to_target, to_base,
                            _client.fallback_predicate(_is_connect_error, _is_aborted, request.method),
                            _strict_error(request), _client.retry_predicate(_is_aborted, request.method))


def patch(mod: Any) -> None:
    wrap(mod.HTTPTransport, "handle_request", _handle)
    wrap(mod.AsyncHTTPTransport, "handle_async_request", _handle_async)


MODULES = {"httpx": patch}
