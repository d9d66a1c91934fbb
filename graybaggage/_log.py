"""Logging helpers: one logger per module, and "log once per kind" for hot paths.

Bad input arrives per request; logging it per request would let a client flood the logs. Each problem
kind is logged once per process (with a count visible through :func:`problem_counts`).
"""
from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_seen: dict[str, int] = {}


def log_once(logger: logging.Logger, kind: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
    """Log ``msg`` the first time ``kind`` is seen in this process; afterwards only count it."""
    count = _seen.get(kind)
    if count is not None:
        _seen[kind] = count + 1  # racy increment is fine: it is a diagnostic counter
        return
    with _lock:
        if kind in _seen:
            _seen[kind] += 1
            return
        _seen[kind] = 1
    logger.log(level, msg + " (logged once per process; further cases are counted silently)", *args)


_warned: set[str] = set()


def warn_once(logger: logging.Logger, message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` (a complete line, e.g. a configuration problem) once per process; repeats are dropped."""
    if message in _warned:
        return
    with _lock:
        if message in _warned:
            return
        _warned.add(message)
    logger.log(level, message)


def problem_counts() -> dict[str, int]:
    """How many times each once-logged problem kind was seen (for diagnostics and tests)."""
    return dict(_seen)


def _reset_for_tests() -> None:
    with _lock:
        _seen.clear()
        _warned.clear()
