"""graybaggage composes with an existing OpenTelemetry set-up instead of replacing it (real processes).

- An OTLP/HTTP exporter configured only by environment variables: a fake collector on loopback receives the
  same spans from ``opentelemetry-instrument`` and from ``graybaggage run``.
- Installing graybaggage changes nothing in an ``opentelemetry-instrument`` process until it is switched on.
- Lanes-only mode builds no SDK the user did not ask for.
"""
from __future__ import annotations

import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests import support


class Collector:
    """A fake OTLP/HTTP collector on 127.0.0.1: decodes every trace export and keeps the spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                              ExportTraceServiceResponse)
        spans = self.spans = []  # (service.name, span name, kind)
        self.posts: list[str] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append(self.path)
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        service = next((a.value.string_value for a in rs.resource.attributes
                                        if a.key == "service.name"), "")
                        for ss in rs.scope_spans:
                            spans.extend((service, s.name, s.kind) for s in ss.spans)
                    reply = ExportTraceServiceResponse().SerializeToString()
                else:
                    reply = b""
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, service: str) -> list[tuple[str, str, int]]:
        return sorted(s for s in self.spans if s[0] == service)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def _otlp_env(collector: Collector, service: str) -> dict[str, str]:
    # what an OpenTelemetry shop sets: an endpoint, the protocol, a name; opentelemetry-distro does the rest
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def sink():
    s = support.start("sink", {"HOP_KIND": "wsgi"}, how="none")
    yield s
    s.kill()


REQUESTS = 5


def _spans_exported(collector: Collector, sink: support.Service, how: str, service: str) -> list:
    app = support.start(service, {"HOP_KIND": "flask", "HOP_NEXT": sink.url, **_otlp_env(collector, service)},
                        how="none", cmd=_launch(how))
    try:
        for _ in range(REQUESTS):
            assert support.chain_of(support.get(app.url + "/p", {"x-mse-tag": "gray"}))[-1]["name"] == "sink"
    finally:
        app.kill(signal.SIGTERM)  # a graceful stop: the SDK flushes its batch at exit
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(collector.of(service)) < 2 * REQUESTS:
        time.sleep(0.1)
    return collector.of(service)


def _launch(how: str) -> list[str]:
    hop = [str(support.BIN / "python"), str(support.HOP)]
    if how == "opentelemetry-instrument":
        return [str(support.BIN / "opentelemetry-instrument"), *hop]  # opentelemetry-distro, as installed
    return [str(support.BIN / "graybaggage"), "run", "--", *hop]


def test_otlp_export_configured_by_env_is_the_same_under_graybaggage_run(collector, sink):
    plain = _spans_exported(collector, sink, "opentelemetry-instrument", "svc-otel")
    with_gb = _spans_exported(collector, sink, "graybaggage-run", "svc-gb")
    assert len(plain) >= 2 * REQUESTS, plain  # a server and a client span per request, at least
    assert [s[1:] for s in with_gb] == [s[1:] for s in plain], (plain, with_gb)


def test_installing_graybaggage_changes_nothing_under_another_distro(sink):
    env = {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "OTEL_TRACES_EXPORTER": "none",
           "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    cmd = _launch("opentelemetry-instrument")
    off = support.start("off", env, how="none", cmd=cmd)
    on = support.start("on", {**env, "GRAYBAGGAGE_ENABLED": "1"}, how="none", cmd=cmd)
    try:
        info = support.get(off.url + "/otel")
        assert info["propagators"] == ["TraceContextTextMapPropagator", "W3CBaggagePropagator"], info
        hops = support.chain_of(support.get(off.url + "/p", {"x-mse-tag": "gray"}))
        assert hops[-1]["header"] is None  # graybaggage's hooks are not active: nothing adds the header
        assert "graybaggage: on" not in off.log
        assert support.chain_of(support.get(on.url + "/p", {"x-mse-tag": "gray"}))[-1]["header"] == "gray"
        assert "graybaggage: on (GRAYBAGGAGE_ENABLED=1)" in on.log, on.log
    finally:
        off.kill()
        on.kill()


def test_a_graybaggage_setting_without_switching_on_is_reported(sink):
    env = {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "GRAYBAGGAGE_LANE": "gray"}
    svc = support.start("off", env, how="none", cmd=_launch("opentelemetry-instrument"))
    try:
        support.get(svc.url + "/p")
        assert ("GRAYBAGGAGE_LANE set, but graybaggage is not switched on in this process" in svc.log
                and "GRAYBAGGAGE_ENABLED=1" in svc.log), svc.log
    finally:
        svc.kill()


def test_lanes_mode_builds_no_sdk_but_otel_configuration_gets_one(sink):
    lanes = support.start("lanes", {"HOP_KIND": "flask", "HOP_NEXT": sink.url})
    traced = support.start("traced", {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "OTEL_TRACES_EXPORTER": "console",
                                      "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    try:
        assert support.get(lanes.url + "/otel")["provider"] == "ProxyTracerProvider"  # no SDK: nobody asked
        info = support.get(traced.url + "/otel")
        assert info["provider"] == "TracerProvider" and info["exporters"][0] == "ConsoleSpanExporter", info
        assert "mode=lanes" in lanes.log and "mode=tracing" in traced.log
    finally:
        lanes.kill()
        traced.kill()


def test_enabled_0_keeps_graybaggage_run_off(sink):
    svc = support.start("off", {"HOP_KIND": "flask", "HOP_NEXT": sink.url, "GRAYBAGGAGE_ENABLED": "0"})
    try:
        assert support.chain_of(support.get(svc.url + "/p", {"x-mse-tag": "gray"}))[-1]["header"] is None
        assert "graybaggage: on" not in svc.log
    finally:
        svc.kill()
