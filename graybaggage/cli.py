"""The ``graybaggage`` command: run a program with lanes on, and show/explain the lane table."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from graybaggage import config


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("graybaggage run: missing the program to run, e.g. graybaggage run -- python app.py", file=sys.stderr)
        return 2
    distro = os.environ.get("OTEL_PYTHON_DISTRO")
    if distro and distro != "graybaggage":
        print(f"graybaggage run: OTEL_PYTHON_DISTRO={distro} is set; keeping it (the graybaggage instrumentor "
              "still loads, but the lanes-only mode does not apply)", file=sys.stderr)
    import shutil

    executable = shutil.which(command[0])
    if executable is None:
        print(f"graybaggage run: {command[0]!r}: command not found", file=sys.stderr)
        return 127
    os.environ["PYTHONPATH"] = run_pythonpath(os.environ.get("PYTHONPATH"), os.getcwd())
    os.execl(executable, executable, *command[1:])
    return 1  # not reached: execl replaces this process or raises


def run_pythonpath(current: str | None, cwd: str) -> str:
    """PYTHONPATH for ``graybaggage run``: graybaggage's start-up hook first, then (as opentelemetry-instrument
    does, for programs started through their own executable, like Django's manage.py) the working directory,
    then what was there. No ``OTEL_PYTHON_DISTRO`` is left in the environment: the hook chooses the distro."""
    from graybaggage import _auto

    hook = os.path.dirname(os.path.abspath(_auto.__file__))
    parts = [p for p in (current or "").split(os.pathsep) if p and p != hook]
    if cwd not in parts:
        parts.insert(0, cwd)
    return os.pathsep.join([hook, *parts])


def _load_runtime_source(settings: config.Settings):  # type: ignore[no-untyped-def]
    from graybaggage import _runtime
    from graybaggage.sources import ConfigMapSource

    src = _runtime.table_source(settings)
    if isinstance(src, ConfigMapSource):
        try:
            src.run_once()
        except Exception as exc:  # noqa: BLE001 - reported to the user
            src.error = f"{exc.__class__.__name__}: {exc}"
    return src


def _cmd_routes(args: argparse.Namespace) -> int:
    settings = config.load_settings()
    src = _load_runtime_source(settings)
    table = src.value
    if args.json:
        print(json.dumps({"source": src.kind, "detail": src.detail, "error": src.error, "table": table.raw}, indent=2))
        return 0 if src.error is None else 1
    print(f"source:    {src.kind} {src.detail}")
    print(f"status:    {'ERROR: ' + src.error if src.error else 'ok'}")
    print(f"namespace: {table.namespace or settings.namespace}   revision: {table.revision or '-'}")
    rows = table.describe()
    if not table.lanes:
        print("lanes:     (none: every call stays on base)")
    else:
        width = max([len("DESTINATION")] + [len(r[2]) for r in rows])
        print(f"\n{'LANE':<12} {'FALLBACK':<9} {'DESTINATION':<{width}}  TARGET")
        for lane, fallback, dest, target in rows:
            print(f"{lane:<12} {fallback:<9} {dest:<{width}}  {target}")
        for name in sorted(set(table.lanes) - {r[0] for r in rows}):
            print(f"{name:<12} {table.lanes[name].fallback:<9} {'(no routes)':<{width}}")
    return 0 if src.error is None else 1


def _cmd_route(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from graybaggage.integrations._client import DEFAULT_PORTS, rewrite
    from graybaggage.lane import check_lane

    settings = config.load_settings()
    lane, problem = check_lane(args.lane, settings.allowed_lanes)
    if lane is None:
        print(f"lane {args.lane!r} is rejected ({problem}): the request would be base and go to {args.url}")
        return 0
    try:
        u = urlsplit(args.url)
        host, port = u.hostname, u.port or DEFAULT_PORTS.get(u.scheme)
    except ValueError as exc:
        print(f"graybaggage route: bad URL {args.url!r}: {exc}", file=sys.stderr)
        return 2
    if not host:
        print(f"graybaggage route: {args.url!r} has no host", file=sys.stderr)
        return 2
    src = _load_runtime_source(settings)
    table = src.value
    route = table.decide(lane, host, port, settings.namespace)
    print(f"lane table: {src.kind} {src.detail}{' (ERROR: ' + src.error + ')' if src.error else ''}")
    if lane not in table.lanes:
        print(f"lane {lane!r} is not in the table: stays on base -> {args.url} (the lane tag is still forwarded)")
    elif route is None:
        print(f"lane {lane!r} has no instance of {host}:{port}: stays on base -> {args.url} "
              "(the lane tag is still forwarded)")
    else:
        print(f"lane {lane!r}: {route.destination} -> {route.authority}  => {rewrite(u, route)}")
        print(f"fallback: {route.fallback} ("
              + ("on connect failure the call goes to base, tag kept" if route.fallback == "base"
                 else "on connect failure the call fails with an error naming the lane and target") + ")")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from graybaggage_demo import main as demo_main  # type: ignore[import-not-found]
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
        try:
            from demo import main as demo_main  # type: ignore[import-not-found,no-redef]
        except ImportError:
            print("graybaggage demo: run it from a checkout (examples/demo.py)", file=sys.stderr)
            return 2
    return int(demo_main(args.demo_args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graybaggage", description="Traffic lanes for Python services.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run a program with lanes switched on (like opentelemetry-instrument)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- program args...")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("routes", help="print the active lane table and its source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_routes)
    p = sub.add_parser("route", help="explain where a call in a lane would go")
    p.add_argument("--lane", required=True)
    p.add_argument("url")
    p.set_defaults(func=_cmd_route)
    p = sub.add_parser("demo", help="run the seed scenario locally (a -> b -> c with gray a and c)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
