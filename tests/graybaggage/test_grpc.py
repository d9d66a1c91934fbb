"""gRPC end to end on 127.0.0.1: a -> b over gRPC -> c over HTTP, with gray b and gray c.

Every service is a real process started with ``graybaggage run`` (tests/apps/grpc_hop.py never imports
graybaggage); the test client is plain grpcio sending metadata by hand.
"""
from __future__ import annotations

import json

import pytest

grpc = pytest.importorskip("grpc")

from tests import support  # noqa: E402

GRPC_HOP = [str(support.BIN / "python"), str(support.ROOT / "tests" / "apps" / "grpc_hop.py")]
SERVICE = "/hop.Hop/"


def _ident(b: bytes) -> bytes:
    return b


def table(b_gray: str, c_gray: str, b_port: int, c_port: int, fallback: str = "base") -> str:
    return json.dumps({"version": 1, "lanes": {"gray": {"fallback": fallback, "routes": {
        f"127.0.0.1:{b_port}": b_gray, f"127.0.0.1:{c_port}": c_gray}}}})


class Chain:
    """a (gRPC, base only) -> b (gRPC, base and gray) -> c (HTTP, base and gray)."""

    def __init__(self, mode: str, b_gray_target: str | None = None, fallback: str = "base",
                 extra_env: dict | None = None, a_env: dict | None = None) -> None:
        self.started: list[support.Service] = []
        env = {"GHOP_MODE": mode, "OTEL_TRACES_EXPORTER": "none", **(extra_env or {})}
        c_port, b_port = support.free_port(), support.free_port()
        self.c = self._start("c", {"HOP_KIND": "wsgi"}, port=c_port)
        self.c_gray = self._start("c", {"HOP_KIND": "wsgi", "GRAYBAGGAGE_LANE": "gray"})
        b_gray_port = support.free_port()
        tbl = table(b_gray_target or f"127.0.0.1:{b_gray_port}", f"127.0.0.1:{self.c_gray.port}", b_port, c_port,
                    fallback)
        genv = {**env, "GRAYBAGGAGE_LANE_TABLE": tbl}
        self.b = self._start("b", {**genv, "HOP_NEXT": self.c.url}, port=b_port, cmd=GRPC_HOP)
        self.b_gray = None
        if b_gray_target is None:
            self.b_gray = self._start("b", {**genv, "HOP_NEXT": self.c.url, "GRAYBAGGAGE_LANE": "gray"},
                                      port=b_gray_port, cmd=GRPC_HOP)
        self.a = self._start("a", {**genv, "GHOP_NEXT_GRPC": f"127.0.0.1:{b_port}", **(a_env or {})}, cmd=GRPC_HOP)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.a.port}")

    def _start(self, name: str, env: dict, port: int | None = None, cmd: list | None = None) -> support.Service:
        svc = support.start(name, env, port=port, cmd=cmd)
        self.started.append(svc)
        return svc

    def close(self) -> None:
        self.channel.close()
        for s in self.started:
            s.kill()

    def unary(self, md: list) -> dict:
        return json.loads(self.channel.unary_unary(SERVICE + "Unary", _ident, _ident)(b"{}", metadata=md, timeout=20))

    def server_stream(self, md: list) -> list[dict]:
        return [json.loads(x) for x in
                self.channel.unary_stream(SERVICE + "ServerStream", _ident, _ident)(b"{}", metadata=md, timeout=20)]

    def bidi(self, md: list, n: int = 3) -> list[dict]:
        return [json.loads(x) for x in
                self.channel.stream_stream(SERVICE + "Bidi", _ident, _ident)(iter([b"{}"] * n), metadata=md, timeout=20)]

    def call(self, kind: str, md: list) -> list[dict]:
        return [self.unary(md)] if kind == "unary" else self.server_stream(md) if kind == "stream" else self.bidi(md)


def served(r: dict) -> str:
    return " -> ".join(h["served"] for h in support.chain_of(r))


@pytest.fixture(scope="module", params=["sync/lanes", "aio/lanes", "sync/tracing", "aio/tracing"])
def chain(request):
    mode, gb_mode = request.param.split("/")
    ch = Chain(mode, extra_env={"GRAYBAGGAGE_MODE": gb_mode})
    yield ch
    ch.close()


KINDS = ["unary", "stream", "bidi"]


@pytest.mark.parametrize("kind", KINDS)
def test_gray_follows_the_lane_and_untagged_stays_base(chain, kind):
    for carrier in ([("x-mse-tag", "gray")], [("baggage", "k=v,x-mse-tag=gray")]):
        replies = chain.call(kind, carrier)
        assert len(replies) == (3 if kind != "unary" else 1)
        for r in replies:
            assert r["error"] is None, r
            hops = support.chain_of(r)
            assert served(r) == "a[base] -> b[gray] -> c[gray]", (carrier, served(r))
            assert hops[0]["ctx_lane"] == "gray" and hops[1]["ctx_lane"] == "gray", hops  # attached in the handler
            for h in hops[1:]:  # b (gRPC metadata) and c (HTTP headers) got both carriers
                assert h["header"] == "gray" and "x-mse-tag=gray" in (h["baggage"] or ""), h
    for r in chain.call(kind, []):
        assert served(r) == "a[base] -> b[base] -> c[base]", served(r)
        assert all(h["header"] is None and h.get("ctx_lane") is None for h in support.chain_of(r))


BAD = [
    ("empty", [("x-mse-tag", "")]),
    ("64 chars", [("x-mse-tag", "a" * 64)]),
    ("4 KB value", [("x-mse-tag", "a" * 4096)]),
    ("uppercase", [("x-mse-tag", "GRAY")]),
    ("punctuation", [("x-mse-tag", "gray!")]),
    ("leading dash", [("x-mse-tag", "-gray")]),
    ("looks like a host", [("x-mse-tag", "c-gray.default.svc.cluster.local")]),
    ("host:port", [("x-mse-tag", "127.0.0.1:8013")]),
    ("path", [("x-mse-tag", "../../etc/passwd")]),
    ("shell injection", [("x-mse-tag", "gray;rm -rf /")]),
    ("inner space", [("x-mse-tag", "gray gray")]),
    ("duplicated", [("x-mse-tag", "gray"), ("x-mse-tag", "gray")]),
    ("conflicting duplicates", [("x-mse-tag", "gray"), ("x-mse-tag", "blue")]),
    ("comma list", [("x-mse-tag", "gray,blue")]),
    ("200 baggage members", [("baggage", ",".join(f"k{i}=v" for i in range(200)) + ",x-mse-tag=gray")]),
    ("baggage uppercase", [("baggage", "x-mse-tag=GRAY")]),
    ("baggage encoded CRLF", [("baggage", "x-mse-tag=gray%0D%0Ax-evil:%201")]),
    ("baggage no value", [("baggage", "x-mse-tag")]),
    ("baggage duplicate key", [("baggage", "x-mse-tag=gray,x-mse-tag=blue")]),
    ("baggage unicode", [("baggage", "x-mse-tag=%E7%81%B0")]),
    ("baggage host", [("baggage", "x-mse-tag=evil.example.com")]),
    ("invalid header beats valid baggage", [("x-mse-tag", "GRAY"), ("baggage", "x-mse-tag=gray")]),
    ("binary header", [("x-mse-tag-bin", b"\x00gray\xff")]),
]


def test_bad_metadata_is_served_on_base(chain):
    for name, md in BAD:
        for kind in KINDS:
            for r in chain.call(kind, md):
                assert r["error"] is None, (name, r)
                assert served(r) == "a[base] -> b[base] -> c[base]", (name, kind, served(r))
                c = support.chain_of(r)[-1]
                assert c["header"] is None and "x-mse-tag" not in (c["baggage"] or ""), (name, c)
    lines = [ln for ln in chain.a.log.splitlines() if "graybaggage: ignoring a lane in " in ln]
    assert 3 <= len(lines) == len(set(lines)), lines  # reported, once per kind


DYE_RULE = json.dumps([{"lane": "gray", "conditions": [
    {"type": "header", "name": "x-user", "operator": "==", "value": "xiaoming"}]}])


@pytest.mark.parametrize("mode,gb_mode", [("sync", "lanes"), ("aio", "lanes"), ("sync", "tracing"), ("aio", "tracing")])
def test_edge_drops_forged_metadata_and_dyes_by_rule(mode, gb_mode):
    ch = Chain(mode, extra_env={"GRAYBAGGAGE_MODE": gb_mode},
               a_env={"GRAYBAGGAGE_EDGE": "1", "GRAYBAGGAGE_DYE_RULES": DYE_RULE})
    try:
        for kind in KINDS:
            for r in ch.call(kind, [("x-user", "xiaoming")]):
                assert served(r) == "a[base] -> b[gray] -> c[gray]", (kind, served(r))
                assert support.chain_of(r)[0]["ctx_lane"] == "gray"
            for forged in ([("x-mse-tag", "gray")], [("baggage", "x-mse-tag=gray")],
                           [("x-mse-tag", "gray"), ("x-user", "someone")]):
                for r in ch.call(kind, forged):
                    assert served(r) == "a[base] -> b[base] -> c[base]", (kind, forged, served(r))
                    assert all(h["header"] is None and "x-mse-tag" not in (h["baggage"] or "")
                               for h in support.chain_of(r)[1:]), r
    finally:
        ch.close()


def test_gray_target_refusing_connections_falls_back_to_base():
    with support.refused_port() as dead:  # nothing listens there, and no server of the chain can get it
        _gray_target_refusing_connections_falls_back_to_base(dead)


def _gray_target_refusing_connections_falls_back_to_base(dead):
    for mode in ("sync", "aio"):
        # never marked down: every call meets the refused connection itself
        ch = Chain(mode, b_gray_target=f"127.0.0.1:{dead}", extra_env={"GRAYBAGGAGE_FALLBACK_FAILURES": "100000"})
        try:
            failed = 0
            for _ in range(4):
                for kind in KINDS:
                    for r in ch.call(kind, [("x-mse-tag", "gray")]):
                        if r["error"] is not None:
                            failed += 1
                            continue
                        # b has no gray instance reachable: base b, still in lane gray, so c[gray]
                        assert served(r) == "a[base] -> b[base] -> c[gray]", (mode, kind, served(r))
                        assert support.chain_of(r)[1]["header"] == "gray"
            assert failed == 0
            assert "Traceback" not in ch.a.log, ch.a.log[-3000:]
        finally:
            ch.close()


def test_strict_mode_raises_the_documented_error():
    with support.refused_port() as dead:  # a free_port() released at once can go to one of the chain's servers
        _strict_mode_raises_the_documented_error(dead)


def _strict_mode_raises_the_documented_error(dead):
    for mode in ("sync", "aio"):
        ch = Chain(mode, b_gray_target=f"127.0.0.1:{dead}", fallback="strict")
        try:
            for kind in KINDS:
                for r in ch.call(kind, [("x-mse-tag", "gray")]):
                    err = r["error"]
                    assert err is not None, (mode, kind, r)
                    assert err["code"] == "UNAVAILABLE" and err["type"] == "LaneUnavailableError", err
                    assert "lane 'gray'" in err["details"] and f"127.0.0.1:{dead}" in err["details"], err
                    assert "strict" in err["details"], err
            r = ch.unary([])  # base calls are unaffected
            assert r["error"] is None and served(r) == "a[base] -> b[base] -> c[base]"
        finally:
            ch.close()


# -- pure parts ---------------------------------------------------------------------------------
from graybaggage.integrations.grpc import lane_metadata, parse_target  # noqa: E402

TARGETS = [
    ("127.0.0.1:50051", ("", "127.0.0.1", 50051)),
    ("b:8080", ("", "b", 8080)),
    ("B.default.svc.cluster.local:8080", ("", "b.default.svc.cluster.local", 8080)),
    ("b", ("", "b", 443)),
    ("[::1]:50051", ("", "::1", 50051)),
    ("dns:b:8080", ("dns:", "b", 8080)),
    ("dns:///b:8080", ("dns:///", "b", 8080)),
    ("dns://8.8.8.8/b:8080", ("dns://8.8.8.8/", "b", 8080)),
    ("ipv4:127.0.0.1:9", ("ipv4:", "127.0.0.1", 9)),
    ("ipv6:[::1]:9", ("ipv6:", "::1", 9)),
    ("ipv4:127.0.0.1:9,127.0.0.2:9", None),
    ("unix:/tmp/sock", None),
    ("unix-abstract:x", None),
    ("xds:///b", None),
    ("b:port", None),
    ("", None),
    ("::1", None),
]


@pytest.mark.parametrize("target,expected", TARGETS)
def test_parse_target(target, expected):
    assert parse_target(target) == expected


class _Settings:
    def __init__(self, edge=False, send_header=True, send_baggage=True):
        self.header, self.edge, self.send_header, self.send_baggage = "x-mse-tag", edge, send_header, send_baggage


class _Rt:
    def __init__(self, **kw):
        self.settings = _Settings(**kw)


METADATA = [
    # (metadata in, lane, runtime options, metadata out)
    (None, None, {}, None),
    ((("k", "v"),), None, {}, (("k", "v"),)),
    (None, "gray", {}, (("x-mse-tag", "gray"), ("baggage", "x-mse-tag=gray"))),
    ((("x-mse-tag", "blue"),), "gray", {}, (("x-mse-tag", "gray"), ("baggage", "x-mse-tag=gray"))),
    ((("baggage", "a=1"),), "gray", {}, (("x-mse-tag", "gray"), ("baggage", "a=1,x-mse-tag=gray"))),
    ((("x-mse-tag", "gray"), ("baggage", "x-mse-tag=gray")), "gray", {},
     (("x-mse-tag", "gray"), ("baggage", "x-mse-tag=gray"))),
    (None, "gray", {"send_baggage": False}, (("x-mse-tag", "gray"),)),
    (None, "gray", {"send_header": False}, (("baggage", "x-mse-tag=gray"),)),
    ((("x-mse-tag", "gray"), ("k", "v")), None, {"edge": True}, (("k", "v"),)),
    ((("baggage", "a=1,x-mse-tag=gray"),), None, {"edge": True}, (("baggage", "a=1"),)),
    ((("baggage", "x-mse-tag=gray"),), None, {"edge": True}, ()),
    ((("k", "v"),), None, {"edge": True}, (("k", "v"),)),
]


@pytest.mark.parametrize("md,lane,opts,expected", METADATA)
def test_lane_metadata(md, lane, opts, expected):
    assert lane_metadata(md, lane, _Rt(**opts)) == expected


def test_patches_are_reversible():
    import graybaggage
    from graybaggage import _patch

    graybaggage.instrument()
    try:
        assert _patch.is_hooked(type(grpc), "server") or getattr(grpc.server, "_self_graybaggage", False)
        ch = grpc.insecure_channel("127.0.0.1:1")
        assert isinstance(ch, grpc.Channel) and type(ch).__name__ == "LaneChannel"
        ch.close()
    finally:
        graybaggage.uninstrument()
    assert not getattr(grpc.server, "_self_graybaggage", False)
    assert not getattr(grpc.insecure_channel, "_self_graybaggage", False)
    assert not getattr(grpc.aio.server, "_self_graybaggage", False)
    ch = grpc.insecure_channel("127.0.0.1:1")
    assert type(ch).__name__ != "LaneChannel"
    ch.close()


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_gray_target_killed_mid_run_fails_only_calls_already_sent(mode):
    """4 client threads keep calling a (unary, lane gray) while b[gray] is SIGKILLed. A call a had already sent to
    b[gray] may fail (it may have had effects: never re-sent); every call made after that goes to base b."""
    import threading

    ch = Chain(mode, extra_env={"GRAYBAGGAGE_FALLBACK_FAILURES": "100000"})
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()
    total, kill_at = 400, 100
    killed = threading.Event()
    counter = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            r = ch.unary([("x-mse-tag", "gray")])
            with lock:
                results.append((1 if killed.is_set() else 0, r))
                if len(results) == kill_at:
                    ch.b_gray.kill()  # SIGKILL, while other calls are in flight
                    killed.set()

    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ch.close()
    failed = [r for _, r in results if r["error"] is not None]
    # only calls in flight to b[gray] at the kill (at most one per client thread) may fail, and none of them
    # failed to connect (a call that could not be sent would have gone to base)
    assert len(failed) <= 4, failed
    assert not [r for r in failed if "failed to connect" in (r["error"]["details"] or "")], failed
    after = [r for phase, r in results if phase == 1 and r["error"] is None]
    assert len(results) == total and after
    tail = [served(r) for _, r in results[-200:]]
    assert set(tail) == {"a[base] -> b[base] -> c[gray]"}, set(tail)
    print(f"\n{mode}: {total} unary calls, b[gray] SIGKILLed after {kill_at}: {len(failed)} failed (sent before the "
          f"kill: {sorted({r['error']['code'] + ' ' + (r['error']['details'] or '')[:60] for r in failed})}), "
          f"{len(after)} after the kill served by base b")


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_tracing_mode_composes_with_opentelemetry_grpc_instrumentation(mode):
    """With opentelemetry-instrumentation-grpc loaded (tracing mode, an SDK, console exporter): one client and one
    server span per call, each stamped with the lane; the lane still routes."""
    import re
    import time

    pytest.importorskip("opentelemetry.instrumentation.grpc")
    ch = Chain(mode, extra_env={"GRAYBAGGAGE_MODE": "tracing", "OTEL_TRACES_EXPORTER": "console",
                                "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
                                "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        for kind in KINDS:
            for r in ch.call(kind, [("x-mse-tag", "gray")]):
                assert served(r) == "a[base] -> b[gray] -> c[gray]", served(r)

        def spans(svc: support.Service) -> list[tuple[str, str]]:
            return re.findall(r'"name": "(/hop\.Hop/\w+)",\s*"context".*?"kind": "SpanKind\.(\w+)"', svc.log, re.S)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(spans(ch.a)) < 6 or len(spans(ch.b_gray)) < 3):
            time.sleep(0.1)
        assert "grpc_client" in ch.a.log and "grpc_server" in ch.a.log  # the contrib instrumentations were loaded
        assert sorted(spans(ch.a)) == sorted([(f"/hop.Hop/{m}", k) for m in ("Unary", "ServerStream", "Bidi")
                                              for k in ("CLIENT", "SERVER")]), spans(ch.a)
        assert sorted(spans(ch.b_gray)) == sorted([(f"/hop.Hop/{m}", "SERVER") for m in ("Unary", "ServerStream", "Bidi")])
        lanes = re.findall(r'"graybaggage\.lane": "(\w+)"', ch.a.log)
        assert lanes and set(lanes) == {"gray"}, lanes
    finally:
        ch.close()
