"""The inbound decision: which lane a request that reaches this service belongs to. Pure.

Order: (1) unless this service is an edge, a valid lane carried by the request (header, else baggage);
(2) the first matching dye rule; (3) with pass-through on, this instance's own lane; (4) none (base).
At an edge, step (1) is skipped: tags from outside are dropped, only dye rules set the lane.
"""
from __future__ import annotations

from typing import Any, Callable

from graybaggage.lane import BASE, CarrierReader


class Inbound:
    def __init__(
        self,
        header: str,
        allowed: frozenset[str] | None,
        max_baggage_bytes: int,
        edge: bool,
        pass_through_lane: str | None,
        rules: Callable[[], Any],
        on_problem: Callable[[str, str, object], None],
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
        self._reader = CarrierReader(header, allowed, max_baggage_bytes)

    def decide(self, header_values: list[str] | None, baggage_header: str | None, view: Callable[[], Any]) -> str | None:
        if not self.edge and (header_values or baggage_header):
            lane, problem, _ = self._reader.read(header_values, baggage_header)
            if problem is not None:
                self._on_problem(problem, "header" if header_values else "baggage",
                                 header_values[0] if header_values else baggage_header)
            if lane is not None:
                return lane
        rules = self._rules()
        if rules:
            lane = rules.evaluate(view())
            if lane is not None and (self.allowed is None or lane in self.allowed):
                return lane
        return self.pass_through_lane
