"""Fixtures shared by the library's traffic tests."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.server.seen.append((self.command, self.headers.get("x-mse-tag")))  # type: ignore[attr-defined]
        body = json.dumps({"lane": self.headers.get("x-mse-tag")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def refused_port():
    """A 127.0.0.1 port nothing listens on for the whole test (held bound: no server can be given it)."""
    from tests import support

    with support.refused_port() as port:
        yield port


@pytest.fixture
def base_server():
    """An HTTP server on 127.0.0.1 that records (method, lane header) of every request it answers."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


