"""Per-hop latency and throughput of the seed's a -> b -> c through the real test data plane (Service VIPs,
kube-proxy's nftables rules, cluster DNS, pods as processes), plain vs graybaggage lanes-only.

    python benchmarks/dataplane.py --rounds 6 --seconds 8 --out benchmarks/results/dataplane-<date>.json

Two namespaces on one real node run the same manifests (examples/k8s/apps.yaml, one replica per service):
`plain` with the services started as `python app.py` (no graybaggage), `lanes` with the example image's
`graybaggage run` (auto mode resolves to lanes-only: no exporter) and a lane table ConfigMap watched by every
pod. wrk runs inside the node's network namespace against each Service VIP: c (1 hop), b (2), a (3); and
`lanes+tag` sends x-mse-tag: gray (the lane is carried at every hop; the table routes nothing, so the
destinations are the same). Every round runs each target for each configuration back to back, in an order
that alternates between rounds; the ratios lanes/plain are taken per round (paired) and reported as median
and range. Bounded: rounds x targets x configurations x seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.k8s.cluster import ControlPlane, ensure_binaries  # noqa: E402
from tests.k8s.dataplane import DataPlane, ensure_dataplane_binaries, example_images  # noqa: E402

CONFIGS = ("plain", "lanes", "lanes+tag")
TARGETS = {"c": 1, "b": 2, "a": 3}   # service -> hops behind its VIP


def images() -> dict:
    out = example_images()
    plain = dict(out["graybaggage-example:0.1.0"])
    venv_bin = Path(sys.executable).parent
    plain["entrypoint"] = [str(venv_bin / "python"), "app.py"]
    out["graybaggage-example-plain:0.1.0"] = plain
    return out


def manifests(ns: str, image: str) -> str:
    text = (ROOT / "examples" / "k8s" / "apps.yaml").read_text()
    text = text.replace("image: graybaggage-example:0.1.0", f"image: {image}")
    return re.sub(r"replicas: 2", "replicas: 1", text)


def deploy(cp: ControlPlane, dp: DataPlane, ns: str, image: str) -> None:
    dp.make_namespace(ns)
    cp.kubectl("apply", "-n", ns, "-f", "-", input=manifests(ns, image))
    if ns == "lanes":
        table = {"version": 1, "namespace": ns, "revision": "1",
                 "lanes": {"gray": {"fallback": "base", "routes": {}}}}
        cp.kubectl("create", "configmap", "graybaggage-lanes", "-n", ns,
                   f"--from-literal=lanes.json={json.dumps(table)}")
    cp.kubectl("wait", "-n", ns, "--for=condition=Available", "deployment", "--all", "--timeout=300s")


def vip(cp: ControlPlane, ns: str, svc: str) -> str:
    return json.loads(cp.kubectl("get", "svc", svc, "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(dp: DataPlane, url: str, seconds: float, connections: int, header: str | None) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    if header:
        cmd += ["-H", header]
    out = dp.exec_in_node(*cmd, url).stdout
    lat = {m.group(1): float(m.group(2)) * _UNIT[m.group(3)]
           for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"p50_ms": lat["50"], "p99_ms": lat["99"], "rps": rps, "errors": errors.group(0) if errors else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if not subprocess.run(["which", "wrk"], capture_output=True).stdout:
        sys.exit("needs wrk (apt-get install wrk)")
    cp = ControlPlane(ensure_binaries()).start()
    dp = None
    rows: list[dict] = []
    try:
        dp = DataPlane(cp, ensure_dataplane_binaries(), images=images()).start()
        deploy(cp, dp, "plain", "graybaggage-example-plain:0.1.0")
        deploy(cp, dp, "lanes", "graybaggage-example:0.1.0")
        urls = {(cfg, svc): f"http://{vip(cp, 'plain' if cfg == 'plain' else 'lanes', f'spring-cloud-{svc}')}:20001/x"
                for cfg in CONFIGS for svc in TARGETS}
        for cfg in CONFIGS:             # warm-up: connections, imports, the lane table
            for svc in TARGETS:
                wrk(dp, urls[cfg, svc], 2, args.connections, "x-mse-tag: gray" if cfg == "lanes+tag" else None)
        for rnd in range(args.rounds):
            order = CONFIGS if rnd % 2 == 0 else tuple(reversed(CONFIGS))
            for svc in TARGETS:
                for cfg in order:
                    r = wrk(dp, urls[cfg, svc], args.seconds, args.connections,
                            "x-mse-tag: gray" if cfg == "lanes+tag" else None)
                    rows.append({"round": rnd, "service": svc, "hops": TARGETS[svc], "config": cfg, **r})
                    print(f"round {rnd} {svc} ({TARGETS[svc]} hops) {cfg:10} p50 {r['p50_ms']:7.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  {r['rps']:8.1f} req/s {r['errors']}", flush=True)
    finally:
        if dp:
            dp.stop()
        cp.stop()
    report = summarise(rows)
    print(json.dumps(report["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                              time.gmtime()), "load": os.getloadavg(), **report}, indent=1))
    return 0


def summarise(rows: list[dict]) -> dict:
    summary: dict = {}
    for svc, hops in TARGETS.items():
        by = {cfg: [r for r in rows if r["service"] == svc and r["config"] == cfg] for cfg in CONFIGS}
        s: dict = {"hops": hops}
        for cfg, rs in by.items():
            s[cfg] = {k: round(statistics.median(r[k] for r in rs), 3) for k in ("p50_ms", "p99_ms", "rps")}
        for cfg in ("lanes", "lanes+tag"):
            for k in ("p50_ms", "p99_ms", "rps"):
                ratios = [a[k] / b[k] for a, b in zip(by[cfg], by["plain"]) if b[k]]
                s[f"{cfg}/plain {k}"] = {"median": round(statistics.median(ratios), 3),
                                         "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
        summary[svc] = s
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    sys.exit(main())
