#!/usr/bin/env python
"""CPU per request of one Flask hop, in-process (no sockets), under each chain.py launcher.

    python benchmarks/hop_cpu.py --rounds 6

A companion to chain.py for machines that are not quiet: each configuration runs benchmarks/chain_app.py
in a fresh process started exactly as chain.py starts its servers (same launcher, same environment), and
drives it with Flask's test client, so no socket, gunicorn or load generator is involved. It reports the
minimum over repeats of process CPU time per request (``time.process_time``), which other load on the
machine inflates far less than throughput. Configurations are interleaved, ``--rounds`` times.

``--hop hop2`` (default) measures the leaf hop (inbound only: no sockets at all). ``--hop hop1`` measures the
calling hop: its handler makes the real requests call to a plain gunicorn hop2 on 127.0.0.1 (started and
stopped here), and only the hop1 process's CPU is counted (inbound + outbound + the requests/urllib3 work).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain  # noqa: E402

CHILD = r'''
import os, sys, time, json
sys.path.insert(0, sys.argv[1])
import chain_app
c = chain_app.app.test_client()
headers = {"x-mse-tag": "gray"}
n, reps, path = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(200):
    r = c.get(path, headers=headers)
    assert r.status_code == 200
    r.close()  # as a WSGI server does: the app's response is closed (graybaggage detaches the lane then)
out = []
for _ in range(reps):
    t0 = time.process_time()
    for _ in range(n):
        c.get(path, headers=headers).close()
    out.append((time.process_time() - t0) / n * 1e6)
print("GBHOP " + json.dumps(out))
'''


def run_one(cfg: chain.Config, shim: Path, child: Path, n: int, reps: int, hop: str, next_url: str) -> list[float]:
    cmd = [sys.executable, str(child), str(HERE), str(n), str(reps), "/work" if hop == "hop2" else "/"]
    cmd, env = chain.launched(cfg, cmd, shim, {"CHAIN_ROLE": hop, "CHAIN_NEXT": next_url})
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("GBHOP ")), None)
    if line is None:
        raise RuntimeError(f"{cfg.name}: no result\n{out.stdout}\n{out.stderr}")
    return json.loads(line[6:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=1000, help="requests per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per process (the minimum is kept)")
    ap.add_argument("--configs", default="plain,lanes,sdk,sdk+gb")
    ap.add_argument("--hop", choices=("hop1", "hop2"), default="hop2")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    configs = [c for c in chain.build_configs() if c.name in names]
    tmp, shim, child, hop2, next_url = chain.hop_setup("gb-hop-cpu-", CHILD, args.hop)
    results: dict[str, list[float]] = {c.name: [] for c in configs}
    try:
        for rnd in range(args.rounds):
            for cfg in configs:
                best = min(run_one(cfg, shim, child, args.requests, args.repeats, args.hop, next_url))
                results[cfg.name].append(best)
                print(f"  [round {rnd + 1}/{args.rounds}] {cfg.name:<10} {best:6.1f} us CPU per {args.hop} request",
                      flush=True)
    finally:
        if hop2 is not None:
            chain.stop_servers([hop2])
    med = {n: statistics.median(v) for n, v in results.items()}
    low = {n: min(v) for n, v in results.items()}
    lines = [f"| config | {args.hop} CPU us/request, median over rounds | lowest round | reference | paired ratio (median) | "
             "delta us (median of paired) | ratio of lowest |", "|---|---:|---:|---|---:|---:|---:|"]
    refs = {"lanes": "plain", "otel-nosdk": "plain", "sdk": "plain", "sdk+gb": "sdk"}
    for n in results:
        ref = refs.get(n)
        if ref in results:
            pairs = list(zip(results[n], results[ref]))
            ratio = statistics.median([a / b for a, b in pairs])
            delta = statistics.median([a - b for a, b in pairs])
            lines.append(f"| {n} | {med[n]:.1f} | {low[n]:.1f} | {ref} | {ratio:.3f} | {delta:+.1f} | "
                         f"{low[n] / low[ref]:.3f} |")
        else:
            lines.append(f"| {n} | {med[n]:.1f} | {low[n]:.1f} | - | - | - | - |")
    md = "\n".join(lines)
    print()
    print(md)
    out = Path(args.out) if args.out else HERE / "results" / f"hop-cpu-{args.hop}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": results, "median": med, "markdown": md, "requests": args.requests,
                               "repeats": args.repeats, "rounds": args.rounds, "hop": args.hop}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
