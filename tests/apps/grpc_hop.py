"""A gRPC test service that never imports graybaggage (generic handlers, JSON bytes, no protoc step).

Env: HOP_NAME, HOP_PORT, GHOP_MODE (sync | aio), GHOP_NEXT_GRPC (target of the next gRPC hop) or HOP_NEXT (URL of
the next HTTP hop, called with requests), GRAYBAGGAGE_LANE (instance lane, reported only).
Methods (service ``hop.Hop``): Unary, ServerStream (3 replies), Bidi (one reply per request), Stats.
Each reply is JSON: {"name", "lane", "header", "baggage", "ctx_lane" (the lane in OpenTelemetry baggage while
the handler ran), "served", "next", "error"}. A gRPC error from the next hop is reported in "error".
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent import futures

import grpc
import grpc.aio
from opentelemetry import baggage

NAME = os.environ.get("HOP_NAME", "hop")
PORT = int(os.environ.get("HOP_PORT", "0"))
MODE = os.environ.get("GHOP_MODE", "sync")
NEXT_GRPC = os.environ.get("GHOP_NEXT_GRPC", "")
NEXT_HTTP = os.environ.get("HOP_NEXT", "")
INSTANCE = os.environ.get("GRAYBAGGAGE_LANE", "base")
HEADER = os.environ.get("GRAYBAGGAGE_HEADER", "x-mse-tag")
SERVICE = "hop.Hop"
_stats: dict[str, int] = {}
_lock = threading.Lock()
_session = None


def _ident(b: bytes) -> bytes:
    return b


def _md(context) -> tuple[str | None, str | None]:
    md = context.invocation_metadata() or ()
    header = next((v for k, v in md if k == HEADER), None)
    bag = next((v for k, v in md if k == "baggage"), None)
    return header, bag


def _reply(header, bag, nxt=None, error=None, step=None) -> bytes:
    with _lock:
        _stats[header or ""] = _stats.get(header or "", 0) + 1
    return json.dumps({"name": NAME, "lane": INSTANCE, "header": header, "baggage": bag, "step": step,
                       "ctx_lane": baggage.get_baggage(HEADER), "served": f"{NAME}[{INSTANCE}]",
                       "next": nxt, "error": error}).encode()


def _err(e: grpc.RpcError) -> dict:
    return {"code": e.code().name, "details": e.details(), "type": type(e).__name__}


def _http_next() -> dict | None:
    global _session
    if not NEXT_HTTP:
        return None
    import requests

    if _session is None:
        _session = requests.Session()
    r = _session.get(NEXT_HTTP + "/grpc", timeout=10)
    r.raise_for_status()
    return r.json()


# -- sync ----------------------------------------------------------------------------------------
_channel = None


def _sync_next():
    global _channel
    if _channel is None:
        _channel = grpc.insecure_channel(NEXT_GRPC)
    return _channel


def s_unary(req: bytes, context) -> bytes:
    header, bag = _md(context)
    if NEXT_GRPC:
        try:
            nxt = json.loads(_sync_next().unary_unary(f"/{SERVICE}/Unary", _ident, _ident)(b"{}", timeout=10))
        except grpc.RpcError as e:
            return _reply(header, bag, error=_err(e))
        return _reply(header, bag, nxt)
    return _reply(header, bag, _http_next())


def s_server_stream(req: bytes, context):
    header, bag = _md(context)
    if NEXT_GRPC:
        try:
            for i, item in enumerate(_sync_next().unary_stream(f"/{SERVICE}/ServerStream", _ident, _ident)(b"{}", timeout=10)):
                yield _reply(header, bag, json.loads(item), step=i)
        except grpc.RpcError as e:
            yield _reply(header, bag, error=_err(e))
        return
    for i in range(3):
        yield _reply(header, bag, _http_next(), step=i)


def s_bidi(requests_it, context):
    header, bag = _md(context)
    if NEXT_GRPC:
        try:
            for i, item in enumerate(_sync_next().stream_stream(f"/{SERVICE}/Bidi", _ident, _ident)(requests_it, timeout=10)):
                yield _reply(header, bag, json.loads(item), step=i)
        except grpc.RpcError as e:
            yield _reply(header, bag, error=_err(e))
        return
    for i, _req in enumerate(requests_it):
        yield _reply(header, bag, _http_next(), step=i)


def s_stats(req: bytes, context) -> bytes:
    with _lock:
        return json.dumps({"name": NAME, "lane": INSTANCE, "stats": dict(_stats)}).encode()


# -- aio -----------------------------------------------------------------------------------------
_achannel = None


def _aio_next():
    global _achannel
    if _achannel is None:
        _achannel = grpc.aio.insecure_channel(NEXT_GRPC)
    return _achannel


async def a_unary(req: bytes, context) -> bytes:
    header, bag = _md(context)
    if NEXT_GRPC:
        try:
            nxt = json.loads(await _aio_next().unary_unary(f"/{SERVICE}/Unary", _ident, _ident)(b"{}", timeout=10))
        except grpc.RpcError as e:
            return _reply(header, bag, error=_err(e))
        return _reply(header, bag, nxt)
    return _reply(header, bag, await asyncio.to_thread(_http_next))


async def a_server_stream(req: bytes, context):
    header, bag = _md(context)
    if NEXT_GRPC:
        try:
            i = 0
            async for item in _aio_next().unary_stream(f"/{SERVICE}/ServerStream", _ident, _ident)(b"{}", timeout=10):
                yield _reply(header, bag, json.loads(item), step=i)
                i += 1
        except grpc.RpcError as e:
            yield _reply(header, bag, error=_err(e))
        return
    for i in range(3):
        yield _reply(header, bag, await asyncio.to_thread(_http_next), step=i)


async def a_bidi(requests_it, context):
    header, bag = _md(context)
    if NEXT_GRPC:
        try:
            i = 0
            async for item in _aio_next().stream_stream(f"/{SERVICE}/Bidi", _ident, _ident)(requests_it, timeout=10):
                yield _reply(header, bag, json.loads(item), step=i)
                i += 1
        except grpc.RpcError as e:
            yield _reply(header, bag, error=_err(e))
        return
    i = 0
    async for _req in requests_it:
        yield _reply(header, bag, await asyncio.to_thread(_http_next), step=i)
        i += 1


async def a_stats(req: bytes, context) -> bytes:
    return s_stats(req, context)


def handler(unary, server_stream, bidi, stats):
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _ident, _ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, _ident, _ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, _ident, _ident),
        "Stats": grpc.unary_unary_rpc_method_handler(stats, _ident, _ident),
    })


async def serve_aio() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(a_unary, a_server_stream, a_bidi, a_stats),))
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    if MODE == "aio":
        asyncio.run(serve_aio())
        return
    server = grpc.server(futures.ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers((handler(s_unary, s_server_stream, s_bidi, s_stats),))
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
