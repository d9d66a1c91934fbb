"""The lane propagator (``OTEL_PROPAGATORS=...,graybaggage``). OpenTelemetry API only.

Keep this module free of ``opentelemetry.instrumentation`` imports: OpenTelemetry loads propagator entry
points while its distro module is half-imported.
"""
from __future__ import annotations

import logging
from typing import Any, MutableMapping

from opentelemetry.context import Context, create_key, get_current, get_value
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from graybaggage import config
from graybaggage._log import log_once
from graybaggage.lane import get_lane, lane_from_carrier, replace_baggage_member, set_lane

_logger = logging.getLogger(__name__)

DECIDED_KEY = create_key("graybaggage-decided-lane")
"""Context key set by graybaggage's server hooks: the lane decided for the current inbound request
("" for none). Extraction inside that request returns this decision, so a lane tag that edge policy
dropped cannot come back through another propagator, and the lane is parsed only once."""


def log_problem(problem: str, where: str) -> None:
    log_once(_logger, f"{where}:{problem}", "graybaggage: ignoring a malformed lane in %s (%s); request stays on base", where, problem)


class LanePropagator(TextMapPropagator):
    """Extracts the lane header (or a lane entry of W3C ``baggage``) into Baggage, and injects both."""

    def __init__(self, settings: config.Settings | None = None) -> None:
        s = settings or config.get_settings()
        self._key = s.header
        self._allowed = s.allowed_lanes
        self._max_baggage = s.max_baggage_bytes

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter) -> Context:
        if context is None:
            context = get_current()
        decided = get_value(DECIDED_KEY)
        if decided is not None:
            return set_lane(self._key, decided or None, context)
        try:
            header_values = getter.get(carrier, self._key)
            baggage_values = getter.get(carrier, "baggage") if not header_values else None
        except Exception:  # a hostile or odd carrier must never break the request
            log_problem("unreadable-carrier", "carrier")
            return context
        lane, problem, present = lane_from_carrier(
            list(header_values) if header_values else None,
            baggage_values[0] if baggage_values else None,
            self._key,
            self._allowed,
            self._max_baggage,
        )
        if problem is not None:
            log_problem(problem, "header" if header_values else "baggage")
        if not present:
            return context
        return set_lane(self._key, lane, context)

    def inject(self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter) -> None:
        lane = get_lane(self._key, context)
        if lane is None:
            return
        setter.set(carrier, self._key, lane)
        if isinstance(carrier, MutableMapping) or hasattr(carrier, "get"):
            add_baggage_member(carrier, self._key, lane, setter)

    @property
    def fields(self) -> set[str]:
        return {self._key, "baggage"}


def add_baggage_member(carrier: Any, key: str, lane: str, setter: Setter[Any] = default_setter) -> None:
    """Add ``key=lane`` to the carrier's ``baggage`` header unless it already has an entry for ``key``."""
    existing = carrier.get("baggage") or carrier.get("Baggage")
    merged = replace_baggage_member(existing, key, lane)
    if merged != existing:
        setter.set(carrier, "baggage", merged)
