"""A lane target that dies mid-response: the safe-method rule covers the whole response.

A fake target on 127.0.0.1 sends ``HTTP/1.1 200 OK``, ``Content-Length: 80``, a blank line, and closes
(a gray instance SIGKILLed after its headers). A GET/HEAD/OPTIONS routed there falls back to base with no
failure, for every client whose hook sees the body; a POST is never re-sent.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

import graybaggage
from tests.graybaggage.test_internals import _call, _table


@pytest.fixture
def cut_short():
    """Answers every request with headers promising 80 bytes, then closes. Records the request lines."""
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
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                got.append(data.split(b"\r\n", 1)[0])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n")
            except OSError:
                pass
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield sock.getsockname()[1], got
    stop.set()
    t.join(2)
    sock.close()


COVERED = ["requests", "urllib3", "httpx", "aiohttp"]


@pytest.mark.parametrize("client", COVERED)
def test_get_cut_short_by_the_target_falls_back_to_base(client, base_server, cut_short):
    port, got = cut_short
    graybaggage.instrument(table_json=_table(base_server.server_port, port), fallback_down_seconds=0.0)
    try:
        url = f"http://127.0.0.1:{base_server.server_port}/g"
        with graybaggage.lane("gray"):
            answers = [_call(client, url) for _ in range(3)]
    finally:
        graybaggage.uninstrument()
    assert answers == [{"lane": "gray"}] * 3  # 0 failed: served by base, still in the lane
    assert got and all(line.startswith(b"GET /g ") for line in got)  # the target did get them first
    assert base_server.seen == [("GET", "gray")] * 3


def _post(client: str, url: str) -> None:
    if client == "requests":
        import requests

        requests.post(url, data=b"pay 10", timeout=10).content
    elif client == "urllib3":
        import urllib3

        urllib3.PoolManager(retries=False).request("POST", url, body=b"pay 10", timeout=10.0)
    elif client == "httpx":
        import httpx

        httpx.post(url, content=b"pay 10", timeout=10).read()
    elif client == "aiohttp":
        import aiohttp

        async def go() -> None:
            async with aiohttp.ClientSession() as s:
                async with s.post(url, data=b"pay 10") as r:
                    await r.read()

        asyncio.run(go())


@pytest.mark.parametrize("client", COVERED)
def test_post_cut_short_is_never_resent(client, base_server, cut_short):
    port, got = cut_short
    graybaggage.instrument(table_json=_table(base_server.server_port, port), fallback_down_seconds=0.0)
    try:
        with graybaggage.lane("gray"):
            try:  # the client's own error for a body cut short (or, requests on urllib3 1.26, a short body)
                _post(client, f"http://127.0.0.1:{base_server.server_port}/pay")
            except Exception:  # noqa: BLE001
                pass
    finally:
        graybaggage.uninstrument()
    assert got == [b"POST /pay HTTP/1.1"]
    assert base_server.seen == []  # never re-sent to base
