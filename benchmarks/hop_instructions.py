#!/usr/bin/env python
"""Instructions per request of one Flask hop, counted by valgrind, under each chain.py launcher.

    python benchmarks/hop_instructions.py --hop hop1 --configs sdk,sdk-2,sdk+gb

The deterministic companion of ``hop_cpu.py``: the same in-process child (benchmarks/chain_app.py driven by
Flask's test client, started exactly as chain.py starts its servers), run under
``valgrind --tool=cachegrind --cache-sim=no``, which counts executed instructions whatever else the machine
is doing. Each configuration runs twice, with ``--base`` and with ``--base + --requests`` requests after the
warm-up; the difference divided by ``--requests`` is the cost of one request, free of start-up costs.
``--hop hop1`` makes the real ``requests`` call to a plain gunicorn hop2 on 127.0.0.1 (outside valgrind).

Instructions are not time (a dict lookup and a syscall differ in cycles per instruction), but a change
that removes work removes instructions, and the count repeats to within a few hundred per request, so
steps of 1 % are visible on a machine too busy for the chain's timing.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain  # noqa: E402

CHILD = r'''
import sys
sys.path.insert(0, sys.argv[1])
import chain_app
c = chain_app.app.test_client()
headers = {"x-mse-tag": "gray"}
n, path = int(sys.argv[2]), sys.argv[3]
for _ in range(n):
    assert c.get(path, headers=headers).status_code == 200
'''
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def count(cfg: chain.Config, shim: Path, child: Path, n: int, hop: str, next_url: str, workdir: Path) -> int:
    """Instructions executed by the child process (after any exec) for ``n`` requests."""
    cmd = [sys.executable, str(child), str(HERE), str(n), "/work" if hop == "hop2" else "/"]
    if cfg.launcher == "otel":
        cmd = [str(chain.BIN / "opentelemetry-instrument"), *cmd]
    elif cfg.launcher == "gb":
        cmd = [str(chain.BIN / "graybaggage"), "run", "--", *cmd]
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
           f"--cachegrind-out-file={workdir}/cg.%p", *cmd]
    env = chain._clean_env()
    env.update(cfg.env)
    env["CHAIN_ROLE"] = hop
    env["CHAIN_NEXT"] = next_url
    env["PYTHONHASHSEED"] = "0"  # same dict layouts every run
    if cfg.shim:
        env["PYTHONPATH"] = str(shim)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    refs = _IREFS.findall(out.stderr)
    if out.returncode != 0 or not refs:
        raise RuntimeError(f"{cfg.name}: valgrind run failed (rc {out.returncode})\n{out.stderr[-3000:]}")
    return int(refs[-1].replace(",", ""))  # the last process image: the Python program itself


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="plain,lanes,sdk,sdk+gb")
    ap.add_argument("--hop", choices=("hop1", "hop2"), default="hop1")
    ap.add_argument("--base", type=int, default=50, help="warm-up requests in both runs")
    ap.add_argument("--requests", type=int, default=200, help="extra requests in the second run")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="", help="JSON results file (default: none)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("hop_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    known = {c.name: c for c in chain.build_configs()}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"hop_instructions: unknown configs {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    configs = [known[n] for n in names]
    tmp = Path(tempfile.mkdtemp(prefix="gb-hop-instr-"))
    shim = chain._write_shim(tmp)
    child = tmp / "child.py"
    child.write_text(CHILD)
    results: dict[str, list[float]] = {c.name: [] for c in configs}
    hop2 = None
    next_url = ""
    if args.hop == "hop1":
        port = 18190
        while not chain._port_free(port):
            port += 1
        hop2 = chain.start_server(known["plain"], "hop2", "hop2", port, "", 2, shim, tmp, {})
        chain.wait_ready([hop2])
        next_url = hop2.url
    try:
        for rnd in range(args.rounds):
            for cfg in configs:
                t0 = time.monotonic()
                lo = count(cfg, shim, child, args.base, args.hop, next_url, tmp)
                hi = count(cfg, shim, child, args.base + args.requests, args.hop, next_url, tmp)
                per = (hi - lo) / args.requests
                results[cfg.name].append(per)
                print(f"  [round {rnd + 1}/{args.rounds}] {cfg.name:<10} {per / 1000:8.1f} k instructions per "
                      f"{args.hop} request ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        if hop2 is not None:
            chain.stop_servers([hop2])
    med = {n: statistics.median(v) for n, v in results.items()}
    refs = {"lanes": "plain", "plain-2": "plain", "otel-nosdk": "plain", "sdk": "plain", "sdk-2": "sdk", "sdk+gb": "sdk"}
    lines = [f"| config | k instructions per {args.hop} request | reference | ratio | delta k |", "|---|---:|---|---:|---:|"]
    for n in results:
        ref = refs.get(n)
        if ref in med:
            lines.append(f"| {n} | {med[n] / 1000:.1f} | {ref} | {med[n] / med[ref]:.4f} | {(med[n] - med[ref]) / 1000:+.1f} |")
        else:
            lines.append(f"| {n} | {med[n] / 1000:.1f} | - | - | - |")
    md = "\n".join(lines)
    print()
    print(md)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": results, "median": med, "markdown": md, "hop": args.hop,
                                              "base": args.base, "requests": args.requests}, indent=2))
        print(f"results: {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
