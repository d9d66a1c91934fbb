"""Instructions of the lane table's parse and of the inbound lane memo, counted by valgrind (cachegrind,
no cache simulation): deterministic on a loaded machine, unlike wall-clock timings.

    python benchmarks/table_instructions.py [--out benchmarks/results/table-instructions-<tag>.json]

Rows (each the difference between two runs of one child process, so interpreter start-up cancels out):
- ``json.loads`` of a 1,000-service x 10-lane table (the reference) and ``load_table_text`` of the same text
  (decode + validate + build); the ratio is the parse's cost in units of ``json.loads``.
- per read of a lane header through the inbound memo (``CarrierReader``) after 300 distinct junk lane
  values were read first: a lane that arrives late (the memo is full of junk by then).
Also the retained memory (tracemalloc) of the parsed table.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
mode, n = sys.argv[2], int(sys.argv[3])
from graybaggage.table import load_table_text
from graybaggage.lane import CarrierReader
lanes = {f"lane{l}": {"fallback": "base", "routes": {f"svc{i}.ns{i % 7}:80": f"svc{i}-lane{l}.ns{i % 7}:80"
         for i in range(1000)}} for l in range(10)}
text = json.dumps({"version": 1, "namespace": "default", "lanes": lanes})
if mode == "json":
    for _ in range(n): json.loads(text)
elif mode == "parse":
    for _ in range(n): load_table_text(text)
elif mode == "memo":
    r = CarrierReader("x-mse-tag", None, 8192)
    for i in range(300): r.read([f"junk{i}"], None)
    for _ in range(n): r.read(["gray"], None)
elif mode == "rss":
    import tracemalloc
    tracemalloc.start()
    t = load_table_text(text)
    print("retained", tracemalloc.get_traced_memory()[0], "text", len(text))
'''


def instructions(mode: str, n: int) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CHILD)
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, f.name, str(ROOT), mode, str(n)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    assert m, out.stderr[-2000:]
    return int(m.group(1).replace(",", ""))


def per_op(mode: str, lo: int, hi: int) -> float:
    return (instructions(mode, hi) - instructions(mode, lo)) / (hi - lo)


def main() -> int:
    if shutil.which("valgrind") is None:
        sys.exit("table_instructions: needs valgrind")
    rows = {
        "json_loads_1000x10": per_op("json", 1, 11),
        "load_table_text_1000x10": per_op("parse", 1, 5),
        "late_lane_read_after_junk": per_op("memo", 1000, 11000),
    }
    rows["parse_over_json_loads"] = rows["load_table_text_1000x10"] / rows["json_loads_1000x10"]
    rss = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), "rss", "0"], capture_output=True, text=True,
                         check=True).stdout.split()
    rows["retained_bytes_1000x10"] = int(rss[1])
    rows["table_text_bytes"] = int(rss[3])
    print(json.dumps(rows, indent=1))
    if "--out" in sys.argv:
        Path(sys.argv[sys.argv.index("--out") + 1]).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
