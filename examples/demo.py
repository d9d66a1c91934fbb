"""The seed scenario on one machine: a -> b -> c, with gray versions of a and c, behind an edge.

    ./scripts/demo            # start everything, send the seed's requests, print the chains, stop
    ./scripts/demo --serve    # the same, then keep running for you to curl until Ctrl-C

Every service is a plain Flask app (examples/services/app.py) started with ``graybaggage run``; the edge
dyes ``User-Agent: xiaoming`` into lane gray and drops lane tags sent from outside; a lane-table file
(what the controller publishes in Kubernetes) names the gray instances of a and c.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE / "services" / "app.py"
SEED_RULE = [{"lane": "gray", "conditions": [
    {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]}]
# (name, service, version, lane, calls)
SERVICES = [
    ("c", "c", "2.0.0", "base", None), ("c-gray", "c", "2.0.1", "gray", None),
    ("b", "b", "2.0.0", "base", "c"),
    ("a", "a", "2.0.0", "base", "b"), ("a-gray", "a", "2.0.1", "gray", "b"),
    ("edge", "edge", "1.0.0", "base", "a"),
]
_procs: list[subprocess.Popen] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_all() -> None:
    for p in _procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for p in _procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    _procs.clear()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not healthy after {timeout:.0f}s:\n{log.read_text()[-2000:]}")


def _get(url: str, headers: dict[str, str]) -> dict:
    req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.loads(r.read())


def _graybaggage() -> list[str]:
    exe = Path(sys.executable).parent / "graybaggage"
    return [str(exe), "run", "--"] if exe.exists() else [sys.executable, "-m", "graybaggage.cli", "run", "--"]


def start(workdir: Path, out=sys.stdout) -> dict[str, str]:
    ports = {name: _free_port() for name, *_ in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    table = {"version": 1, "lanes": {"gray": {"fallback": "base", "routes": {
        f"127.0.0.1:{ports['a']}": f"127.0.0.1:{ports['a-gray']}",
        f"127.0.0.1:{ports['c']}": f"127.0.0.1:{ports['c-gray']}",
    }}}}
    table_file = workdir / "lanes.json"
    table_file.write_text(json.dumps(table, indent=2))
    print(f"lane table: {table_file} (gray: a -> a-gray, c -> c-gray; b has no gray instance)", file=out)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAYBAGGAGE_", "OTEL_"))}
    for i, (name, service, version, lane, calls) in enumerate(SERVICES, 1):
        env = dict(base_env, SERVICE_NAME=service, SERVICE_VERSION=version, PORT=str(ports[name]),
                   NEXT=urls[calls] if calls else "", GRAYBAGGAGE_LANE=lane,
                   GRAYBAGGAGE_LANE_TABLE_FILE=str(table_file), PYTHONUNBUFFERED="1")
        if name == "edge":
            env.update(GRAYBAGGAGE_EDGE="1", GRAYBAGGAGE_DYE_RULES=json.dumps(SEED_RULE))
        log = workdir / f"{name}.log"
        # Ctrl-C / SIGTERM must not land between starting a process and recording it (it would be orphaned):
        # hold them until the process is in _procs; a pending one is delivered right after.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            with open(log, "wb") as f:
                proc = subprocess.Popen(_graybaggage() + [sys.executable, str(APP)], env=env, stdout=f,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        # the child must not inherit the held signals
                                        preexec_fn=lambda held=held: signal.pthread_sigmask(signal.SIG_SETMASK, held))
            _procs.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        print(f"[{i}/{len(SERVICES)}] starting {name:<7} {service} v{version} lane={lane:<5} on {urls[name]} ...",
              end="", flush=True, file=out)
        t0 = time.monotonic()
        _wait_healthy(urls[name], proc, log)
        print(f" up in {time.monotonic() - t0:.1f}s", file=out, flush=True)
    return urls


def run(serve: bool, out=sys.stdout) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="graybaggage-demo-"))
    atexit.register(_stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    # Ctrl-C stops the demo even when it was started from a script in the background: a shell without job
    # control starts background commands with SIGINT ignored, and Python then keeps it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print("graybaggage demo: the seed scenario (a -> b -> c), gray versions of a and c", file=out)
        urls = start(workdir, out)
        edge = urls["edge"]
        cases = [
            ("xiaoming (User-Agent: xiaoming)", {"User-Agent": "xiaoming"}),
            ("anyone else", {"User-Agent": "curl/8"}),
            ("forged tag (x-mse-tag: gray from outside)", {"User-Agent": "curl/8", "x-mse-tag": "gray"}),
        ]
        print("", file=out)
        results = []
        for label, headers in cases:
            chain = _get(edge + "/a", headers)["chain"]
            results.append((label, chain))
            print(f"  {label:<44} {chain}", file=out)
        gray_ok = results[0][1] == "a[gray] -> b[base] -> c[gray]"
        base_ok = all(chain == "a[base] -> b[base] -> c[base]" for _, chain in results[1:])
        print("\nsummary:", file=out)
        print(f"  lane gray  : {'OK ' if gray_ok else 'WRONG'} xiaoming was served by the gray a and c, and by base b "
              "(b has no gray version)", file=out)
        print(f"  base       : {'OK ' if base_ok else 'WRONG'} everyone else, forged tags included, never touched a gray "
              "instance", file=out)
        if serve:
            print("\nEverything keeps running. Try:", file=out)
            print(f"  curl -H 'User-Agent: xiaoming' {edge}/a", file=out)
            print(f"  curl {edge}/a", file=out)
            for name, url in urls.items():
                print(f"  {name:<7} {url}", file=out)
            print(f"  logs: {workdir}    lane table (edit it live): {workdir / 'lanes.json'}", file=out)
            print("Press Ctrl-C to stop.", file=out, flush=True)
            # Not signal.pause(): a SIGINT that arrives between Python's last signal check and the pause()
            # system call is handled at C level but wakes nothing, and the demo would sleep until a second
            # signal. A short sleep loop lets the KeyboardInterrupt surface within 0.2 s whenever it lands.
            while True:
                time.sleep(0.2)
        return 0 if gray_ok and base_ok else 1
    except KeyboardInterrupt:
        print("\nstopping ...", file=out)
        return 130
    except Exception as exc:  # noqa: BLE001 - report and clean up
        print(f"\ndemo failed: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        _stop_all()
        print("all demo processes stopped.", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graybaggage demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args(argv)
    return run(args.serve)


if __name__ == "__main__":
    sys.exit(main())
