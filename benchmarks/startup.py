"""Start-up cost of ``graybaggage run``: time to first response and RSS over plain ``python``.

One Flask app (tests/apps/hop.py, HOP_KIND=flask, wsgiref; it never imports graybaggage) started on a free
127.0.0.1 port, over and over, configurations interleaved round by round so a busy machine hits them alike:

  plain       python hop.py
  gb          graybaggage run -- python hop.py            (this checkout)
  gb-before   the same with an older graybaggage (``--before DIR``: a directory holding its ``graybaggage/``
              package, e.g. ``git archive main graybaggage | tar -x -C /tmp/gb-before``)

Time to first response: from spawning the process to the first HTTP 200 on ``/x`` (polled every 5 ms). RSS:
``VmRSS`` of the server after ``--requests`` sequential requests. Medians over rounds, with the spread (min-max)
and each configuration's median difference to plain. The test environment has opentelemetry-distro
installed, as an OpenTelemetry shop would; no OTEL_* or GRAYBAGGAGE_* variable is set (lanes mode).

    python benchmarks/startup.py --rounds 10 --before /tmp/gb-before --json benchmarks/results/startup.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOP = ROOT / "tests" / "apps" / "hop.py"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(config: str) -> list[str]:
    app = [str(BIN / "python"), str(HOP)]
    return app if config == "plain" else [str(BIN / "python"), "-m", "graybaggage.cli", "run", "--", *app]


def environment(config: str, port: int, before: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GRAYBAGGAGE_", "HOP_"))
           and k != "PYTHONPATH"}
    env.update({"HOP_KIND": "flask", "HOP_PORT": str(port), "HOP_NAME": "startup",
                "GRAYBAGGAGE_STATUS_DIR": "off" if config != "plain" else "", "PATH": f"{BIN}:{env.get('PATH', '')}"})
    if not env["GRAYBAGGAGE_STATUS_DIR"]:
        del env["GRAYBAGGAGE_STATUS_DIR"]
    if config == "gb-before":
        env["PYTHONPATH"] = before or ""
        env.pop("GRAYBAGGAGE_STATUS_DIR", None)  # the older code does not know it (it would warn)
    elif config == "gb":
        env["PYTHONPATH"] = str(ROOT)
    return env


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process used so far (robust where wall time swings on a busy machine)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one_run(config: str, before: str | None, requests: int) -> tuple[float, int, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as cwd:  # a neutral cwd: graybaggage run puts the cwd on PYTHONPATH
        started = time.perf_counter()
        proc = subprocess.Popen(command(config), env=environment(config, port, before), cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/x"
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{config} exited with {proc.returncode}")
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
            first = time.perf_counter() - started
            cpu = cpu_s(proc.pid)
            for _ in range(requests):
                with urllib.request.urlopen(url, timeout=5) as r:
                    r.read()
            return first, rss_kib(proc.pid), cpu
        finally:
            proc.kill()
            proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--before", help="directory holding an older graybaggage package (adds the gb-before row)")
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)
    configs = ["plain", "gb"] + (["gb-before"] if args.before else [])
    runs: dict[str, list[tuple[float, int, float]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else list(reversed(configs))
        for c in order:
            runs[c].append(one_run(c, args.before, args.requests))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{c} {runs[c][-1][0] * 1000:.0f} ms (cpu {runs[c][-1][2] * 1000:.0f} ms) {runs[c][-1][1] / 1024:.1f} MiB"
            for c in configs), file=sys.stderr)

    def column(c: str, i: int, scale: float) -> list[float]:
        return [r[i] * scale for r in runs[c]]

    print(f"{'config':<10} {'first response ms':>18} {'over plain':>10}   {'CPU to first ms':>16} {'over plain':>10}"
          f"   {'RSS MiB':>14} {'over plain':>10}")
    base = {i: statistics.median(column("plain", i, s)) for i, s in ((0, 1000), (2, 1000), (1, 1 / 1024))}
    for c in configs:
        cells = []
        for i, scale, fmt in ((0, 1000, ".0f"), (2, 1000, ".0f"), (1, 1 / 1024, ".1f")):
            xs = column(c, i, scale)
            med = statistics.median(xs)
            cells.append(f"{med:{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}}) {med - base[i]:+10{fmt}}")
        print(f"{c:<10} " + "   ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "requests": args.requests,
                                               "runs": {c: [{"first_response_s": t, "rss_kib": m, "cpu_s": u}
                                                            for t, m, u in v] for c, v in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
