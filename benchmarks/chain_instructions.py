#!/usr/bin/env python
"""Instructions per request of the whole two-hop chain (both gunicorn hops), counted by valgrind.

    python benchmarks/chain_instructions.py --configs plain,lanes,sdk,sdk+gb

chain.py's servers (same launchers, same environment, one sync worker per hop) run under
``valgrind --tool=cachegrind --cache-sim=no``; valgrind follows the launcher's exec and gunicorn's fork, and
prints each process's instruction total when it exits. Each configuration runs twice, with ``--base`` and
with ``--base + --requests`` sequential tagged requests to hop1 on 127.0.0.1; the difference of the totals
over every process of both hops, divided by ``--requests``, is the chain's cost of one request: gunicorn's
parsing and socket work included, kernel time not. Gunicorn's idle loops wake on timers, so the two runs
differ a little in wall time; that noise is reported as the spread over ``--rounds``.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain  # noqa: E402
from hop_instructions import VALGRIND  # noqa: E402

_IREFS = re.compile(r"==\d+== I\s+refs:\s+([\d,]+)")


def _start(cfg: chain.Config, role: str, port: int, next_url: str, shim: Path, logdir: Path) -> subprocess.Popen:
    cmd = [str(chain.BIN / "gunicorn"), "-w", "1", "-k", "sync", "-b", f"{chain.HOST}:{port}", "--chdir", str(HERE),
           "--log-level", "warning", "--timeout", "600", "chain_app:app"]
    cmd, env = chain.launched(cfg, cmd, shim, {"CHAIN_ROLE": role, "CHAIN_NAME": role, "CHAIN_NEXT": next_url,
                                               "PYTHONHASHSEED": "0"})
    cmd = [*VALGRIND, f"--cachegrind-out-file={logdir}/cg.%p", *cmd]
    log = open(logdir / f"{role}.log", "wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _get(url: str, headers: dict, timeout: float = 120) -> None:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
        r.read()


def count(cfg: chain.Config, shim: Path, n: int, workdir: Path) -> int:
    """Total instructions of every process of both hops for ``n`` requests (after start-up)."""
    logdir = Path(tempfile.mkdtemp(prefix=f"{cfg.name.replace('+', '_')}-", dir=workdir))
    p2 = chain.BASE_PORT + 90
    while not (chain._port_free(p2) and chain._port_free(p2 + 1)):
        p2 += 2
    hop2 = _start(cfg, "hop2", p2, "", shim, logdir)
    hop1 = _start(cfg, "hop1", p2 + 1, f"http://{chain.HOST}:{p2}", shim, logdir)
    try:
        deadline = time.monotonic() + 300
        for port in (p2, p2 + 1):  # valgrind makes start-up slow
            while True:
                try:
                    _get(f"http://{chain.HOST}:{port}/stats", {}, timeout=60)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{cfg.name}: servers did not start under valgrind; logs in {logdir}") from None
                    time.sleep(1)
        for _ in range(n):
            _get(f"http://{chain.HOST}:{p2 + 1}/", {"x-mse-tag": chain.LANE})
    finally:
        for p in (hop1, hop2):
            try:
                p.send_signal(signal.SIGTERM)  # gunicorn's graceful stop: workers exit, valgrind prints totals
            except ProcessLookupError:
                pass
        for p in (hop1, hop2):
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    text = "".join((logdir / f"{r}.log").read_text(errors="replace") for r in ("hop1", "hop2"))
    totals = [int(x.replace(",", "")) for x in _IREFS.findall(text)]
    if len(totals) < 4:  # a master and a worker per hop, at least
        raise RuntimeError(f"{cfg.name}: expected valgrind totals for 4 processes, got {len(totals)}; logs in {logdir}")
    return sum(totals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="plain,lanes,sdk,sdk+gb")
    ap.add_argument("--base", type=int, default=20, help="requests in both runs (warm-up)")
    ap.add_argument("--requests", type=int, default=100, help="extra requests in the second run")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="", help="JSON results file (default: none)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("chain_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    known = {c.name: c for c in chain.build_configs()}
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"chain_instructions: unknown configs {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gb-chain-instr-"))
    shim = chain._write_shim(tmp)
    results: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:
            t0 = time.monotonic()
            lo = count(known[name], shim, args.base, tmp)
            hi = count(known[name], shim, args.base + args.requests, tmp)
            results[name].append((hi - lo) / args.requests)
            print(f"  [round {rnd + 1}/{args.rounds}] {name:<10} {results[name][-1] / 1000:8.1f} k instructions per "
                  f"chain request ({time.monotonic() - t0:.0f} s)", flush=True)
    med, md = chain.instructions_table(results, "chain request")
    print()
    print(md)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": results, "median": med, "markdown": md, "base": args.base,
                                              "requests": args.requests}, indent=2))
        print(f"results: {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
