"""Lane-aware routing across real processes: the seed topology, live table edits, faults, hostile input,
and every client library (issue 3 "Must show")."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest

from tests import support

GRAY = {"x-mse-tag": "gray"}


class Seed:
    """entry -> a -> b -> c with gray a and c, all reading one lane-table file."""

    def __init__(self, tmp: Path, client: str = "requests", extra: dict | None = None, fallback: str = "base"):
        self.table_file = tmp / "lanes.json"
        self.ports = {n: support.free_port() for n in ("a", "a-gray", "b", "c", "c-gray", "entry")}
        self.fallback = fallback
        self.write({"a": "a-gray", "c": "c-gray"})
        env = {"GRAYBAGGAGE_LANE_TABLE_FILE": str(self.table_file), **(extra or {})}
        kind = "starlette" if client in ("httpx-async", "aiohttp") else "flask"
        url = lambda n: f"http://127.0.0.1:{self.ports[n]}"  # noqa: E731
        specs = [
            ("c", {"HOP_KIND": "wsgi"}), ("c-gray", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray"}),
            ("b", {"HOP_KIND": kind, "HOP_CLIENT": client, "HOP_NEXT": url("c")}),
            ("a", {"HOP_KIND": kind, "HOP_CLIENT": client, "HOP_NEXT": url("b")}),
            ("a-gray", {"HOP_KIND": kind, "HOP_CLIENT": client, "HOP_NEXT": url("b"), "GRAYBAGGAGE_LANE": "gray"}),
            ("entry", {"HOP_KIND": kind, "HOP_CLIENT": client, "HOP_NEXT": url("a")}),
        ]
        self.svc: dict[str, support.Service] = {}
        try:
            for name, e in specs:
                self.svc[name] = support.start(name.split("-")[0], {**env, **e}, port=self.ports[name])
        except Exception:
            self.stop()
            raise
        self.entry = self.svc["entry"]

    def write(self, members: dict[str, str]) -> None:
        routes = {f"127.0.0.1:{self.ports[d]}": f"127.0.0.1:{self.ports[t]}" for d, t in members.items()}
        tmp = self.table_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "lanes": {"gray": {"fallback": self.fallback, "routes": routes}}}))
        tmp.replace(self.table_file)  # atomic, like a ConfigMap volume update

    def stop(self) -> None:
        for s in self.svc.values():
            s.kill()


@pytest.fixture
def seed(tmp_path):
    s = Seed(tmp_path)
    yield s
    s.stop()


def served_after_entry(resp: dict) -> str:
    return " -> ".join(h["served"] for h in support.chain_of(resp)[1:])


def test_seed_topology_routes_by_lane(seed):
    gray = support.get(seed.entry.url + "/a", GRAY)
    assert served_after_entry(gray) == "a[gray] -> b[base] -> c[gray]"
    assert all(h["header"] == "gray" for h in support.chain_of(gray)[1:])  # b kept the tag for c
    assert served_after_entry(support.get(seed.entry.url + "/a")) == "a[base] -> b[base] -> c[base]"
    assert served_after_entry(support.get(seed.entry.url + "/a", {"x-mse-tag": "blue"})) == \
        "a[base] -> b[base] -> c[base]"  # an unknown lane stays on base


def test_1000_mixed_requests_concurrency_32_no_misroutes(seed):
    expected = {True: "a[gray] -> b[base] -> c[gray]", False: "a[base] -> b[base] -> c[base]"}
    local = threading.local()

    def one(i: int) -> tuple[bool, str]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", seed.entry.port, timeout=30)
        gray = i % 2 == 0
        conn.request("GET", f"/m{i}", headers=GRAY if gray else {})
        return gray, served_after_entry(json.loads(conn.getresponse().read()))

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(1000)))
    misroutes = [(g, s) for g, s in results if s != expected[g]]
    print(f"\n1000 requests at concurrency 32: {len(misroutes)} misroutes")
    assert misroutes == []
    # what each server recorded: gray instances served only gray, base instances never served gray
    for name, svc in seed.svc.items():
        if name == "entry":
            continue
        stats = svc.stats()
        if name.endswith("-gray"):
            assert set(stats) == {"gray"}, (name, stats)
        elif name == "b":
            assert stats.get("gray", 0) == 500 and stats.get("", 0) == 500, stats
        else:
            assert set(stats) == {""}, (name, stats)


def test_live_table_edit_takes_effect_within_1s(seed):
    assert served_after_entry(support.get(seed.entry.url + "/x", GRAY)).endswith("c[gray]")
    seed.write({"a": "a-gray"})  # c's gray instance leaves the lane
    t0 = time.monotonic()
    while True:
        resp = support.get(seed.entry.url + "/x", GRAY)
        if served_after_entry(resp).endswith("c[base]"):
            break
        assert time.monotonic() - t0 < 1.0, "the edit did not take effect within 1 s"
        time.sleep(0.02)
    took = time.monotonic() - t0
    print(f"\ntable edit took effect after {took * 1000:.0f} ms")
    assert served_after_entry(resp) == "a[gray] -> b[base] -> c[base]"
    assert support.chain_of(resp)[-1]["header"] == "gray"  # the tag is still set at c[base]
    seed.table_file.write_text("{ not json")  # a broken file keeps the last good table
    time.sleep(0.6)
    assert served_after_entry(support.get(seed.entry.url + "/x", GRAY)) == "a[gray] -> b[base] -> c[base]"
    assert seed.svc["b"].log.count("keeping the last good value") == 1


def _run_and_kill(seed: Seed, sig: int, kill_after: int = 150, after_death: int = 100,
                  threads: int = 8) -> tuple[list[tuple[int, float, str, bool]], list[str]]:
    """GETs in lane gray from ``threads`` keep-alive clients; once request ``kill_after`` is answered, c[gray]
    gets ``sig`` (from another thread, so requests stay in flight meanwhile). The run ends once
    ``after_death`` requests were started after c[gray]'s process had exited: counts and events, no clock, so
    a loaded machine only makes it slower. Each result: (status, seconds, hops served, started after death)."""
    results: list[tuple[int, float, str, bool]] = []
    lock = threading.Lock()
    dead = threading.Event()
    counters = {"started": 0, "after_death": 0}
    local = threading.local()

    def kill() -> None:
        seed.svc["c-gray"].kill(sig)  # returns once the process has exited
        dead.set()

    def worker() -> None:
        while True:
            with lock:
                i = counters["started"]
                post = dead.is_set()
                if post:
                    if counters["after_death"] >= after_death:
                        return
                    counters["after_death"] += 1
                counters["started"] += 1
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", seed.entry.port, timeout=60)
            t = time.perf_counter()
            try:
                conn.request("GET", f"/k{i}", headers=GRAY)
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
            except OSError:
                local.conn = None
                status, body = 0, b"{}"
            dt = time.perf_counter() - t
            with lock:
                results.append((status, dt, served_after_entry(json.loads(body)) if status == 200 else "", post))
            if i == kill_after:
                threading.Thread(target=kill, daemon=True).start()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    errors = [ln for ln in seed.svc["b"].log.splitlines() if ln.startswith("requests.exceptions")]
    return results, errors


def _median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f} ms" if xs else "n/a"


def test_gray_c_terminating_mid_run_loses_no_request(seed):
    """SIGTERM, as Kubernetes stops a pod: in-flight requests finish, new ones fall back to base."""
    results, errors = _run_and_kill(seed, signal.SIGTERM)
    failed = [r for r in results if r[0] != 200]
    before = [r[1] for r in results if r[2].endswith("c[gray]")]
    after = [r[1] for r in results if r[2].endswith("c[base]")]
    print(f"\nterminated c[gray] mid-run: {len(results)} requests, {len(failed)} failed; "
          f"median {_median_ms(before)} via c[gray], {_median_ms(after)} after fallback ({len(after)} requests)")
    assert failed == [], errors
    assert before  # the lane target served requests before it stopped
    assert all(r[2] in ("a[gray] -> b[base] -> c[gray]", "a[gray] -> b[base] -> c[base]") for r in results)
    post = [r[2] for r in results if r[3]]
    assert len(post) == 100 and set(post) == {"a[gray] -> b[base] -> c[base]"}  # after it exited: all on base
    assert "marked down" in seed.svc["b"].log


def test_gray_c_crashing_mid_run_loses_no_get(seed):
    """SIGKILL: GETs in flight at c[gray] get a reset before any response, or their body is cut short; GET is
    safe (RFC 9110 9.2.2), so they are re-sent to base too. (Unsafe methods are never re-sent: see
    test_fallback.py and test_safe_fallback.py.)"""
    results, errors = _run_and_kill(seed, signal.SIGKILL)
    failed = [r for r in results if r[0] != 200]
    print(f"\nc[gray] SIGKILLed mid-run: {len(failed)} of {len(results)} failed")
    assert failed == [], errors
    assert any(r[2].endswith("c[gray]") for r in results)
    post = [r[2] for r in results if r[3]]
    assert len(post) == 100 and set(post) == {"a[gray] -> b[base] -> c[base]"}


def test_strict_fallback_fails_cleanly_naming_target(tmp_path):
    s = Seed(tmp_path, fallback="strict")
    try:
        s.svc["c-gray"].kill()
        with pytest.raises(Exception) as err:
            support.get(s.entry.url + "/s", GRAY)
        assert "500" in str(err.value)
        log = s.svc["b"].log
        target = f"127.0.0.1:{s.ports['c-gray']}"
        assert f"lane 'gray' target {target}" in log and "strict" in log, log[-2000:]
        # base traffic is unaffected by a strict lane
        assert served_after_entry(support.get(s.entry.url + "/s")) == "a[base] -> b[base] -> c[base]"
    finally:
        s.stop()


def test_hostile_lane_values_never_reach_a_trap(seed):
    trap = support.start("trap", {"HOP_KIND": "wsgi"})
    try:
        hostile = [f"127.0.0.1:{trap.port}", "trap", f"c-gray.default.svc:{trap.port}", "../trap", "gray/../trap",
                   f"gray@127.0.0.1:{trap.port}", "http://127.0.0.1", "gray%00", "GRAY"]
        for value in hostile:
            for headers in ({"x-mse-tag": value}, {"baggage": f"x-mse-tag={value}"}):
                try:
                    resp = support.get(seed.entry.url + "/h", headers)
                except UnicodeEncodeError:
                    continue
                assert served_after_entry(resp) == "a[base] -> b[base] -> c[base]", (value, resp)
        assert trap.stats() == {}
    finally:
        trap.kill()


@pytest.mark.parametrize("client", ["urllib3", "urllib", "httpx", "httpx-async", "aiohttp"])
def test_every_client_routes_the_seed(tmp_path, client):
    s = Seed(tmp_path, client=client)
    try:
        assert served_after_entry(support.get(s.entry.url + "/a", GRAY)) == "a[gray] -> b[base] -> c[gray]"
        assert served_after_entry(support.get(s.entry.url + "/a")) == "a[base] -> b[base] -> c[base]"
        s.svc["c-gray"].kill()
        assert served_after_entry(support.get(s.entry.url + "/a", GRAY)) == "a[gray] -> b[base] -> c[base]"
    finally:
        s.stop()
