"""A bounded load generator for traffic tests through the test data plane's gateway.

    load = Load(gateway_url, host="springa.com", path="/a?format=json", kinds=SEED_KINDS, rate=30)
    load.start(); ...; load.mark("approve a"); ...; results = load.stop()

Workers send a steady, paced mix of request kinds (each a set of headers) over keep-alive connections
and record, per request: kind, send/receive times, status and the served chain (the example app's JSON
``hops``) or the error. Bounded in count (``max_requests``) and time (``max_seconds``); loopback only.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import threading
import time
import urllib.parse
from typing import Any

SEED_KINDS: dict[str, dict[str, str]] = {
    "xiaoming": {"User-Agent": "xiaoming"},
    "other": {"User-Agent": "curl/8.5"},
    "forged": {"User-Agent": "curl/8.5", "x-mse-tag": "gray"},
    "forged-baggage": {"User-Agent": "curl/8.5", "baggage": "x-mse-tag=gray"},
}


@dataclasses.dataclass
class Result:
    kind: str
    t_send: float
    t_recv: float
    status: int | None
    hops: list[dict] | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.hops is not None

    @property
    def chain(self) -> str:
        if not self.hops:
            return f"ERROR {self.status} {self.error}".strip()
        return " -> ".join(f"{h['service']}[{h['lane']}]" for h in self.hops)


class Load:
    def __init__(self, url: str, *, host: str, path: str, kinds: dict[str, dict[str, str]],
                 rate: float = 30.0, workers: int = 3, max_requests: int = 20000, max_seconds: float = 900,
                 timeout: float = 15):
        u = urllib.parse.urlsplit(url)
        self.addr = (u.hostname, u.port or 80)
        self.host, self.path, self.kinds = host, path, kinds
        self.interval = workers / rate
        self.workers, self.max_requests, self.max_seconds, self.timeout = workers, max_requests, max_seconds, timeout
        self.results: list[Result] = []
        self.marks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._count = itertools.count()
        self._kind_cycle = itertools.cycle(list(kinds))
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self) -> "Load":
        self.t0 = time.monotonic()
        self.mark("load started")
        for i in range(self.workers):
            t = threading.Thread(target=self._work, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def mark(self, label: str) -> float:
        t = time.monotonic()
        with self._lock:
            self.marks.append((t, label))
        return t

    def stop(self) -> list[Result]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        self.mark("load stopped")
        return self.results

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _next_kind(self) -> str | None:
        with self._lock:
            if next(self._count) >= self.max_requests or time.monotonic() - self.t0 > self.max_seconds:
                return None
            return next(self._kind_cycle)

    def _work(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic() + index * self.interval / self.workers
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at = max(next_at + self.interval, time.monotonic())
            kind = self._next_kind()
            if kind is None:
                break
            if conn is None:
                conn = http.client.HTTPConnection(*self.addr, timeout=self.timeout)
            result, keep = self._one(conn, kind)
            with self._lock:
                self.results.append(result)
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _one(self, conn: http.client.HTTPConnection, kind: str) -> tuple[Result, bool]:
        headers = {"Host": self.host, "Accept": "application/json", **self.kinds[kind]}
        t_send = time.monotonic()
        try:
            conn.request("GET", self.path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            status, keep = r.status, not r.will_close
        except (OSError, http.client.HTTPException) as e:
            return Result(kind, t_send, time.monotonic(), None, None, f"{type(e).__name__}: {e}"), False
        hops: list[dict] | None = None
        error = ""
        if status == 200:
            try:
                hops = json.loads(body)["hops"]
            except (ValueError, KeyError, TypeError) as e:
                error = f"bad body: {e}: {body[:200]!r}"
        else:
            error = body[:300].decode(errors="replace")
        return Result(kind, t_send, time.monotonic(), status, hops, error), keep


def summary(results: list[Result]) -> dict[str, Any]:
    """{kind: {chain: count}} plus totals."""
    out: dict[str, Any] = {"total": len(results), "failed": sum(1 for r in results if not r.ok), "by_kind": {}}
    for r in results:
        by = out["by_kind"].setdefault(r.kind, {})
        by[r.chain] = by.get(r.chain, 0) + 1
    return out
