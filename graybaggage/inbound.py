"""The inbound decision: which lane a request that reaches this service belongs to. Pure.

Order: (1) unless this service is an edge, a valid lane carried by the request (header, else baggage);
(2) the first matching dye rule; (3) with pass-through on, this instance's own lane; (4) none (base).
At an edge, step (1) is skipped: tags from outside are dropped, only dye rules set the lane.
"""
from __future__ import annotations

from typing import Any, Callable

from graybaggage.lane import BASE, lane_from_carrier


_VERDICTS_MAX = 256
_VERDICT_VALUE_MAX = 128


class Inbound:
    def __init__(
        self,
        header: str,
        allowed: frozenset[str] | None,
        max_baggage_bytes: int,
        edge: bool,
        pass_through_lane: str | None,
        rules: Callable[[], Any],
        on_problem: Callable[[str, str], None],
    ) -> None:
        self.header = header
        self.wsgi_key = "HTTP_" + header.upper().replace("-", "_")
        self.asgi_key = header.encode("latin-1")
        self.allowed = allowed
        self.max_baggage_bytes = max_baggage_bytes
        self.edge = edge
        self.pass_through_lane = pass_through_lane if pass_through_lane not in (None, BASE) else None
        self._rules = rules
        self._on_problem = on_problem
        self._verdicts: dict[str, tuple[str | None, str | None]] = {}

    def _carried(self, header_values: list[str] | None, baggage_header: str | None) -> tuple[str | None, str | None]:
        """``(lane, problem)`` carried by the request. A single header value decides alone, so its verdict
        is remembered (bounded; only short values): services see the same few values on every request."""
        if header_values is not None and len(header_values) == 1:
            raw = header_values[0]
            verdict = self._verdicts.get(raw)
            if verdict is None:
                verdict = lane_from_carrier(header_values, None, self.header, self.allowed, self.max_baggage_bytes)[:2]
                if len(raw) <= _VERDICT_VALUE_MAX and len(self._verdicts) < _VERDICTS_MAX:
                    self._verdicts[raw] = verdict
            return verdict
        return lane_from_carrier(header_values, baggage_header, self.header, self.allowed, self.max_baggage_bytes)[:2]

    def decide(self, header_values: list[str] | None, baggage_header: str | None, view: Callable[[], Any]) -> str | None:
        if not self.edge and (header_values or baggage_header):
            lane, problem = self._carried(header_values, baggage_header)
            if problem is not None:
                self._on_problem(problem, "header" if header_values else "baggage")
            if lane is not None:
                return lane
        rules = self._rules()
        if rules:
            lane = rules.evaluate(view())
            if lane is not None and (self.allowed is None or lane in self.allowed):
                return lane
        return self.pass_through_lane
