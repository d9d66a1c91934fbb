"""Passes asked for later: `Plan.requeue` (a timed pause ending, a clean-up step waiting), a deletion not done yet.

One scheduler thread keeps the earliest time asked per key and hands due keys to a small pool, so no kopf
worker sleeps while it waits (the handlers return at once) and a key asked twice runs once.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable

log = logging.getLogger(__name__)


class Requeue:
    def __init__(self, run: Callable[[Hashable], None], workers: int = 2, clock: Callable[[], float] = time.monotonic):
        self._run = run
        self._clock = clock
        self._due: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graybaggage-requeue")
        self._thread: threading.Thread | None = None
        self._stopped = False

    def after(self, key: Hashable, delay: float) -> None:
        """Run `key` in `delay` seconds, or sooner if it is already asked for sooner."""
        when = self._clock() + max(0.0, delay)
        with self._cond:
            if self._stopped or (key in self._due and self._due[key] <= when):
                return
            self._due[key] = when
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="graybaggage-requeue", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._due)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _next_due(self) -> Hashable | None:
        """Block until a key is due (None once stopped); stale heap entries (asked again sooner) are skipped."""
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _seq, key = self._heap[0]
                if self._due.get(key) != when:
                    heapq.heappop(self._heap)
                    continue
                wait = when - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                return key
        return None

    def _loop(self) -> None:
        while (key := self._next_due()) is not None:
            self._pool.submit(self._safely, key)

    def _safely(self, key: Hashable) -> None:
        try:
            self._run(key)
        except Exception:
            log.exception("requeued pass %s failed (its next event or resync retries)", key)
