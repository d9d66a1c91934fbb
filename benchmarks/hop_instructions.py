#!/usr/bin/env python
"""Instructions per request of one Flask hop, counted by valgrind, under each chain.py launcher.

    python benchmarks/hop_instructions.py --hop hop1 --configs sdk,sdk-2,sdk+gb

The deterministic companion of ``hop_cpu.py``: the same in-process child (benchmarks/chain_app.py driven by
Flask's test client, started exactly as chain.py starts its servers), run under
``valgrind --tool=cachegrind --cache-sim=no``, which counts executed instructions whatever else the machine
is doing. Each configuration runs twice, with ``--base`` warm-up requests only and with ``--requests`` more after them
(after a full collection and ``gc.freeze()``, so a full collection's luck does not decide the count); the
difference divided by ``--requests`` is the cost of one request, free of start-up costs.
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
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chain  # noqa: E402

CHILD = r'''
import gc, sys
sys.path.insert(0, sys.argv[1])
import chain_app
import os
if os.environ.get("GB_BENCH_SESSION_HEADERS"):  # an attribution aid: the plain app forwarding the lane by hand
    chain_app._session.headers.update({"x-mse-tag": "gray", "baggage": "x-mse-tag=gray"})
c = chain_app.app.test_client()
headers = {"x-mse-tag": "gray"}
base, extra, path = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(base):
    r = c.get(path, headers=headers)
    assert r.status_code == 200
    r.close()  # as a WSGI server does: the app's response is closed (graybaggage detaches the lane then)
# Full collections sweep the whole heap, so whether one falls inside a short measured window is luck (it
# moved a configuration by 130k instructions per request over 100 requests). Freeze what start-up and the
# warm-up left; young collections, which scale with what each request allocates, still run and count.
gc.collect()
gc.freeze()
for _ in range(extra):
    r = c.get(path, headers=headers)
    assert r.status_code == 200
    r.close()  # as a WSGI server does: the app's response is closed (graybaggage detaches the lane then)
'''
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")
VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes"]


def count(cfg: chain.Config, shim: Path, child: Path, base: int, extra: int, hop: str, next_url: str,
          workdir: Path) -> int:
    """Instructions executed by the child process (after any exec) for ``base`` + ``extra`` requests."""
    cmd = [sys.executable, str(child), str(HERE), str(base), str(extra), "/work" if hop == "hop2" else "/"]
    cmd, env = chain.launched(cfg, cmd, shim, {"CHAIN_ROLE": hop, "CHAIN_NEXT": next_url,
                                               "PYTHONHASHSEED": "0"})  # same dict layouts every run
    cmd = [*VALGRIND, f"--cachegrind-out-file={workdir}/cg.%p", *cmd]
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
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra environment variable for every configuration (repeatable), e.g. to measure "
                         "what one more variable costs, or to switch a graybaggage integration off")
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
    extra_env = dict(e.split("=", 1) for e in args.env)
    for cfg in configs:
        cfg.env = {**cfg.env, **extra_env}
    tmp, shim, child, hop2, next_url = chain.hop_setup("gb-hop-instr-", CHILD, args.hop)
    results: dict[str, list[float]] = {c.name: [] for c in configs}
    try:
        for rnd in range(args.rounds):
            for cfg in configs:
                t0 = time.monotonic()
                lo = count(cfg, shim, child, args.base, 0, args.hop, next_url, tmp)
                hi = count(cfg, shim, child, args.base, args.requests, args.hop, next_url, tmp)
                per = (hi - lo) / args.requests
                results[cfg.name].append(per)
                print(f"  [round {rnd + 1}/{args.rounds}] {cfg.name:<10} {per / 1000:8.1f} k instructions per "
                      f"{args.hop} request ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        if hop2 is not None:
            chain.stop_servers([hop2])
    med, md = chain.instructions_table(results, f"{args.hop} request")
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
