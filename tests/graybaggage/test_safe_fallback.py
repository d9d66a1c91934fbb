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

        _ = requests.post(url, data=b"pay 10", timeout=10).content
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


@pytest.fixture
def closes_reused():
    """Answers the first request on each connection (keep-alive), then closes the connection on the next one
    without answering: a kept-alive connection the target closed while the request was on its way."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    log: list[tuple[int, int, bytes]] = []  # (connection number, request number on it, request line)
    stop = threading.Event()

    def serve(conn: socket.socket, n: int) -> None:
        conn.settimeout(10)
        buf, k = b"", 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                k += 1
                log.append((n, k, head.split(b"\r\n", 1)[0]))
                if k > 1:
                    return
                lane = next((ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n")
                             if ln.lower().startswith(b"x-mse-tag:")), None)
                body = json.dumps({"lane": lane, "by": "target"}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        except OSError:
            pass
        finally:
            conn.close()

    def loop() -> None:
        sock.settimeout(0.2)
        n = 0
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            n += 1
            threading.Thread(target=serve, args=(conn, n), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield sock.getsockname()[1], log
    stop.set()
    t.join(2)
    sock.close()


def _two_on_one_connection(client: str, url: str) -> list[dict]:
    """Two sequential GETs through one client, so the second one reuses the first one's connection."""
    if client == "requests":
        import requests

        with requests.Session() as s:
            return [s.get(url, timeout=10).json() for _ in range(2)]
    if client == "urllib3":
        import urllib3

        pm = urllib3.PoolManager(retries=False)  # no retry of urllib3's own: graybaggage's is what is tested
        return [json.loads(pm.request("GET", url, timeout=10.0).data) for _ in range(2)]
    if client == "httpx":
        import httpx

        with httpx.Client(timeout=10) as c:
            return [c.get(url).json() for _ in range(2)]
    if client == "aiohttp":
        import aiohttp

        async def go() -> list[dict]:
            out = []
            async with aiohttp.ClientSession() as s:
                for _ in range(2):
                    async with s.get(url) as r:
                        out.append(json.loads(await r.read()))
            return out

        return asyncio.run(go())
    raise ValueError(client)


@pytest.mark.parametrize("client", COVERED)
def test_safe_request_on_a_reused_connection_closed_by_the_target_is_retried_there(client, base_server, closes_reused):
    port, log = closes_reused
    graybaggage.instrument(table_json=_table(base_server.server_port, port), fallback_down_seconds=0.0)
    try:
        with graybaggage.lane("gray"):
            answers = _two_on_one_connection(client, f"http://127.0.0.1:{base_server.server_port}/k")
    finally:
        graybaggage.uninstrument()
    assert answers == [{"lane": "gray", "by": "target"}] * 2  # both served by the lane target
    assert base_server.seen == []  # no fallback to base
    # the second GET went out on the reused connection (dropped there) and again on a fresh one
    assert [(n, k) for n, k, _ in log] == [(1, 1), (1, 2), (2, 1)], log
