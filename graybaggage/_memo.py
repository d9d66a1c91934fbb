"""Bounded memo dicts that evict the oldest entry when full (FIFO, i.e. a clock without reference bits).

A memo that stops accepting entries once full penalises every value that arrives after it filled (say, a lane
created after junk values filled the memo): eviction keeps the newest ``size`` values instead. A hit costs
one dict lookup, as before; a hot value evicted by a flood of junk is parsed once more and memoised again.
"""
from __future__ import annotations

from typing import Any


def put(memo: dict, key: Any, value: Any, size: int) -> None:
    """``memo[key] = value``, first evicting the oldest entry when ``memo`` holds ``size`` entries. Safe to
    call from several threads (a race costs at most an extra eviction or an entry over the bound, briefly)."""
    if len(memo) >= size:
        try:
            del memo[next(iter(memo))]
        except (StopIteration, KeyError, RuntimeError):  # emptied or changed by another thread meanwhile
            pass
    memo[key] = value
