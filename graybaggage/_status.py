"""What graybaggage is doing in this process, said once and kept readable from outside.

- The start-up line: one WARNING (INFO with ``GRAYBAGGAGE_QUIET=1``) naming the mode, the lane-table source
  and its state, graybaggage's hooks and the OpenTelemetry instrumentations loaded or skipped.
- The status file: ``<GRAYBAGGAGE_STATUS_DIR>/<pid>.json``, rewritten whenever the lane-table source changes
  (a new table, an error), removed at exit. ``graybaggage routes --pid`` and ``graybaggage route --pid`` read
  it, so they answer from the table the running service routes on, not from the CLI's own environment.

The snapshot and the line are pure functions of their inputs (tested directly); the edges write files.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from typing import Any

_logger = logging.getLogger("graybaggage")

SCHEMA = 1


class State:
    """Facts gathered while graybaggage switches on (filled by the distro, the instrumentor, instrument())."""

    def __init__(self) -> None:
        self.switched_on_by: str | None = None
        self.mode: str | None = None
        self.hooks: list[str] = []
        self.otel_loaded: list[str] = []
        self.otel_skipped: list[str] = []
        self.otel_failed: list[str] = []
        self.sdk_configured: bool | None = None
        self.started = time.time()
        self.announced = False
        self.path: str | None = None


state = State()
_lock = threading.Lock()


# -- pure ----------------------------------------------------------------------------------------------
def table_document(table: Any) -> dict[str, Any]:
    """A lane-table document (format version 1) equivalent to ``table``: what the status file carries."""
    lanes = {}
    for name, lane in sorted(getattr(table, "lanes", {}).items()):
        entry: dict[str, Any] = {"fallback": lane.fallback, "routes": dict(sorted(lane.raw_routes.items()))}
        if getattr(lane, "entry", None):
            entry["entry"] = lane.entry
        lanes[name] = entry
    doc: dict[str, Any] = {"version": 1, "lanes": lanes}
    if getattr(table, "namespace", None):
        doc["namespace"] = table.namespace
    if getattr(table, "revision", None):
        doc["revision"] = table.revision
    return doc


def source_state(source: Any) -> str:
    """``ok``, ``error: ...``, ``loading`` (nothing read yet) or ``none`` (no table configured)."""
    if getattr(source, "kind", "none") == "none":
        return "none"
    if source.error:
        return f"error: {source.error}"
    if source.loaded_at is None:
        return "loading"
    return "ok"


def snapshot(settings: Any, source: Any, st: State, propagator: Any = None, pid: int | None = None) -> dict[str, Any]:
    table = source.value
    lanes = getattr(table, "lanes", {}) or {}
    routes = sum(len(lane.raw_routes) for lane in lanes.values())
    return {
        "schema": SCHEMA,
        "pid": os.getpid() if pid is None else pid,
        "argv": list(sys.argv),
        "started": st.started,
        "updated": time.time(),
        "switched_on_by": st.switched_on_by,
        "mode": st.mode,
        "instance_lane": settings.instance_lane,
        "header": settings.header,
        "edge": settings.edge,
        "routing": settings.routing,
        "namespace": settings.namespace,
        "lane_table": {
            "source": source.kind,
            "detail": source.detail,
            "state": source_state(source),
            "error": source.error,
            "loaded_at": source.loaded_at,
            "generation": source.generation,
            "lanes": len(lanes),
            "routes": routes,
            "table": table_document(table),
        },
        "hooks": list(st.hooks),
        "hooks_disabled": sorted(settings.disabled_integrations),
        "otel_instrumentations": list(st.otel_loaded),
        "otel_skipped": list(st.otel_skipped),
        "otel_failed": list(st.otel_failed),
        "sdk_configured": st.sdk_configured,
        "propagators": _leaves(propagator) if propagator is not None else [],
        "user_propagators": settings.user_propagators,
    }


def _leaves(propagator: Any) -> list[str]:
    parts = getattr(propagator, "_propagators", None)
    if parts is None:
        return [type(propagator).__name__]
    return [name for part in parts for name in _leaves(part)]


def _table_words(t: dict[str, Any]) -> str:
    if t["source"] == "none":
        return "none (every call stays on base)"
    state = t["state"]
    if state == "ok":
        state = f"ok, {t['lanes']} lane{'s' if t['lanes'] != 1 else ''}, {t['routes']} route{'s' if t['routes'] != 1 else ''}"
        rev = t["table"].get("revision")
        if rev:
            state += f", revision {rev}"
    return f"{t['source']} {t['detail']} ({state})".replace("  ", " ")


def startup_line(snap: dict[str, Any], status_path: str | None) -> str:
    """The one start-up line (without the logger's own prefix)."""
    parts = [
        f"graybaggage: on ({snap['switched_on_by'] or 'instrumentor'}) mode={snap['mode'] or 'tracing'}",
        f"lane={snap['instance_lane']}" + (" edge" if snap["edge"] else ""),
        f"lane-table={_table_words(snap['lane_table'])}",
        f"hooks={','.join(snap['hooks']) or '-'}" + (f" (disabled: {','.join(snap['hooks_disabled'])})"
                                                     if snap["hooks_disabled"] else ""),
        f"otel-instrumentations={','.join(snap['otel_instrumentations']) or '-'}"
        + (f" (skipped: {','.join(snap['otel_skipped'])})" if snap["otel_skipped"] else "")
        + (f" FAILED={','.join(snap['otel_failed'])}" if snap["otel_failed"] else ""),
    ]
    if snap["user_propagators"] is not None:
        parts.append(f"OTEL_PROPAGATORS={snap['user_propagators']}")
    parts.append(f"status={status_path}" if status_path else "status=off")
    return " ".join(parts) + " (GRAYBAGGAGE_QUIET=1 logs this at INFO)"


# -- edges ---------------------------------------------------------------------------------------------
def status_path(settings: Any, pid: int | None = None) -> str | None:
    if not settings.status_dir:
        return None
    return os.path.join(settings.status_dir, f"{os.getpid() if pid is None else pid}.json")


def write(path: str, snap: dict[str, Any]) -> bool:
    """Write ``snap`` to ``path`` atomically (a reader never sees half a file); False when it cannot."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(snap, f, indent=1, default=str)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        from graybaggage._log import warn_once

        warn_once(_logger, f"graybaggage: cannot write the status file {path} ({exc.strerror}); "
                           "graybaggage routes --pid will not see this process (set GRAYBAGGAGE_STATUS_DIR)")
        return False


def refresh(*_: Any) -> None:
    """Rewrite this process's status file (called when the lane-table source changes, and at fork)."""
    try:
        from graybaggage import _runtime, config
        from opentelemetry.propagate import get_global_textmap

        settings = config.get_settings()
        rt = _runtime._runtime
        if rt is None:
            return
        path = status_path(settings)
        if path is None:
            return
        with _lock:
            if write(path, snapshot(settings, rt.table_source, state, get_global_textmap())):
                if state.path not in (None, path):
                    _remove(state.path)  # a forked child: the parent's file is the parent's
                state.path = path
    except Exception:  # noqa: BLE001 - diagnostics must never break the service
        _logger.debug("graybaggage: status refresh failed", exc_info=True)


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _at_exit() -> None:
    if state.path and os.path.basename(state.path) == f"{os.getpid()}.json":
        _remove(state.path)


def _after_fork_in_child() -> None:
    state.path = None  # the parent's file stays the parent's
    refresh()


def announce() -> None:
    """Once per process: the start-up line, the status file, and the hook that keeps the file current."""
    with _lock:
        if state.announced:
            return
        state.announced = True
    from graybaggage import _runtime, config
    from opentelemetry.propagate import get_global_textmap

    settings = config.get_settings()
    rt = _runtime.get()
    path = status_path(settings)
    snap = snapshot(settings, rt.table_source, state, get_global_textmap())
    if path is not None and write(path, snap):
        state.path = path
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
    else:
        path = None
    rt.table_source.on_change = refresh
    _logger.log(logging.INFO if settings.quiet else logging.WARNING, startup_line(snap, path))


# -- reading (the CLI) ---------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(directory: str, pid: int) -> dict[str, Any] | None:
    """The status of process ``pid``, or None (no file, or the process is gone)."""
    path = os.path.join(directory, f"{pid}.json")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if doc.get("pid") != pid or not _alive(pid):
        return None
    doc["_path"] = path
    return doc


def running(directory: str) -> list[dict[str, Any]]:
    """Every process with a live status file in ``directory`` (stale files of dead processes are skipped)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name.endswith(".json") and name[:-5].isdigit():
            doc = read(directory, int(name[:-5]))
            if doc is not None:
                out.append(doc)
    return out
