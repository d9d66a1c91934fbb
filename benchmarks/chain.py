#!/usr/bin/env python
"""Two-hop chain benchmark: Flask -> requests -> Flask under gunicorn (sync workers), on 127.0.0.1 only.

    python benchmarks/chain.py --rounds 5 --seconds 8

Every configuration's servers start once (with --restart: fresh servers for every measurement, each warmed up
first); then each round loads every configuration in turn, for the
same time, from a separate process (wrk when installed, else a bounded Python load generator), in a new
(seeded, shuffled) order each round; with two configurations the order alternates AB, BA, AB, ... Reported: median throughput, p50/p99 latency, server CPU per request, and
per-round paired ratios (each configuration against its reference measured in the same round).

Configurations (every hop of a chain runs the same way; the app never imports graybaggage):
  plain       gunicorn
  otel-nosdk  opentelemetry-instrument gunicorn   contrib flask+requests(+threading), no SDK, no configurator
  lanes       graybaggage run -- gunicorn         default (lanes-only) mode
  sdk         opentelemetry-instrument gunicorn   OTEL_PYTHON_DISTRO=distro, opentelemetry-distro's configurator,
                                                  SDK TracerProvider + BatchSpanProcessor -> in-memory no-op exporter
  sdk+gb      graybaggage run -- gunicorn         the same SDK set-up (auto mode resolves to tracing)
  route-off   lanes, tagged gray, empty lane table (GRAYBAGGAGE_LANE_TABLE)          + a second hop2 instance
  route-on    lanes, tagged gray, lane table re-routing hop2 to the second hop2 instance
  plain-2     (only with --configs) a second plain chain: an A/A control that shows the noise floor
  sdk-2       (only with --configs) a second sdk chain: the A/A control of the sdk+gb / sdk pair
  lanes-header, lanes-baggage  (only with --configs) lanes with GRAYBAGGAGE_CARRIERS=header / =baggage: one
              lane header per call instead of two
  by-hand     (only with --configs) gunicorn, no graybaggage: hop1's app forwards the lane as x-mse-tag and
              baggage itself (CHAIN_FORWARD=1, one environment variable as graybaggage run adds one): the
              least that carrying a lane as issue 2 specifies it costs
All load carries ``x-mse-tag: gray`` (the worst case for graybaggage: every hop parses and forwards a lane).

Bounded: each run stops after --seconds or --max-requests, whichever comes first; servers are stopped at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # loopback only
LANE = "gray"
BASE_PORT = 18100

# instrumentations kept in every OTel configuration (the rest of the installed ones are disabled so the
# configurations differ only in what they claim to measure)
KEEP_OTEL = {"flask", "requests", "threading"}


@dataclass
class Config:
    name: str
    launcher: str  # "none" | "otel" | "gb"
    env: dict = field(default_factory=dict)
    hop1_env: dict = field(default_factory=dict)
    shim: bool = False  # put the no-op exporter shim on PYTHONPATH
    hop2b: bool = False
    expect: dict = field(default_factory=dict)  # sanity checks on the chain's answer
    note: str = ""


def _installed_instrumentors() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="opentelemetry_instrumentor")})


def _has_otel_distro() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "configurator" for ep in entry_points(group="opentelemetry_configurator"))


def build_configs() -> list[Config]:
    insts = _installed_instrumentors()
    disabled_otel = ",".join(n for n in insts if n not in KEEP_OTEL and n != "graybaggage") + ",graybaggage"
    disabled_gb = ",".join(n for n in insts if n not in KEEP_OTEL and n != "graybaggage")
    sdk_env = {
        "OTEL_TRACES_EXPORTER": "gb_bench_noop",  # in-memory counter, see _write_shim
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "chain",
    }
    if _has_otel_distro():
        sdk_distro = {"OTEL_PYTHON_DISTRO": "distro", "OTEL_PYTHON_CONFIGURATOR": "configurator"}
    else:  # the same configurator class opentelemetry-distro subclasses, registered by the shim
        sdk_distro = {"OTEL_PYTHON_DISTRO": "gb_bench_default", "OTEL_PYTHON_CONFIGURATOR": "gb_bench_sdk"}
    table_empty = json.dumps({"version": 1, "lanes": {}})
    return [
        Config("plain", "none", expect={"lane": None, "traceparent": False}),
        # A/A control (not in the default set): a second, identical plain chain shows the noise floor
        Config("plain-2", "none", expect={"lane": None, "traceparent": False}),
        Config("otel-nosdk", "otel", {
            "OTEL_PYTHON_DISTRO": "distro" if _has_otel_distro() else "gb_bench_default",
            "OTEL_PYTHON_CONFIGURATOR": "gb_bench_no_configurator",  # no SDK: skip every configurator
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled_otel,
        }, shim=not _has_otel_distro(), expect={"lane": None, "traceparent": False}),
        Config("lanes", "gb", expect={"lane": LANE, "traceparent": False}),
        # Not in the default set: lanes with one carrier (GRAYBAGGAGE_CARRIERS), i.e. one header per call instead of two
        Config("lanes-header", "gb", {"GRAYBAGGAGE_CARRIERS": "header"},
               expect={"lane": LANE, "baggage": None, "traceparent": False}),
        Config("lanes-baggage", "gb", {"GRAYBAGGAGE_CARRIERS": "baggage"},
               expect={"lane": None, "baggage": f"x-mse-tag={LANE}", "traceparent": False}),
        # Reference (not in the default set): no graybaggage; the app forwards the lane as both headers itself,
        # with one environment variable (graybaggage run adds one: PYTHONPATH). What lanes costs at the least.
        Config("by-hand", "none", {"CHAIN_FORWARD": "1"}, expect={"lane": LANE, "traceparent": False}),
        Config("sdk", "otel", {**sdk_env, **sdk_distro, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled_otel},
               shim=True, expect={"lane": None, "traceparent": True}),
        # A/A control for the SDK pair (not in the default set)
        Config("sdk-2", "otel", {**sdk_env, **sdk_distro, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled_otel},
               shim=True, expect={"lane": None, "traceparent": True}),
        # No GRAYBAGGAGE_MODE: with an exporter configured, auto mode is tracing. Both SDK configurations
        # have the same number of environment variables, which matters: requests scans os.environ for
        # proxy settings on every call, so each extra variable costs every outbound call.
        Config("sdk+gb", "gb", {**sdk_env,
                                "OTEL_PYTHON_CONFIGURATOR": sdk_distro["OTEL_PYTHON_CONFIGURATOR"],
                                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled_gb},
               shim=True, expect={"lane": LANE, "traceparent": True}),
        Config("route-off", "gb", hop1_env={"GRAYBAGGAGE_LANE_TABLE": table_empty}, hop2b=True,
               expect={"lane": LANE, "served_by": "hop2"}),
        Config("route-on", "gb", hop1_env={"GRAYBAGGAGE_LANE_TABLE": "@route"}, hop2b=True,
               expect={"lane": LANE, "served_by": "hop2-gray"}),
    ]


# ------------------------------------------------------------------------------------------------
# helper files: no-op span exporter (+ configurator fallback) registered through a dist-info shim
# ------------------------------------------------------------------------------------------------
NOOP_EXPORTER = '''\
"""In-memory no-op span exporter for benchmarks/chain.py (counts spans, keeps nothing)."""
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

EXPORTED = 0


class NoopSpanExporter(SpanExporter):
    def export(self, spans):
        global EXPORTED
        EXPORTED += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True
'''

WRK_LUA = r'''
local max_requests = tonumber(os.getenv("GB_BENCH_MAX_PER_THREAD") or "0") or 0
local n = 0
function response(status, headers, body)
  n = n + 1
  if max_requests > 0 and n >= max_requests then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('GBRESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "mean_us": %.1f, "max_us": %d, "err_connect": %d, "err_read": %d, "err_write": %d, ' ..
    '"err_status": %d, "err_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
'''


def _write_shim(d: Path) -> Path:
    shim = d / "shim"
    info = shim / "gb_bench_shim-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (shim / "gb_bench_noop.py").write_text(NOOP_EXPORTER)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gb-bench-shim\nVersion: 0.0\n")
    eps = "[opentelemetry_traces_exporter]\ngb_bench_noop = gb_bench_noop:NoopSpanExporter\n"
    if not _has_otel_distro():  # stand-ins for opentelemetry-distro (whose configurator is this same class)
        eps += ("\n[opentelemetry_configurator]\ngb_bench_sdk = opentelemetry.sdk._configuration:_OTelSDKConfigurator\n"
                "\n[opentelemetry_distro]\ngb_bench_default = opentelemetry.instrumentation.distro:DefaultDistro\n")
    (info / "entry_points.txt").write_text(eps)
    (d / "bench.lua").write_text(WRK_LUA)
    return shim


# ------------------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "GRAYBAGGAGE_", "MSE_")) and k not in ("PYTHONPATH",)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def launched(cfg: Config, cmd: list[str], shim: Path, extra: dict) -> tuple[list[str], dict]:
    """``cmd`` as the configuration starts it (its launcher in front) and its environment: the clean
    environment, the configuration's variables, ``extra``, and the exporter shim on PYTHONPATH if it needs it."""
    if cfg.launcher == "otel":
        cmd = [str(BIN / "opentelemetry-instrument"), *cmd]
    elif cfg.launcher == "gb":
        cmd = [str(BIN / "graybaggage"), "run", "--", *cmd]
    env = _clean_env()
    env.update(cfg.env)
    env.update(extra)
    if cfg.shim:
        env["PYTHONPATH"] = str(shim)
    return cmd, env


REFERENCE = {"lanes": "plain", "lanes-header": "plain", "lanes-baggage": "plain", "by-hand": "plain", "plain-2": "plain", "otel-nosdk": "plain", "sdk": "plain", "sdk-2": "sdk",
             "sdk+gb": "sdk"}
"""The configuration each one is compared with in the per-hop and per-chain tables."""


def instructions_table(results: dict[str, list[float]], what: str) -> tuple[dict[str, float], str]:
    """Median instructions per request of each configuration and the Markdown table against its reference."""
    med = {n: statistics.median(v) for n, v in results.items()}
    lines = [f"| config | k instructions per {what} (median) | spread over rounds | reference | ratio | delta k |",
             "|---|---:|---:|---|---:|---:|"]
    for n, runs in results.items():
        spread = f"{(max(runs) - min(runs)) / 1000:.1f}"
        ref = REFERENCE.get(n)
        if ref in med:
            lines.append(f"| {n} | {med[n] / 1000:.1f} | {spread} | {ref} | {med[n] / med[ref]:.4f} | "
                         f"{(med[n] - med[ref]) / 1000:+.1f} |")
        else:
            lines.append(f"| {n} | {med[n] / 1000:.1f} | {spread} | - | - | - |")
    return med, "\n".join(lines)


def start_server(cfg: Config, role: str, name: str, port: int, next_url: str, workers: int, shim: Path,
                 logdir: Path, extra: dict, profile_dir: Path | None = None) -> Server:
    cmd = [str(BIN / "gunicorn"), "-w", str(workers), "-k", "sync", "-b", f"{HOST}:{port}",
           "--chdir", str(HERE), "--log-level", "warning"]
    if profile_dir is not None:
        cmd += ["-c", str(HERE / "gunicorn_profile.py")]
        extra = {**extra, "GB_BENCH_PROFILE_DIR": str(profile_dir),
                 "GB_BENCH_PROFILE_NAME": f"{cfg.name}-{name}".replace("+", "_")}
    cmd.append("chain_app:app")
    cmd, env = launched(cfg, cmd, shim, {**extra, "CHAIN_ROLE": role, "CHAIN_NAME": name, "CHAIN_NEXT": next_url})
    log = logdir / f"{cfg.name}-{name}.log".replace("+", "_")
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return Server(name, port, proc, log)


def hop_setup(prefix: str, child_source: str, hop: str) -> tuple[Path, Path, Path, "Server | None", str]:
    """What the hop benchmarks (hop_cpu.py, hop_instructions.py) share: a work folder with the exporter shim
    and their child program, and for ``hop1`` a plain hop2 to call. Returns (workdir, shim, child, hop2, url)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    shim = _write_shim(tmp)
    child = tmp / "child.py"
    child.write_text(child_source)
    hop2 = plain_leaf(shim, tmp) if hop == "hop1" else None  # the callee of hop1's outbound call (loopback)
    return tmp, shim, child, hop2, hop2.url if hop2 is not None else ""


def plain_leaf(shim: Path, workdir: Path, port: int = 18190) -> Server:
    """A plain gunicorn hop2 on 127.0.0.1, ready: the callee of the hop benchmarks' hop1 runs."""
    while not _port_free(port):
        port += 1
    plain = next(c for c in build_configs() if c.name == "plain")
    server = start_server(plain, "hop2", "hop2", port, "", 2, shim, workdir, {})
    wait_ready([server])
    return server


def _get_json(url: str, headers: dict | None = None, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def wait_ready(servers: list[Server], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    for s in servers:
        while True:
            if s.proc.poll() is not None:
                raise RuntimeError(f"{s.name} exited ({s.proc.returncode}); log {s.log}:\n{s.log.read_text()[-3000:]}")
            try:
                _get_json(s.url + "/stats", timeout=1.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{s.name} not ready on {s.url}; log {s.log}:\n{s.log.read_text()[-3000:]}") from None
                time.sleep(0.2)


def stop_servers(servers: list[Server]) -> None:
    for s in servers:
        if s.proc.poll() is None:
            try:
                os.kill(s.proc.pid, signal.SIGTERM)  # the gunicorn master (launchers exec into it)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(s.proc.pid, signal.SIGKILL)  # its own session: only this server's processes
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpu_seconds(servers: list[Server]) -> float:
    """utime+stime of every gunicorn master and worker of ``servers`` (Linux /proc)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for s in servers:
        for pid in [s.proc.pid, *_children(s.proc.pid)]:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
    return total / hz


# ------------------------------------------------------------------------------------------------
# load generation (a separate process)
# ------------------------------------------------------------------------------------------------
def run_wrk(url: str, seconds: float, connections: int, max_requests: int, lua: Path) -> dict:
    threads = 1 if connections < 8 else 2
    env = dict(os.environ, GB_BENCH_MAX_PER_THREAD=str(max(1, max_requests // threads)))
    secs = max(1, round(seconds))  # wrk takes whole seconds
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{secs}s", "--timeout", "5s", "-s", str(lua),
           "-H", f"x-mse-tag: {LANE}", url + "/"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("GBRESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(line[len("GBRESULT "):])
    return {
        "requests": r["requests"], "duration_s": r["duration_us"] / 1e6,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "errors": r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"],
        "errors_detail": {k: v for k, v in r.items() if k.startswith("err_")},
    }


def loadgen_child(url: str, seconds: float, connections: int, max_requests: int) -> None:
    """Bounded Python load generator: ``connections`` threads, each with its own HTTP connection."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    count = [0]
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        conn = None
        mine: list[float] = []
        while time.monotonic() < stop_at:
            with lock:
                if count[0] >= max_requests:
                    break
                count[0] += 1
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                conn.request("GET", "/", headers={"x-mse-tag": LANE})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[0] += 1
                if resp.getheader("connection", "").lower() == "close" or resp.will_close:
                    conn.close()
                    conn = None
            except Exception:
                errors[0] += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t_start = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(connections)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dur = time.monotonic() - t_start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")

    print("GBRESULT " + json.dumps({"requests": len(lat), "duration_s": dur, "rps": len(lat) / dur,
                                    "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
                                    "errors": errors[0], "errors_detail": {}}))


def run_python_loadgen(url: str, seconds: float, connections: int, max_requests: int) -> dict:
    cmd = [sys.executable, __file__, "_loadgen", url, str(seconds), str(connections), str(max_requests)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("GBRESULT ")), None)
    if line is None:
        raise RuntimeError(f"load generator printed no result:\n{out}")
    return json.loads(line[len("GBRESULT "):])


# ------------------------------------------------------------------------------------------------
def busy_background() -> str:
    """Other CPU eaters on the machine (e.g. a Go build), for the record."""
    try:
        out = subprocess.run(["pgrep", "-f", "go build|/compile "], capture_output=True, text=True).stdout
        n = len(out.split())
    except OSError:
        n = 0
    return f"{n} go build/compile procs" if n else ""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


DEFAULT_CONFIGS = ("plain", "otel-nosdk", "lanes", "sdk", "sdk+gb", "route-off", "route-on")
RATIOS = [  # (numerator, reference, target)
    ("plain-2", "plain", None),
    ("sdk-2", "sdk", None),
    ("lanes", "plain", 0.97),
    ("otel-nosdk", "plain", None),
    ("sdk", "plain", None),
    ("sdk+gb", "sdk", 0.97),
    ("sdk+gb", "plain", None),
    ("route-off", "plain", None),
    ("route-on", "route-off", None),
]


def summarize(results: dict, names: list[str]) -> dict:
    summary: dict = {"configs": {}, "ratios": []}
    for n in names:
        runs = results[n]
        summary["configs"][n] = {
            "rps_median": median([r["rps"] for r in runs]),
            "rps_min": min(r["rps"] for r in runs), "rps_max": max(r["rps"] for r in runs),
            "p50_ms_median": median([r["p50_ms"] for r in runs]),
            "p99_ms_median": median([r["p99_ms"] for r in runs]),
            "cpu_us_per_req_median": median([r["cpu_us_per_req"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
        }
    for num, ref, target in RATIOS:
        if num not in results or ref not in results:
            continue
        pairs = list(zip(results[num], results[ref]))
        rps_r = [a["rps"] / b["rps"] for a, b in pairs]
        cpu_r = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in pairs]
        summary["ratios"].append({
            "config": num, "reference": ref, "target": target,
            "rps_ratio_median": median(rps_r), "rps_ratio_min": min(rps_r), "rps_ratio_max": max(rps_r),
            "rps_ratio_of_medians": summary["configs"][num]["rps_median"] / summary["configs"][ref]["rps_median"],
            "cpu_ratio_median": median(cpu_r),
            "cpu_delta_us_median": median([a["cpu_us_per_req"] - b["cpu_us_per_req"] for a, b in pairs]),
            "p50_delta_ms_median": median([a["p50_ms"] - b["p50_ms"] for a, b in pairs]),
            "met": None if target is None else median(rps_r) >= target,
        })
    return summary


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        f"Chain: Flask -> requests -> Flask, gunicorn sync {meta['workers']}+{meta['workers']} workers, "
        f"{meta['connections']} connections, {meta['rounds']} rounds x {meta['seconds']} s, "
        f"load generator {meta['loadgen']}, all requests `x-mse-tag: {LANE}`.",
        "",
        "| config | median req/s | min-max req/s | vs plain | p50 ms | p99 ms | server CPU us/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = summary["configs"].get("plain", {}).get("rps_median")
    for n, c in summary["configs"].items():
        vs = f"{c['rps_median'] / plain:.3f}" if plain else "-"
        lines.append(f"| {n} | {c['rps_median']:.0f} | {c['rps_min']:.0f}-{c['rps_max']:.0f} | {vs} | "
                     f"{c['p50_ms_median']:.2f} | {c['p99_ms_median']:.2f} | {c['cpu_us_per_req_median']:.0f} | "
                     f"{c['errors']} |")
    lines += [
        "",
        "| ratio (paired per round) | median throughput ratio | min-max | ratio of medians | CPU/req ratio | "
        "CPU/req delta us | p50 delta ms | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in summary["ratios"]:
        tgt = "-" if r["target"] is None else (
            f">= {r['target']}: {'met' if r['met'] else 'MISSED'} "
            f"(by CPU: {1 / r['cpu_ratio_median']:.3f}, {'met' if 1 / r['cpu_ratio_median'] >= r['target'] else 'MISSED'})")
        lines.append(f"| {r['config']} / {r['reference']} | {r['rps_ratio_median']:.3f} | "
                     f"{r['rps_ratio_min']:.3f}-{r['rps_ratio_max']:.3f} | {r['rps_ratio_of_medians']:.3f} | "
                     f"{r['cpu_ratio_median']:.3f} | {r['cpu_delta_us_median']:+.0f} | "
                     f"{r['p50_delta_ms_median']:+.2f} | {tgt} |")
    return "\n".join(lines)


def sanity(cfg: Config, servers: dict[str, Server]) -> dict:
    """One tagged request through the chain, plus each hop's /stats: is this configuration what it claims?"""
    body = _get_json(servers["hop1"].url + "/", {"x-mse-tag": LANE})
    leaf = body["next"]
    info = {"hop2_saw_lane": leaf.get("lane"), "hop2_saw_baggage": leaf.get("baggage"),
            "hop2_saw_traceparent": bool(leaf.get("traceparent")), "served_by": leaf.get("name"),
            "stats": {n: _get_json(s.url + "/stats") for n, s in servers.items()}}
    problems = []
    exp = cfg.expect
    if "lane" in exp and leaf.get("lane") != exp["lane"]:
        problems.append(f"hop2 saw lane {leaf.get('lane')!r}, expected {exp['lane']!r}")
    if "baggage" in exp and leaf.get("baggage") != exp["baggage"]:
        problems.append(f"hop2 saw baggage {leaf.get('baggage')!r}, expected {exp['baggage']!r}")
    if "traceparent" in exp and bool(leaf.get("traceparent")) != exp["traceparent"]:
        problems.append(f"traceparent at hop2 {'present' if leaf.get('traceparent') else 'absent'}")
    if "served_by" in exp and leaf.get("name") != exp["served_by"]:
        problems.append(f"served by {leaf.get('name')!r}, expected {exp['served_by']!r}")
    info["problems"] = problems
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=8.0, help="load time per configuration per round")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="gunicorn sync workers per hop")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load per configuration")
    ap.add_argument("--max-requests", type=int, default=200_000, help="cap per run (bounded in count too)")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--configs", default="", help="comma-separated configs (default: all but the plain-2 control)")
    ap.add_argument("--restart", action="store_true",
                    help="start fresh servers for every configuration in every round (and warm them up): "
                         "averages out per-process luck (memory layout, hash seeds), which shows as a steady "
                         "few-percent gap between identical chains")
    ap.add_argument("--seed", type=int, default=1, help="seed of the per-round order shuffle (3+ configs)")
    ap.add_argument("--out", default="", help="JSON result path (default benchmarks/results/chain-<time>.json)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile every gunicorn worker (slows everything: use for hot spots, not for numbers)")
    ap.add_argument("--show-profile", metavar="DIR", help="print the graybaggage hot spots of a --profile run")
    args = ap.parse_args(argv)
    if args.show_profile:
        return show_profile(Path(args.show_profile))

    configs = build_configs()
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = set(wanted) - {c.name for c in configs}
        if unknown:
            ap.error(f"unknown configs {sorted(unknown)}")
        configs = [c for c in configs if c.name in wanted]
    else:
        configs = [c for c in configs if c.name in DEFAULT_CONFIGS]
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"

    tmp = Path(tempfile.mkdtemp(prefix="gb-chain-bench-"))
    shim = _write_shim(tmp)
    profile_dir = None
    if args.profile:
        profile_dir = tmp / "profiles"
        profile_dir.mkdir()
    lua = tmp / "bench.lua"
    all_servers: list[Server] = []
    by_cfg: dict[str, dict[str, Server]] = {}
    meta = {
        "rounds": args.rounds, "seconds": args.seconds, "restart": args.restart, "connections": args.connections, "workers": args.workers,
        "loadgen": loadgen, "python": platform.python_version(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "otel_distro_installed": _has_otel_distro(), "instrumentors": _installed_instrumentors(),
        "logs": str(tmp),
    }
    try:
        from importlib.metadata import version

        meta["versions"] = {p: version(p) for p in ("opentelemetry-api", "opentelemetry-sdk", "opentelemetry-instrumentation",
                                                     "flask", "requests", "gunicorn", "graybaggage")}
    except Exception:  # noqa: BLE001
        pass
    print(f"chain benchmark: {len(configs)} configs, {args.rounds} rounds x {args.seconds}s, loadgen={loadgen}, "
          f"logs in {tmp}", flush=True)
    ports: dict[str, int] = {}
    checks: dict = {}

    def bring_up(cfg: Config) -> dict[str, Server]:
        """Start one configuration's servers (same ports every time), wait, check it is what it claims."""
        if cfg.name not in ports:
            port = max(ports.values(), default=BASE_PORT - 10) + 10
            while not all(_port_free(p) for p in range(port, port + 3)):
                port += 10
            ports[cfg.name] = port
        p1 = ports[cfg.name]
        p2, p2b = p1 + 1, p1 + 2
        hop1_extra = dict(cfg.hop1_env)
        if hop1_extra.get("GRAYBAGGAGE_LANE_TABLE") == "@route":
            hop1_extra["GRAYBAGGAGE_LANE_TABLE"] = json.dumps(
                {"version": 1, "lanes": {LANE: {"fallback": "base", "routes": {f"{HOST}:{p2}": f"{HOST}:{p2b}"}}}})
        servers = {
            "hop2": start_server(cfg, "hop2", "hop2", p2, "", args.workers, shim, tmp, {}, profile_dir),
            "hop1": start_server(cfg, "hop1", "hop1", p1, f"http://{HOST}:{p2}", args.workers, shim, tmp,
                                 hop1_extra, profile_dir),
        }
        if cfg.hop2b:
            servers["hop2b"] = start_server(cfg, "hop2", "hop2-gray", p2b, "", args.workers, shim, tmp, {},
                                            profile_dir)
        by_cfg[cfg.name] = servers
        all_servers.extend(servers.values())
        return servers

    def check(cfg: Config) -> bool:
        info = sanity(cfg, by_cfg[cfg.name])
        checks[cfg.name] = info
        st = info["stats"]["hop1"]
        print(f"  ready {cfg.name:<10} hop1 tracer_provider={st['tracer_provider']} gb_mode={st['graybaggage_mode']} "
              f"hop2 saw lane={info['hop2_saw_lane']!r} traceparent={info['hop2_saw_traceparent']} "
              f"served_by={info['served_by']}" + (f"  PROBLEMS: {info['problems']}" if info["problems"] else ""),
              flush=True)
        return not info["problems"]

    def take_down(cfg: Config) -> None:
        servers = list(by_cfg.pop(cfg.name).values())
        stop_servers(servers)
        for srv in servers:
            all_servers.remove(srv)

    try:
        def load(cfg: Config, seconds: float) -> dict:
            servers = list(by_cfg[cfg.name].values())
            url = by_cfg[cfg.name]["hop1"].url
            cpu0 = cpu_seconds(servers)
            if loadgen == "wrk":
                r = run_wrk(url, seconds, args.connections, args.max_requests, lua)
            else:
                r = run_python_loadgen(url, seconds, args.connections, args.max_requests)
            r["server_cpu_s"] = cpu_seconds(servers) - cpu0
            r["cpu_us_per_req"] = r["server_cpu_s"] / max(1, r["requests"]) * 1e6
            return r

        if not args.restart:  # every configuration's servers start once and stay up for all rounds
            for cfg in configs:
                bring_up(cfg)
            for cfg in configs:
                wait_ready(list(by_cfg[cfg.name].values()))
            if not all([check(cfg) for cfg in configs]):
                print("configuration checks failed; not measuring", file=sys.stderr)
                return 1
            if args.warmup > 0:
                for cfg in configs:
                    load(cfg, args.warmup)
                print(f"  warmed up ({args.warmup}s each)", flush=True)

        results: dict[str, list[dict]] = {c.name: [] for c in configs}
        rng = random.Random(args.seed)
        for rnd in range(args.rounds):
            if len(configs) <= 2:  # AB, BA, AB, ...
                k = rnd % len(configs)
                order = configs[k:] + configs[:k]
            else:  # a new order each round, so no configuration always follows the same one
                order = list(configs)
                rng.shuffle(order)
            for cfg in order:
                if args.restart:  # fresh processes for every measurement: no one server instance's luck
                    wait_ready(list(bring_up(cfg).values()))
                    if not check(cfg):
                        print("configuration checks failed; not measuring", file=sys.stderr)
                        return 1
                    if args.warmup > 0:
                        load(cfg, args.warmup)
                bg = busy_background()
                r = load(cfg, args.seconds)
                r.update(round=rnd, order=order.index(cfg), background=bg, loadavg=os.getloadavg()[0])
                results[cfg.name].append(r)
                print(f"  [round {rnd + 1}/{args.rounds}] {cfg.name:<10} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  cpu {r['cpu_us_per_req']:5.0f} us/req  errors {r['errors']}"
                      + (f"  ({bg})" if bg else ""), flush=True)
                if args.restart:
                    checks[cfg.name]["stats_after"] = {n: _get_json(x.url + "/stats") for n, x in by_cfg[cfg.name].items()}
                    take_down(cfg)
        for cfg in configs:  # spans really exported in the SDK configurations?
            if cfg.name in by_cfg:
                checks[cfg.name]["stats_after"] = {n: _get_json(x.url + "/stats") for n, x in by_cfg[cfg.name].items()}
        summary = summarize(results, [c.name for c in configs])
        md = markdown(summary, meta)
        print()
        print(md)
        exported = {n: [c["stats_after"][h]["spans_exported"] for h in c["stats_after"]] for n, c in checks.items()}
        print(f"\nspans exported by the worker answering /stats after the run (None = no SDK exporter): {exported}")
        meta["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = Path(args.out) if args.out else HERE / "results" / f"chain-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "configs": {c.name: {"launcher": c.launcher, "env": c.env,
                                                                       "hop1_env": c.hop1_env} for c in configs},
                                   "checks": checks, "runs": results, "summary": summary, "markdown": md},
                                  indent=2, default=str))
        print(f"results: {out}")
        if profile_dir is not None:
            stop_servers(all_servers)
            show_profile(profile_dir)
        return 0
    finally:
        stop_servers(all_servers)


def show_profile(d: Path) -> int:
    """Per profile group (config-hop): worker CPU time, the part spent on graybaggage's behalf, top functions.

    graybaggage's share = own time of graybaggage functions + time of short calls (< 100 us each) they make
    into other code (OTel context/baggage, urllib.parse, ...). Long calls made from graybaggage wrappers are
    the wrapped application or HTTP send and are not counted.
    """
    import pstats

    groups: dict[str, list[Path]] = {}
    for f in sorted(d.glob("*.prof")):
        groups.setdefault(f.name.rsplit("-", 1)[0], []).append(f)
    for name, files in groups.items():
        st = pstats.Stats(*map(str, files))
        requests = 0
        own = 0.0
        rows: dict[str, list[float]] = {}
        for (fn, line, func), (_cc, nc, tt, _ct, callers) in st.stats.items():  # type: ignore[attr-defined]
            where = "/".join(fn.split("/")[-2:]) + f":{line}({func})"
            if fn.endswith("chain_app.py") and func in ("hop1", "hop2"):
                requests += nc
            if "/graybaggage/" in fn:
                own += tt
                r = rows.setdefault(where, [0.0, 0.0, 0])
                r[0] += tt
                r[2] += nc
                continue
            for (cfn, _cline, cfunc), edge in callers.items():
                if "/graybaggage/" not in cfn:
                    continue
                e_nc, e_ct = edge[1], edge[3]
                if e_nc and e_ct / e_nc < 100e-6:
                    own += e_ct
                    r = rows.setdefault(f"{where}  <- graybaggage {cfunc}", [0.0, 0.0, 0])
                    r[1] += e_ct
                    r[2] += e_nc
        per = 1e6 / requests if requests else float("nan")
        print(f"\n== {name}: {requests} requests; on graybaggage's behalf {own * per:.1f} us/request "
              "(under cProfile, which inflates small calls several times)")
        for where, (tt, ct, nc) in sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:14]:
            print(f"   {(tt + ct) * per:7.2f} us/req  calls/req {nc / max(1, requests):5.2f}  {where}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        loadgen_child(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
