"""gRPC (grpcio, sync and ``grpc.aio``): the lane on both sides of a call, and per-call routing.

Server: ``grpc.server`` / ``grpc.aio.server`` get a server interceptor (first in the list). It decides the
lane from the call's metadata (``x-mse-tag``, ``baggage``) with the same code as HTTP (edge policy, dye rules
over the metadata, pass-through) and attaches it around the handler: the whole unary handler, each step of a
streaming response, the reading of a streaming request (it runs inside the handler).

Client: ``grpc.insecure_channel`` / ``secure_channel`` (and the ``grpc.aio`` ones) return a
:class:`LaneChannel` around the user's channel. A channel's target is fixed, so routing is per call: a call
in a lane whose table names a target for the channel's target goes over a lane channel to that target
(created lazily with the same credentials, options, compression and aio interceptors, cached per parent and
target, closed with the parent); every other call goes over the user's channel. Every call made in a lane
carries both carriers in its metadata.

Fallback: a call is sent to a lane channel only when that channel is connected (READY), or becomes so within
:data:`CONNECT_WAIT` seconds; otherwise (refused, unreachable, still connecting) the lane's fallback applies
before anything was sent: ``base`` sends it over the user's channel, ``strict`` raises
:class:`graybaggage.LaneUnavailableError` (also a ``grpc.RpcError`` with code UNAVAILABLE). A unary-unary call
that still fails with "failed to connect to all addresses" (the connection dropped between the check and the
call: nothing was sent) falls back too. A call that may have reached the server is never re-sent.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Callable

from opentelemetry.context import detach

from graybaggage import _runtime
from graybaggage._patch import wrap
from graybaggage._request import HeaderMapView
from graybaggage.integrations import _client
from graybaggage.integrations._server import _enter
from graybaggage.lane import baggage_update, get_lane, header_update, replace_baggage_member
from graybaggage.routing import ROUTED, LaneUnavailableError, send, send_async, strict_error_class

_instruments = ("grpcio >= 1.50, < 2",)
"""The grpcio versions this integration supports (OpenTelemetry-contrib style)."""
_distribution = {"grpc": "grpcio"}
_internals = {"grpc": ("server", "insecure_channel", "secure_channel", "Channel", "ServerInterceptor",
                       "intercept_channel", "ChannelConnectivity", "RpcError", "StatusCode",
                       "unary_unary_rpc_method_handler", "unary_stream_rpc_method_handler",
                       "stream_unary_rpc_method_handler", "stream_stream_rpc_method_handler")}
"""What the hooks touch in grpc (checked before patching; grpc.aio is patched only where it exists)."""
_lost = "gRPC calls carry no lane in their metadata, servers attach none, and calls are not re-routed to lane instances"

_logger = logging.getLogger(__name__)

CONNECT_WAIT = 3.0
"""Seconds a call waits for an idle or connecting lane channel to become READY before its fallback applies."""

_DEFAULT_PORT = 443  # gRPC's default port when a target names none


# -- metadata ------------------------------------------------------------------------------------
def lane_metadata(metadata: Any, lane: str | None, rt: _runtime.Runtime) -> Any:
    """Outbound metadata carrying exactly ``lane`` (both carriers by default), as :func:`_client.set_lane_headers`
    does for HTTP headers. Returns ``metadata`` itself when nothing changes."""
    settings = rt.settings
    key = settings.header
    if lane is None and not settings.edge:
        return metadata
    if lane is not None and not metadata:  # the usual call: no metadata of its own
        fresh = _fresh.get((key, lane, settings.send_header, settings.send_baggage))
        if fresh is None:
            fresh = _update([], lane, rt, None) or ()
            if len(_fresh) < 256:
                _fresh[(key, lane, settings.send_header, settings.send_baggage)] = fresh
        return fresh
    return _update(list(metadata) if metadata else [], lane, rt, metadata)


def _update(items: list, lane: str | None, rt: _runtime.Runtime, metadata: Any) -> Any:
    settings = rt.settings
    key = settings.header
    cur_header = next((v for k, v in items if k == key), None)
    cur_bag = next((_client.text(v) for k, v in items if k == "baggage"), None)
    if lane is not None:
        header = header_update(cur_header, lane, settings.send_header)
        bag = baggage_update(cur_bag, key, lane, settings.send_baggage)
        if header is None and bag is None:
            return metadata
        if header is not None:
            items = [(k, v) for k, v in items if k != key] + [(key, header)]
        if bag is not None:
            items = [(k, v) for k, v in items if k != "baggage"] + [("baggage", bag)]
        return tuple(items)
    # an edge with no lane: strip lane carriers the app copied from the incoming call
    kept_bag = replace_baggage_member(cur_bag, key, None) if cur_bag else None
    if cur_header is None and kept_bag == cur_bag:
        return metadata
    items = [(k, v) for k, v in items if k != key and k != "baggage"]
    if kept_bag:
        items.append(("baggage", kept_bag))
    return tuple(items)


_fresh: dict[tuple[str, str, bool, bool], tuple] = {}
"""The metadata of a lane call that had none, per (key, lane, carriers): built once (lanes are few)."""


# -- targets -------------------------------------------------------------------------------------
def parse_target(target: str) -> tuple[str, str, int] | None:
    """``(prefix, host, port)`` of a gRPC target naming one host, or None (unix sockets, address lists, xds...).

    ``host:port``, ``host`` (port 443), ``[v6]:port``, ``dns:host:port``, ``dns:///host:port``,
    ``dns://resolver/host:port``, ``ipv4:addr:port``, ``ipv6:[addr]:port``. The prefix is kept when re-targeting.
    """
    if not isinstance(target, str) or not target:
        return None
    prefix, rest = "", target
    if "://" in target:
        scheme, _, tail = target.partition("://")
        if scheme.lower() != "dns" or "/" not in tail:
            return None
        authority, _, rest = tail.partition("/")
        prefix = f"{scheme}://{authority}/"
    else:
        scheme, sep, tail = target.partition(":")
        if sep and scheme.lower() in ("dns", "ipv4", "ipv6"):
            prefix, rest = scheme + ":", tail
        elif sep and scheme.lower() in ("unix", "unix-abstract", "vsock", "xds", "google-c2p"):
            return None
    if not rest or "," in rest or "/" in rest or "@" in rest:
        return None
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        if after and not after.startswith(":"):
            return None
        port_s = after[1:]
    elif rest.count(":") == 1:
        host, _, port_s = rest.partition(":")
    elif ":" in rest:
        return None
    else:
        host, port_s = rest, ""
    if port_s and not port_s.isdigit():
        return None
    if not host:
        return None
    return prefix, host.lower(), int(port_s) if port_s else _DEFAULT_PORT


def _retarget(prefix: str, route: Any) -> str:
    return prefix + _client.netloc(route)


# -- errors --------------------------------------------------------------------------------------
def _is_connect_failure(exc: BaseException) -> bool:
    """A call that failed before any transport carried it: no address could be connected to."""
    import grpc

    if isinstance(exc, _NotReady):
        return True
    if not isinstance(exc, grpc.RpcError):
        return False
    try:
        code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an RpcError that is not a Call
        return False
    return code == grpc.StatusCode.UNAVAILABLE and "failed to connect to all addresses" in details.lower()


class _NotReady(Exception):
    """The lane channel did not become READY in time (nothing was sent)."""


def _strict_error(msg: str, cause: BaseException | None) -> BaseException:
    import grpc

    cls = strict_error_class(grpc.RpcError)
    err = cls(msg)
    err.code = lambda: grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    err.details = lambda: msg  # type: ignore[attr-defined]
    err.trailing_metadata = lambda: ()  # type: ignore[attr-defined]
    err.initial_metadata = lambda: ()  # type: ignore[attr-defined]
    return err


# -- server --------------------------------------------------------------------------------------
def _decide(metadata: Any) -> tuple[str | None, str]:
    rt = _runtime.get()
    inbound = rt.inbound
    key = inbound.header
    values: list[str] | None = None
    bag: str | None = None
    for item in metadata or ():
        k, v = item[0], item[1]
        if k == key:
            (values := values if values is not None else []).append(_client.text(v))
        elif k == "baggage" and bag is None:
            bag = _client.text(v)
    lane = inbound.decide(values, bag, lambda: HeaderMapView(list(metadata or ())))
    return lane, key


def _sync_iter(it: Any, lane: str | None, key: str) -> Any:
    """A response iterator whose every step runs in the lane."""
    it = iter(it)
    while True:
        token = _enter(lane, key)
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            detach(token)
        yield item


def _wrap_sync_behavior(behavior: Callable[..., Any], lane: str | None, key: str, streaming: bool) -> Callable[..., Any]:
    def run(request_or_iterator: Any, context: Any) -> Any:
        token = _enter(lane, key)
        try:
            result = behavior(request_or_iterator, context)
        finally:
            detach(token)
        return _sync_iter(result, lane, key) if streaming else result

    return run


async def _aio_iter(agen: Any, lane: str | None, key: str) -> Any:
    it = agen.__aiter__()
    while True:
        token = _enter(lane, key)
        try:
            item = await it.__anext__()
        except StopAsyncIteration:
            return
        finally:
            detach(token)
        yield item


def _wrap_aio_behavior(behavior: Callable[..., Any], lane: str | None, key: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        async def run_gen(request_or_iterator: Any, context: Any) -> Any:  # grpc.aio looks for an async generator
            async for item in _aio_iter(behavior(request_or_iterator, context), lane, key):
                yield item

        return run_gen

    async def run(request_or_iterator: Any, context: Any) -> Any:
        token = _enter(lane, key)
        try:
            result = behavior(request_or_iterator, context)
            if inspect.isawaitable(result):
                result = await result
        finally:
            detach(token)
        if hasattr(result, "__aiter__"):
            return _aio_iter(result, lane, key)
        return result

    return run


def _rewrap(handler: Any, wrap_behavior: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    import grpc

    rs, ss = handler.request_streaming, handler.response_streaming
    des, ser = handler.request_deserializer, handler.response_serializer
    if not rs and not ss:
        return grpc.unary_unary_rpc_method_handler(wrap_behavior(handler.unary_unary), des, ser)
    if not rs and ss:
        return grpc.unary_stream_rpc_method_handler(wrap_behavior(handler.unary_stream), des, ser)
    if rs and not ss:
        return grpc.stream_unary_rpc_method_handler(wrap_behavior(handler.stream_unary), des, ser)
    return grpc.stream_stream_rpc_method_handler(wrap_behavior(handler.stream_stream), des, ser)


def _safe_rewrap(handler: Any, details: Any, aio: bool) -> Any:
    """The handler with its behavior running in the call's lane; the handler itself if anything is unexpected."""
    if handler is None:
        return None
    try:
        lane, key = _decide(getattr(details, "invocation_metadata", None))
        if aio:
            return _rewrap(handler, lambda b: _wrap_aio_behavior(b, lane, key))
        return _rewrap(handler, lambda b: _wrap_sync_behavior(b, lane, key, bool(handler.response_streaming)))
    except Exception:  # noqa: BLE001 - never break a call: serve it unhooked
        from graybaggage._log import log_once

        log_once(_logger, "grpc-server-rewrap", "graybaggage: cannot hook a gRPC method handler (%r); serving it "
                 "without a lane", handler, level=logging.WARNING)
        return handler


def _server_interceptor() -> Any:
    import grpc

    class LaneServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
        _graybaggage = True

        def intercept_service(self, continuation: Any, details: Any) -> Any:
            return _safe_rewrap(continuation(details), details, aio=False)

    return LaneServerInterceptor()


def _aio_server_interceptor() -> Any:
    import grpc.aio

    class LaneAioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        _graybaggage = True

        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return _safe_rewrap(await continuation(details), details, aio=True)

    return LaneAioServerInterceptor()


def _with_interceptor(args: tuple, kwargs: dict, make: Callable[[], Any]) -> tuple[tuple, dict]:
    """Put graybaggage's interceptor first in ``interceptors`` (3rd positional or keyword), once."""
    if len(args) > 2:
        current = args[2]
        rest = list(args)
    else:
        current = kwargs.get("interceptors")
        rest = None
    current = list(current or ())
    if not any(getattr(i, "_graybaggage", False) for i in current):
        current = [make()] + current
    if rest is not None:
        rest[2] = current
        return tuple(rest), kwargs
    return args, {**kwargs, "interceptors": current}


def _server(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    args, kwargs = _with_interceptor(args, kwargs, _server_interceptor)
    return wrapped(*args, **kwargs)


def _aio_server(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    args, kwargs = _with_interceptor(args, kwargs, _aio_server_interceptor)
    return wrapped(*args, **kwargs)


# -- client: sync --------------------------------------------------------------------------------
class _Readiness:
    """The connectivity of one lane channel, kept current by a subscription (public ``Channel.subscribe``)."""

    def __init__(self, channel: Any) -> None:
        import grpc

        self._grpc = grpc
        self._channel = channel
        self._cv = threading.Condition()
        self.state: Any = None
        channel.subscribe(self._on_change, try_to_connect=True)

    def _on_change(self, state: Any) -> None:
        with self._cv:
            self.state = state
            self._cv.notify_all()

    def ready(self, timeout: float) -> bool:
        C = self._grpc.ChannelConnectivity
        if self.state is C.READY:
            return True
        if self.state in (C.IDLE, None):  # ask for a connection (a one-shot subscription does that)
            self._channel.subscribe(_noop, try_to_connect=True)
            self._channel.unsubscribe(_noop)
        with self._cv:
            self._cv.wait_for(lambda: self.state in (C.READY, C.TRANSIENT_FAILURE, C.SHUTDOWN), timeout)
            return self.state is C.READY

    def close(self) -> None:
        try:
            self._channel.unsubscribe(self._on_change)
        except Exception:  # noqa: BLE001
            pass


def _noop(_state: Any) -> None:
    pass


def _wait_budget(timeout: Any) -> float:
    return CONNECT_WAIT if timeout is None else max(0.0, min(CONNECT_WAIT, float(timeout)))


class _Routes:
    """What a :class:`LaneChannel` shares between its multicallables: the parsed target and the lane channels."""

    def __init__(self, target: str, make: Callable[[str], Any]) -> None:
        self.target = target
        self.parsed = parse_target(target)
        self._make = make
        self._lock = threading.Lock()
        self.channels: dict[str, tuple[Any, Any]] = {}
        self.closed = False

    def route(self, lane: str | None, rt: _runtime.Runtime) -> Any:
        if lane is None or self.parsed is None or not rt.settings.routing or not rt.router.routes_lane(lane):
            return None
        return rt.router.decide(lane, self.parsed[1], self.parsed[2])

    def lane_channel(self, route: Any, readiness: Callable[[Any], Any]) -> tuple[Any, Any]:
        target = _retarget(self.parsed[0], route)  # type: ignore[index]
        entry = self.channels.get(target)
        if entry is None:
            with self._lock:
                entry = self.channels.get(target)
                if entry is None:
                    if self.closed:
                        raise ValueError("graybaggage: the gRPC channel is closed")
                    ch = self._make(target)
                    entry = self.channels[target] = (ch, readiness(ch))
        return entry

    def take_all(self) -> list[tuple[Any, Any]]:
        with self._lock:
            self.closed = True
            out, self.channels = list(self.channels.values()), {}
        return out


def _cannot_make(route: Any) -> None:
    from graybaggage._log import log_once

    log_once(_logger, f"grpc-lane-channel:{route.authority}", "graybaggage: cannot open a gRPC channel to lane %r "
             "target %s; calls stay on %s", route.lane, route.authority, route.destination, level=logging.WARNING)


class _Multi:
    """What the sync and aio multicallables share: the user's multicallable and one per lane channel."""

    def __init__(self, parent: Any, kind: str, method: Any, args: tuple, kwargs: dict) -> None:
        self._parent = parent
        self._kind = kind
        self._spec = (method, args, kwargs)
        self._base = getattr(parent._channel, kind)(method, *args, **kwargs)
        self._lane: dict[int, Any] = {}

    def _lane_mc(self, ch: Any) -> Any:
        mc = self._lane.get(id(ch))
        if mc is None:
            method, args, kwargs = self._spec
            mc = self._lane[id(ch)] = getattr(ch, self._kind)(method, *args, **kwargs)
        return mc


class _SyncMulti(_Multi):
    """A multicallable that picks, per call, the user's channel or a lane channel."""

    def _invoke(self, attr: str, request: Any, kw: dict) -> Any:
        rt, lane = _client.current()
        if lane is not None or rt.settings.edge:
            kw["metadata"] = lane_metadata(kw.get("metadata"), lane, rt)
        routes = self._parent._routes
        route = routes.route(lane, rt)
        if route is None:
            return getattr(self._base, attr)(request, **kw)
        try:
            ch, readiness = routes.lane_channel(route, _Readiness)
        except Exception:  # noqa: BLE001 - a lane channel that cannot be made: the call stays on base
            _cannot_make(route)
            return getattr(self._base, attr)(request, **kw)
        budget = _wait_budget(kw.get("timeout"))

        def to_target() -> Any:
            if not readiness.ready(budget):
                raise _NotReady(f"lane channel to {route.authority} is not connected")
            return getattr(self._lane_mc(ch), attr)(request, **kw)

        def to_base() -> Any:
            return getattr(self._base, attr)(request, **kw)

        blocking_unary = self._kind == "unary_unary" and attr in ("__call__", "with_call")
        can_fall_back = _is_connect_failure if blocking_unary else (lambda e: isinstance(e, _NotReady))
        return send(rt.router, route, to_target, to_base, can_fall_back, _strict_error)

    # grpc's multicallable signature; grpc.intercept_channel passes these positionally
    # grpc's multicallable signature; grpc.intercept_channel passes these positionally. A call with no lane
    # (and not at an edge) goes straight to the user's channel.
    def __call__(self, request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: Any = None, compression: Any = None, **kw: Any) -> Any:
        if _no_lane():
            return self._base(request, timeout, metadata, credentials, wait_for_ready, compression, **kw)
        return self._invoke("__call__", request, _kw(timeout, metadata, credentials, wait_for_ready, compression, kw))

    def with_call(self, request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                  wait_for_ready: Any = None, compression: Any = None, **kw: Any) -> Any:
        if _no_lane():
            return self._base.with_call(request, timeout, metadata, credentials, wait_for_ready, compression, **kw)
        return self._invoke("with_call", request, _kw(timeout, metadata, credentials, wait_for_ready, compression, kw))

    def future(self, request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
               wait_for_ready: Any = None, compression: Any = None, **kw: Any) -> Any:
        if _no_lane():
            return self._base.future(request, timeout, metadata, credentials, wait_for_ready, compression, **kw)
        return self._invoke("future", request, _kw(timeout, metadata, credentials, wait_for_ready, compression, kw))


def _no_lane() -> bool:
    rt = _runtime._runtime or _runtime.get()
    settings = rt.settings
    return not settings.edge and get_lane(settings.header) is None


def _kw(timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any, compression: Any, kw: dict) -> dict:
    out = {"timeout": timeout, "metadata": metadata}
    if credentials is not None:
        out["credentials"] = credentials
    if wait_for_ready is not None:
        out["wait_for_ready"] = wait_for_ready
    if compression is not None:
        out["compression"] = compression
    out.update(kw)
    return out


def _sync_classes() -> type:
    import grpc

    class LaneChannel(grpc.Channel):  # type: ignore[misc]
        """The user's channel plus lazily created lane channels; ``close()`` closes them all."""

        _graybaggage = True

        def __init__(self, channel: Any, target: str, make: Callable[[str], Any]) -> None:
            self._channel = channel
            self._routes = _Routes(target, make)

        def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
            self._channel.subscribe(callback, try_to_connect=try_to_connect)

        def unsubscribe(self, callback: Any) -> None:
            self._channel.unsubscribe(callback)

        def unary_unary(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _SyncMulti(self, "unary_unary", method, args, kwargs)

        def unary_stream(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _SyncMulti(self, "unary_stream", method, args, kwargs)

        def stream_unary(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _SyncMulti(self, "stream_unary", method, args, kwargs)

        def stream_stream(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _SyncMulti(self, "stream_stream", method, args, kwargs)

        def close(self) -> None:
            for ch, readiness in self._routes.take_all():
                readiness.close()
                ch.close()
            self._channel.close()

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> bool:
            self.close()
            return False

        def __getattr__(self, name: str) -> Any:  # anything else a concrete channel offers
            return getattr(self._channel, name)

    return LaneChannel


_SyncChannel: Any = None
_AioChannel: Any = None


def _insecure_channel(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    channel = wrapped(*args, **kwargs)
    target = args[0] if args else kwargs.get("target")
    rest_args, rest_kwargs = tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "target"}
    return _SyncChannel(channel, target, lambda t: wrapped(t, *rest_args, **rest_kwargs))


# -- client: aio ---------------------------------------------------------------------------------
async def _aio_ready(channel: Any, budget: float) -> bool:
    import grpc

    C = grpc.ChannelConnectivity
    state = channel.get_state(try_to_connect=True)
    if state is C.READY:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while state in (C.IDLE, C.CONNECTING):
        left = deadline - loop.time()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except asyncio.TimeoutError:
            return False
        state = channel.get_state(try_to_connect=True)
    return state is C.READY


class _AioRouted:
    """A call routed to a lane channel that was not READY when the call was made: the channel is awaited
    (or the fallback applied) before the call is created, so nothing is sent before the choice is made."""

    def __init__(self, multi: "_AioMulti", route: Any, ch: Any, request: Any, kw: dict) -> None:
        self._multi, self._route, self._ch, self._request, self._kw = multi, route, ch, request, kw
        self._call: Any = None
        self._lock = asyncio.Lock()

    async def _establish(self) -> Any:
        async with self._lock:
            if self._call is None:
                self._call = await self._multi._send_routed(self._route, self._ch, self._request, self._kw, wait=True)
        return self._call

    def __await__(self) -> Any:
        return self._await().__await__()

    async def _await(self) -> Any:
        call = await self._establish()
        return await call

    def __aiter__(self) -> Any:
        return self._aiter()

    async def _aiter(self) -> Any:
        call = await self._establish()
        async for item in call:
            yield item

    async def read(self) -> Any:
        return await (await self._establish()).read()

    async def write(self, message: Any) -> None:
        await (await self._establish()).write(message)

    async def done_writing(self) -> None:
        await (await self._establish()).done_writing()

    async def initial_metadata(self) -> Any:
        return await (await self._establish()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._establish()).trailing_metadata()

    async def code(self) -> Any:
        return await (await self._establish()).code()

    async def details(self) -> Any:
        return await (await self._establish()).details()

    async def wait_for_connection(self) -> None:
        await (await self._establish()).wait_for_connection()

    def cancel(self) -> bool:
        return self._call.cancel() if self._call is not None else False

    def cancelled(self) -> bool:
        return self._call.cancelled() if self._call is not None else False

    def done(self) -> bool:
        return self._call.done() if self._call is not None else False


class _AioUnaryFallback:
    """An aio unary-unary call to a READY lane channel: awaiting it falls back to base when it fails with
    "failed to connect to all addresses" (the channel dropped between the check and the call; nothing sent)."""

    def __init__(self, multi: "_AioMulti", route: Any, ch: Any, request: Any, kw: dict) -> None:
        self._multi, self._route, self._request, self._kw = multi, route, request, kw
        self._call = multi._lane_mc(ch)(request, **kw)

    def __await__(self) -> Any:
        return self._await().__await__()

    async def _await(self) -> Any:
        rt = _runtime.get()
        call = self._call

        async def to_target() -> Any:
            return await call

        async def to_base() -> Any:
            self._call = self._multi._base(self._request, **self._kw)
            return await self._call

        return await send_async(rt.router, self._route, to_target, to_base, _is_connect_failure, _strict_error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _AioMulti(_Multi):
    async def _send_routed(self, route: Any, ch: Any, request: Any, kw: dict, wait: bool) -> Any:
        rt = _runtime.get()
        budget = _wait_budget(kw.get("timeout"))

        async def to_target() -> Any:
            if not await _aio_ready(ch, budget):
                raise _NotReady(f"lane channel to {route.authority} is not connected")
            return self._lane_mc(ch)(request, **kw)

        async def to_base() -> Any:
            return self._base(request, **kw)

        return await send_async(rt.router, route, to_target, to_base, lambda e: isinstance(e, _NotReady),
                                _strict_error)

    def __call__(self, request: Any, *, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: Any = None, compression: Any = None, **kw: Any) -> Any:
        import grpc

        kw = _kw(timeout, metadata, credentials, wait_for_ready, compression, kw)
        rt, lane = _client.current()
        if lane is not None or rt.settings.edge:
            kw["metadata"] = lane_metadata(metadata, lane, rt)
        routes = self._parent._routes
        route = routes.route(lane, rt)
        if route is None:
            return self._base(request, **kw)
        try:
            ch, _ = routes.lane_channel(route, lambda c: None)
        except Exception:  # noqa: BLE001 - a lane channel that cannot be made: the call stays on base
            _cannot_make(route)
            return self._base(request, **kw)
        if ch.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY and not rt.router.is_down(route):
            if self._kind == "unary_unary":
                return _AioUnaryFallback(self, route, ch, request, kw)
            rt.router.record(route, ROUTED)
            return self._lane_mc(ch)(request, **kw)
        return _AioRouted(self, route, ch, request, kw)


def _aio_classes() -> type:
    import grpc.aio

    class LaneAioChannel(grpc.aio.Channel):  # type: ignore[misc]
        _graybaggage = True

        def __init__(self, channel: Any, target: str, make: Callable[[str], Any]) -> None:
            self._channel = channel
            self._routes = _Routes(target, make)

        async def __aenter__(self) -> Any:
            return self

        async def __aexit__(self, *exc: Any) -> None:
            await self.close()

        async def close(self, grace: Any = None) -> None:
            for ch, _ in self._routes.take_all():
                await ch.close(grace)
            await self._channel.close(grace)

        def get_state(self, try_to_connect: bool = False) -> Any:
            return self._channel.get_state(try_to_connect)

        async def wait_for_state_change(self, last_observed_state: Any) -> None:
            await self._channel.wait_for_state_change(last_observed_state)

        async def channel_ready(self) -> None:
            await self._channel.channel_ready()

        def unary_unary(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _AioMulti(self, "unary_unary", method, args, kwargs)

        def unary_stream(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _AioMulti(self, "unary_stream", method, args, kwargs)

        def stream_unary(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _AioMulti(self, "stream_unary", method, args, kwargs)

        def stream_stream(self, method: Any, *args: Any, **kwargs: Any) -> Any:
            return _AioMulti(self, "stream_stream", method, args, kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._channel, name)

    return LaneAioChannel


def _aio_channel(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    channel = wrapped(*args, **kwargs)
    target = args[0] if args else kwargs.get("target")
    rest_args, rest_kwargs = tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "target"}
    return _AioChannel(channel, target, lambda t: wrapped(t, *rest_args, **rest_kwargs))


def patch(mod: Any) -> None:
    global _SyncChannel, _AioChannel
    _SyncChannel = _sync_classes()
    wrap(mod, "server", _server)
    wrap(mod, "insecure_channel", _insecure_channel)
    wrap(mod, "secure_channel", _insecure_channel)
    aio = getattr(mod, "aio", None)
    if aio is not None:
        _AioChannel = _aio_classes()
        wrap(aio, "server", _aio_server)
        wrap(aio, "insecure_channel", _aio_channel)
        wrap(aio, "secure_channel", _aio_channel)


MODULES = {"grpc": patch}

__all__ = ["LaneUnavailableError", "lane_metadata", "parse_target"]
