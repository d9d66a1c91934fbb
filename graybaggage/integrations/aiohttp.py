"""aiohttp client: lane headers and re-routing in ``ClientSession._request``, before the connector
picks a pooled connection (pools are keyed by host and port)."""
from __future__ import annotations

from typing import Any

from graybaggage._patch import wrap
from graybaggage.integrations import _client
from graybaggage.routing import send_async, strict_error_class

_instruments = ("aiohttp >= 3.8, < 4",)
_internals = {"aiohttp.client": ("ClientSession._request", "CIMultiDict")}
_lost = "outbound aiohttp calls carry no lane and are not re-routed to lane instances"


def _timed_out(exc: BaseException) -> bool:
    import asyncio

    import aiohttp

    return isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))


def _is_connect_error(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(exc, aiohttp.ClientConnectorError) or _client.is_os_connect_error(exc)


def _is_aborted(exc: BaseException) -> bool:
    """``_request`` returns once the response headers arrived: a disconnect inside it came first."""
    import aiohttp

    return isinstance(exc, aiohttp.ServerDisconnectedError) or (
        isinstance(exc, aiohttp.ClientOSError) and _client.is_os_aborted(exc))


async def _request(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    if len(args) < 2:
        return await wrapped(*args, **kwargs)
    method, str_or_url, *rest = args
    rt, lane = _client.current()
    if lane is not None or rt.settings.edge:
        headers = _CIMultiDict(kwargs.get("headers") or {})
        _client.set_lane_headers(headers, lane, rt)
        kwargs["headers"] = headers
    route, u = _client.decide(rt, lane, str(str_or_url))
    if route is None:
        return await wrapped(*args, **kwargs)
    target = _client.rewrite(u, route)

    def strict_error(msg: str, cause: BaseException | None) -> BaseException:
        import aiohttp

        return strict_error_class(aiohttp.ClientConnectionError)(msg)

    async def to_target() -> Any:
        resp = await wrapped(method, target, *rest, **kwargs)
        if _client.should_preload(str(method), resp.headers):
            try:  # a body cut short raises here, where the safe-method rule can still fall back
                await resp.read()
            except Exception as exc:
                resp.close()
                if _timed_out(exc):  # a slow body is not a broken one: never re-sent
                    raise
                raise _client.IncompleteBody(f"response body cut short ({type(exc).__name__}: {exc})") from exc
        return resp

    return await send_async(rt.router, route, to_target,
                            lambda: wrapped(*args, **kwargs),
                            _client.fallback_predicate(_is_connect_error, _is_aborted, str(method)), strict_error,
                            _client.retry_predicate(_is_aborted, str(method)))


_CIMultiDict: Any = None
"""multidict's CIMultiDict, as ``aiohttp.client`` imports it."""


def patch(mod: Any) -> None:
    global _CIMultiDict
    _CIMultiDict = mod.CIMultiDict
    wrap(mod.ClientSession, "_request", _request)


MODULES = {"aiohttp.client": patch}
