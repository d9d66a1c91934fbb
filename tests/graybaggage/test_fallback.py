"""Fallback rules, in-process with real sockets on 127.0.0.1: what is re-sent to base and what never is,
strict errors per client, and the down-marker."""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import pytest

import graybaggage
from graybaggage.routing import Router
from graybaggage.table import load_table_text


@pytest.fixture
def resetting_server():
    """Accepts, reads the request, then resets the connection without answering (an instance dying mid-request)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    got: list[bytes] = []
    stop = threading.Event()

    def loop() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                got.append(conn.recv(65536))
            except OSError:
                pass
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield sock.getsockname()[1], got
    stop.set()
    t.join(2)
    sock.close()


def _table(base_port: int, target_port: int, fallback: str = "base") -> str:
    return json.dumps({"version": 1, "lanes": {"gray": {"fallback": fallback, "routes": {
        f"127.0.0.1:{base_port}": f"127.0.0.1:{target_port}"}}}})


@pytest.fixture
def instrumented():
    def go(table: str) -> None:
        graybaggage.instrument(table_json=table, fallback_down_seconds=0.0)

    yield go
    graybaggage.uninstrument()


def test_unsafe_method_is_never_resent_after_the_target_got_it(base_server, resetting_server, instrumented):
    import requests

    port, got = resetting_server
    instrumented(_table(base_server.server_port, port))
    url = f"http://127.0.0.1:{base_server.server_port}/order"
    with graybaggage.lane("gray"):
        with pytest.raises(requests.ConnectionError):
            requests.post(url, data=b"pay 10", timeout=5)
        assert len(got) == 1 and got[0].startswith(b"POST /order")  # the target did receive it
        assert base_server.seen == []  # and it was not sent again to base
        r = requests.get(url, timeout=5)  # a safe method is re-sent to base
        assert r.json() == {"lane": "gray"}
    assert base_server.seen == [("GET", "gray")]


def test_refused_target_falls_back_with_tag_kept(base_server, instrumented, refused_port):
    import requests

    dead = refused_port
    instrumented(_table(base_server.server_port, dead))
    with graybaggage.lane("gray"):
        r = requests.post(f"http://127.0.0.1:{base_server.server_port}/x", data=b"1", timeout=5)
    assert r.json() == {"lane": "gray"}  # POST falls back too: nothing was sent to the refused target
    assert base_server.seen == [("POST", "gray")]


def _strict_calls(url: str):
    import aiohttp
    import httpx
    import requests
    import urllib.request
    import urllib3

    def aio() -> None:
        async def go() -> None:
            async with aiohttp.ClientSession() as s:
                await s.get(url)
        asyncio.run(go())

    def httpx_async() -> None:
        async def go() -> None:
            async with httpx.AsyncClient() as c:
                await c.get(url)
        asyncio.run(go())

    return {
        "requests": (lambda: requests.get(url, timeout=5), requests.ConnectionError),
        "urllib3": (lambda: urllib3.PoolManager(retries=False).request("GET", url), urllib3.exceptions.HTTPError),
        "urllib": (lambda: urllib.request.urlopen(url, timeout=5), urllib.error.URLError),
        "httpx": (lambda: httpx.get(url), httpx.ConnectError),
        "httpx-async": (httpx_async, httpx.ConnectError),
        "aiohttp": (aio, aiohttp.ClientConnectionError),
    }


@pytest.mark.parametrize("client", ["requests", "urllib3", "urllib", "httpx", "httpx-async", "aiohttp"])
def test_strict_error_names_lane_and_target(client, base_server, instrumented, refused_port):
    dead = refused_port
    instrumented(_table(base_server.server_port, dead, "strict"))
    call, native = _strict_calls(f"http://127.0.0.1:{base_server.server_port}/s")[client]
    with graybaggage.lane("gray"):
        with pytest.raises(graybaggage.LaneUnavailableError) as err:
            call()
    assert isinstance(err.value, native)  # callers' existing error handling still applies
    assert f"lane 'gray' target 127.0.0.1:{dead}" in str(err.value) and "strict" in str(err.value)
    assert base_server.seen == []
    call()  # base traffic in a strict lane's table is unaffected
    assert base_server.seen == [("GET", None)]


def test_down_marker_with_a_clock():
    now = [100.0]
    table = load_table_text(_table(80, 81))
    router = Router(lambda: table, "default", failures_to_down=2, down_seconds=10, clock=lambda: now[0])
    route = router.decide("gray", "127.0.0.1", 80)
    assert route is not None and route.authority == "127.0.0.1:81"
    router.failed(route)
    assert not router.is_down(route)
    router.failed(route)
    assert router.is_down(route)
    now[0] += 9.9
    assert router.is_down(route)
    now[0] += 0.2
    assert not router.is_down(route)  # retried after the down time
    router.failed(route)
    assert not router.is_down(route)  # the count restarted
