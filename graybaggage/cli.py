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


class _View:
    """What ``routes`` / ``route`` explain: a lane table, where it came from and its state; either read by the
    CLI itself from its own environment, or reported by a running process (its status file)."""

    def __init__(self, table, kind: str, detail: str, error: str | None, namespace: str,  # type: ignore[no-untyped-def]
                 process: dict | None = None) -> None:
        self.table, self.kind, self.detail, self.error = table, kind, detail, error
        self.namespace = namespace
        self.process = process

    @property
    def origin(self) -> str:
        if self.process is None:
            return "read by this command from its own environment"
        return (f"as routed by the running process {self.process['pid']} ({' '.join(self.process.get('argv') or [])[:80]}), "
                f"status {self.process['_path']}")


def _local_view(settings: config.Settings) -> _View:
    src = _load_runtime_source(settings)
    return _View(src.value, src.kind, src.detail, src.error, settings.namespace)


def _process_view(settings: config.Settings, pid: int, status_dir: str | None) -> _View:
    from graybaggage import _status
    from graybaggage.table import load_table_text

    directory = status_dir or settings.status_dir
    if not directory:
        raise _Usage("no status directory (GRAYBAGGAGE_STATUS_DIR=off); pass --status-dir")
    doc = _status.read(directory, pid)
    if doc is None:
        running = [str(d["pid"]) for d in _status.running(directory)]
        raise _Usage(f"no running graybaggage process {pid} in {directory}"
                     + (f" (running: {', '.join(running)})" if running else " (none running there)"))
    t = doc["lane_table"]
    table = load_table_text(json.dumps(t["table"]), doc.get("namespace") or settings.namespace)
    return _View(table, t["source"], t["detail"], t["error"], doc.get("namespace") or settings.namespace, doc)


class _Usage(Exception):
    pass


def _view(args: argparse.Namespace, settings: config.Settings) -> _View:
    if getattr(args, "pid", None) is not None:
        return _process_view(settings, args.pid, args.status_dir)
    return _local_view(settings)


def _hint_running(settings: config.Settings, args: argparse.Namespace) -> None:
    from graybaggage import _status

    if getattr(args, "pid", None) is not None:
        return
    directory = args.status_dir or settings.status_dir
    running = _status.running(directory) if directory else []
    if running:
        pids = ", ".join(str(d["pid"]) for d in running[:5])
        print(f"(running graybaggage processes here: {pids}; add --pid PID to see what one of them routes on)")


def _cmd_routes(args: argparse.Namespace) -> int:
    settings = config.load_settings()
    view = _view(args, settings)
    table = view.table
    if args.json:
        from graybaggage._status import table_document

        print(json.dumps({"source": view.kind, "detail": view.detail, "error": view.error,
                          "pid": view.process["pid"] if view.process else None,
                          "table": table_document(table)}, indent=2))
        return 0 if view.error is None else 1
    print(f"source:    {view.kind} {view.detail}".rstrip())
    print(f"           ({view.origin})")
    status = "ok"
    if view.error:
        status = "ERROR: " + view.error
        if view.process is not None and table.lanes:
            status += " (the process keeps routing on its last good table, below)"
    print(f"status:    {status}")
    print(f"namespace: {table.namespace or view.namespace}   revision: {table.revision or '-'}")
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
    _hint_running(settings, args)
    return 0 if view.error is None else 1


def parse_target(text: str) -> tuple[str, str, int | None]:
    """``(url, host, port)`` for ``route``: a URL, or ``host:port`` / ``host`` meaning ``http://host:port``.
    Raises ValueError with the reason."""
    from urllib.parse import urlsplit

    from graybaggage.integrations._client import DEFAULT_PORTS

    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    u = urlsplit(url)
    if u.scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {u.scheme!r} (use http or https)")
    port = u.port  # raises ValueError for a bad port
    if not u.hostname:
        raise ValueError("no host in it")
    import re

    if not re.fullmatch(r"[A-Za-z0-9._:%-]+", u.hostname):
        raise ValueError(f"{u.hostname!r} is not a host name")
    return url, u.hostname, port or DEFAULT_PORTS.get(u.scheme)


def _cmd_route(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from graybaggage.integrations._client import rewrite
    from graybaggage.lane import check_lane

    settings = config.load_settings()
    lane, problem = check_lane(args.lane, settings.allowed_lanes)
    try:
        url, host, port = parse_target(args.url)
    except ValueError as exc:
        print(f"graybaggage route: bad URL {args.url!r}: {exc}; give a URL such as http://spring-cloud-c:20001/c "
              "or host:port", file=sys.stderr)
        return 2
    if lane is None:
        print(f"lane {args.lane!r} is rejected ({problem}): the request would be base and go to {url}")
        return 0
    view = _view(args, settings)
    table = view.table
    print(f"lane table: {view.kind} {view.detail} ({view.origin})".replace("  ", " "))
    if view.error:
        if view.process is None:
            print(f"ERROR: the lane table cannot be read ({view.error}). A running service keeps routing on its last "
                  "good table: ask it with --pid PID (see graybaggage status)")
            _hint_running(settings, args)
            return 1
        print(f"note: its source reports an error ({view.error}); it routes on its last good table"
              + (f" (revision {table.revision})" if table.revision else ""))
    route = table.decide(lane, host, port, view.namespace)
    if lane not in table.lanes:
        print(f"lane {lane!r} is not in the table: stays on base -> {url} (the lane tag is still forwarded)")
    elif route is None:
        print(f"lane {lane!r} has no instance of {host}:{port}: stays on base -> {url} "
              "(the lane tag is still forwarded)")
    else:
        print(f"lane {lane!r}: {route.destination} -> {route.authority}  => {rewrite(urlsplit(url), route)}")
        print(f"fallback: {route.fallback} ("
              + ("on connect failure the call goes to base, tag kept" if route.fallback == "base"
                 else "on connect failure the call fails with an error naming the lane and target") + ")")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from graybaggage import _status

    settings = config.load_settings()
    directory = args.status_dir or settings.status_dir
    if not directory:
        print("graybaggage status: no status directory (GRAYBAGGAGE_STATUS_DIR=off); pass --status-dir", file=sys.stderr)
        return 2
    docs = _status.running(directory)
    if args.json:
        print(json.dumps(docs, indent=2, default=str))
        return 0
    if not docs:
        print(f"no running graybaggage processes (status files in {directory})")
        return 0
    rows = [("PID", "MODE", "LANE", "LANE TABLE", "STATE", "COMMAND")]
    for d in docs:
        t = d["lane_table"]
        state = t["state"] if t["state"] != "ok" else f"ok, {t['routes']} routes"
        rows.append((str(d["pid"]), str(d.get("mode")), str(d.get("instance_lane")),
                     f"{t['source']} {t['detail']}".strip()[:50], state[:60], " ".join(d.get("argv") or [])[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
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


def _parser() -> argparse.ArgumentParser:
    from graybaggage import __version__

    parser = argparse.ArgumentParser(
        prog="graybaggage", description="Traffic lanes for Python services.",
        epilog="exit codes: 0 ok; 1 the lane table (or a status) reports an error; 2 usage; 127 run: command not "
               "found. routes/route read the lane table from this command's own environment, or with --pid from a "
               "running process (its status file, see 'graybaggage status').")
    parser.add_argument("--version", action="version", version=f"graybaggage {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run a program with lanes switched on (like opentelemetry-instrument)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- program args...")
    p.set_defaults(func=_cmd_run)

    def from_process(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pid", type=int, help="ask the running graybaggage process PID (its status file)")
        p.add_argument("--status-dir", help="where running processes write status files "
                                            "(default: GRAYBAGGAGE_STATUS_DIR or $TMPDIR/graybaggage-<uid>)")

    p = sub.add_parser("routes", help="print the active lane table and its source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    from_process(p)
    p.set_defaults(func=_cmd_routes)
    p = sub.add_parser("route", help="explain where a call in a lane would go")
    p.add_argument("--lane", required=True)
    p.add_argument("url", help="a URL (http://spring-cloud-c:20001/c) or host:port")
    from_process(p)
    p.set_defaults(func=_cmd_route)
    p = sub.add_parser("status", help="list the running graybaggage processes on this host (their status files)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--status-dir", help="default: GRAYBAGGAGE_STATUS_DIR or $TMPDIR/graybaggage-<uid>")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("demo", help="run the seed scenario locally (a -> b -> c with gray a and c)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except _Usage as exc:
        print(f"graybaggage {args.cmd}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return quiet_broken_pipe()


def quiet_broken_pipe() -> int:
    """The reader went away (``graybaggage routes | head``): exit quietly, as Unix tools do (128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
    except (OSError, ValueError):
        pass
    return 141


def _entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
