"""Print a pytest-benchmark JSON file (``--benchmark-json``) as the Markdown table in benchmarks/README.md.

    pytest benchmarks/test_micro.py --benchmark-only --benchmark-json /tmp/micro.json
    python benchmarks/micro_table.py /tmp/micro.json --slim benchmarks/results/micro-<date>.json

``--slim OUT`` also writes the file without pytest-benchmark's raw samples (``stats.data``), which are what
makes such a file tens of megabytes: commit the slim file, never the raw one.
"""
from __future__ import annotations

import json
import sys

# target per call in ns (issue 2: extract <= 3 us, inject <= 2 us; issue 3: route decision <= 1 us)
TARGETS = {
    "test_extract_header": 3000, "test_extract_baggage_only": 3000, "test_extract_baggage_only_3_members": 3000,
    "test_extract_absent": 3000,
    "test_inject_dict": 2000, "test_inject_dict_current_context": 2000, "test_inject_no_lane": 2000,
    "test_decide_hit": 1000, "test_decide_hit_host_port": 1000, "test_decide_hit_fqdn": 1000,
    "test_decide_miss_unknown_host": 1000, "test_decide_unknown_lane": 1000, "test_decide_no_lane": 1000,
}


def main(path: str, slim: str | None = None) -> int:
    data = json.load(open(path))
    if slim:
        for b in data["benchmarks"]:
            b["stats"].pop("data", None)
        with open(slim, "w") as f:
            json.dump(data, f, indent=1)
    rows = ["| group | benchmark | median ns | min ns | target | |", "|---|---|---:|---:|---:|---|"]
    for b in sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["stats"]["median"])):
        name = b["name"]
        med, mn = b["stats"]["median"] * 1e9, b["stats"]["min"] * 1e9
        tgt = TARGETS.get(name)
        verdict = "" if tgt is None else ("met" if med <= tgt else "MISSED")
        rows.append(f"| {b['group']} | {name.removeprefix('test_')} | {med:,.0f} | {mn:,.0f} | "
                    f"{'' if tgt is None else f'<= {tgt:,}'} | {verdict} |")
    print("\n".join(rows))
    mi = data.get("machine_info", {})
    print(f"\n(python {mi.get('python_version')}, {mi.get('cpu', {}).get('brand_raw', '')}, "
          f"{data.get('datetime', '')})")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    out = None
    if "--slim" in args:
        i = args.index("--slim")
        out = args[i + 1] if i + 1 < len(args) else None
        if out is None:
            sys.exit("micro_table.py: --slim needs an output path")
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    sys.exit(main(args[0], out))
