"""500 concurrent requests from 16 client threads, mixing lanes, through three real hops: 0 mismatches."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import threading

import pytest

from tests import support

LANES = [None, "gray", "blue"]


@pytest.mark.parametrize("mode", ["lanes", "tracing"])
def test_500_mixed_requests_no_lane_mixups(mode):
    env = {"GRAYBAGGAGE_MODE": mode, "OTEL_TRACES_EXPORTER": "none"}
    c = support.start("c", {"HOP_KIND": "wsgi", **env})
    b = support.start("b", {"HOP_KIND": "starlette", "HOP_CLIENT": "httpx-async", "HOP_NEXT": c.url, **env})
    a = support.start("a", {"HOP_KIND": "flask", "HOP_CLIENT": "requests", "HOP_NEXT": b.url, **env})
    local = threading.local()

    def one(i: int) -> tuple[str | None, str | None]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        lane = LANES[i % 3]
        conn.request("GET", f"/r{i}", headers={"x-mse-tag": lane} if lane else {})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        last = support.chain_of(body)[-1]
        return lane, last["header"]

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(500)))
    finally:
        for s in (a, b, c):
            s.kill()
    mismatches = [(sent, got) for sent, got in results if sent != got]
    print(f"\n{mode}: {len(results)} requests, {len(mismatches)} mismatches")
    assert len(results) == 500
    assert mismatches == []
