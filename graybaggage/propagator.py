"""The lane propagator (``OTEL_PROPAGATORS=...,graybaggage``). OpenTelemetry API only.

Keep this module free of ``opentelemetry.instrumentation`` imports: OpenTelemetry loads propagator entry
points while its distro module is half-imported.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, MutableMapping

from opentelemetry.baggage import get_all, set_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, create_key, get_current, get_value, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from graybaggage import _memo
from graybaggage import config
from graybaggage._log import log_once
from graybaggage.lane import (BAGGAGE_OVERSIZED, BAGGAGE_TOO_MANY, MAX_BAGGAGE_MEMBERS, CarrierReader, baggage_update,
                              baggage_value, get_lane, header_update, replace_baggage_member, set_lane)

_logger = logging.getLogger(__name__)

DECIDED_KEY = create_key("graybaggage-decided-lane")
"""Context key set by graybaggage's server hooks: the lane decided for the current inbound request
("" for none). Extraction inside that request returns this decision, so a lane tag that edge policy
dropped cannot come back through another propagator, and the lane is parsed only once."""


def decision(context: Context | None = None) -> str | None:
    """The lane graybaggage's server hook decided for the request being handled ("" for base), or None when
    no hook decided: read from the current context, else from ``context``."""
    decided = get_value(DECIDED_KEY)
    if decided is None and context is not None:
        decided = context.get(DECIDED_KEY)
    return decided  # type: ignore[return-value]


def reassert(key: str, decided: str, context: Context) -> Context:
    """``context`` with the decided lane (and the decision itself) put back, whatever an extraction made of it."""
    context = set_lane(key, decided or None, context)
    if context.get(DECIDED_KEY) != decided:
        context = set_value(DECIDED_KEY, decided, context)
    return context


_UNREAD: Any = object()
"""Marks a ``baggage`` header the lane step still has to read from the carrier."""


_PROBLEM_WORDS = {
    "not-on-allow-list": "is not on the allow-list (GRAYBAGGAGE_LANES)",
    "not-a-dns-label": "is not a lane name (a DNS-1123 label of at most 63 characters)",
    "oversized": "is longer than 63 characters",
    "empty": "is empty",
    "duplicate-header": "is sent more than once",
    "control-characters": "contains control characters",
    "baggage-oversized": "is a baggage header over the size limit (GRAYBAGGAGE_MAX_BAGGAGE_BYTES)",
    "baggage-malformed": "is a malformed baggage header",
    "baggage-too-many-members": "is a baggage header past the W3C limit of 180 members",
    "unreadable-carrier": "could not be read",
}


def _lane_value(where: str, raw: object) -> str | None:
    """The offending lane value, for the log line: printable, at most 63 characters, or None."""
    value: object = raw
    if where == "baggage" and isinstance(raw, str):
        from graybaggage.lane import baggage_entry

        try:
            value = baggage_entry(raw, config.get_settings().header, 1 << 20)[0]
        except Exception:  # noqa: BLE001 - only a log detail
            value = None
    if not isinstance(value, str):
        return None
    value = value.strip()
    return repr(value[:63] + ("..." if len(value) > 63 else "")) if value.isprintable() else None


def log_problem(problem: str, where: str, raw: object = None) -> None:
    """A lane that cannot be used (the request stays on base), logged once per kind of problem per process. The
    line names what was wrong and, when it is a lane value (e.g. one not on the allow-list), the value."""
    what = _PROBLEM_WORDS.get(problem, f"is not usable ({problem})")
    value = _lane_value(where, raw) if raw is not None and problem not in ("baggage-oversized",
                                                                          "baggage-too-many-members") else None
    log_once(_logger, f"{where}:{problem}", "graybaggage: ignoring a lane in %s (%s): %s %s; the request stays on base",
             where, problem, value or "it", what)


class LanePropagator(TextMapPropagator):
    """Extracts the lane header (or a lane entry of W3C ``baggage``) into Baggage, and injects both."""

    def __init__(self, settings: config.Settings | None = None) -> None:
        s = settings or config.get_settings()
        self._key = s.header
        self._allowed = s.allowed_lanes
        self._max_baggage = s.max_baggage_bytes
        self._reader = CarrierReader(self._key, self._allowed, self._max_baggage)
        self._send_header = s.send_header
        self._send_baggage = s.send_baggage

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter) -> Context:
        return self._extract(carrier, context if context is not None else get_current(), getter)

    def _extract(self, carrier: CarrierT, context: Context, getter: Getter[CarrierT], baggage_header: Any = _UNREAD) -> Context:
        """The lane step; ``baggage_header`` is the first ``baggage`` value when the caller already read it."""
        decided = get_value(DECIDED_KEY)
        if decided is None:
            decided = context.get(DECIDED_KEY)
        if decided is not None:
            return reassert(self._key, decided, context)
        try:
            header_values = getter.get(carrier, self._key)
            baggage_values = getter.get(carrier, "baggage") if not header_values and baggage_header is _UNREAD else None
        except Exception:  # a hostile or odd carrier must never break the request
            log_problem("unreadable-carrier", "carrier")
            return context
        if baggage_header is _UNREAD:
            baggage_header = baggage_values[0] if baggage_values else None
        lane, problem, present = self._reader.read(list(header_values) if header_values else None, baggage_header)
        if problem is not None:
            log_problem(problem, "header" if header_values else "baggage",
                        header_values[0] if header_values else baggage_header)
        if not present:
            return context
        return set_lane(self._key, lane, context)

    def inject(self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter) -> None:
        lane = get_lane(self._key, context)
        if lane is None:
            return
        if not (isinstance(carrier, MutableMapping) or hasattr(carrier, "get")):  # nothing to read or merge
            if self._send_header:
                setter.set(carrier, self._key, lane)
            return
        self._set_header(carrier, lane, setter)
        bag = baggage_update(_baggage_of(carrier), self._key, lane, self._send_baggage)
        if bag is not None:
            setter.set(carrier, "baggage", bag)

    def _set_header(self, carrier: Any, lane: str, setter: Setter[Any]) -> None:
        header = header_update(carrier.get(self._key), lane, self._send_header)
        if header is not None:
            setter.set(carrier, self._key, header)

    @property
    def fields(self) -> set[str]:
        return {self._key, "baggage"}


def _baggage_of(carrier: Any) -> Any:
    return carrier.get("baggage") or carrier.get("Baggage")


_MEMO_MAX = 512
_MEMO_VALUE_MAX = 1024


class _Reported(logging.Filter):
    """Drops OpenTelemetry's baggage-propagator warnings while, in this thread, graybaggage parses a ``baggage``
    header it has already reported (a header over the W3C member limit gets one graybaggage line per
    process; OpenTelemetry's own warning would come again on every request). Inert otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self._local, "on", False)

    def parse(self, parse: Any, header: str) -> Any:
        self._local.on = True
        try:
            return parse(header)
        finally:
            self._local.on = False


_REPORTED = _Reported()
logging.getLogger("opentelemetry.baggage.propagation").addFilter(_REPORTED)


class LaneBaggagePropagator(W3CBaggagePropagator):
    """OpenTelemetry's W3C ``baggage`` propagator followed by :class:`LanePropagator`, in one step.

    :func:`graybaggage.instrumentor.ensure_propagator` puts it in place of OpenTelemetry's default
    ``tracecontext,baggage`` pair when the user did not set ``OTEL_PROPAGATORS``. It does exactly what
    ``CompositePropagator([W3CBaggagePropagator(), LanePropagator()])`` does (the tests compare the two on
    many carriers and contexts), but OpenTelemetry's own parse of a ``baggage`` header and its formatting of
    a baggage set run once per distinct value and are remembered: in a service the same few values repeat
    on every request. Validation, limits and warnings are OpenTelemetry's, computed by the upstream class
    itself; a warning for a bad value is therefore logged the first time that value is seen, not on every
    request. The memory is bounded (``_MEMO_MAX`` values of at most ``_MEMO_VALUE_MAX`` characters; only
    all-string baggage is remembered).
    """

    def __init__(self, settings: config.Settings | None = None) -> None:
        self._lane = LanePropagator(settings)
        self._key = self._lane._key
        self._parsed: dict[str, tuple[tuple[str, object], ...]] = {}
        self._formatted: dict[tuple[tuple[str, object], ...], str | None] = {}
        # OpenTelemetry's (private) header limit, read once; its documented W3C value if it ever moves
        limit = getattr(W3CBaggagePropagator, "_MAX_HEADER_LENGTH", None)
        self._max_header = limit if isinstance(limit, int) else 8192

    # -- extract ----------------------------------------------------------------------------------
    def _entries(self, header: str) -> tuple[tuple[str, object], ...]:
        """The members OpenTelemetry's W3C propagator extracts from ``header``, in order (memoised)."""
        entries = self._parsed.get(header)
        if entries is None:
            ctx = W3CBaggagePropagator.extract(self, {"baggage": [header]}, Context())
            entries = tuple(get_all(ctx).items())
            if len(header) <= _MEMO_VALUE_MAX:
                _memo.put(self._parsed, header, entries, _MEMO_MAX)
        return entries

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter) -> Context:
        if context is None:
            context = get_current()
        try:
            baggage_values = getter.get(carrier, "baggage")
            header = next(iter(baggage_values), None) if baggage_values is not None else None
        except Exception:  # a hostile or odd carrier must never break the request
            log_problem("unreadable-carrier", "carrier")
            return context
        if not isinstance(header, str):
            header = None
        elif len(header) > _MEMO_VALUE_MAX and len(header.encode()) > self._max_header:
            # OpenTelemetry ignores such a header too, but warns on every request, quoting all of it: one
            # line per process instead, without the attacker's bytes.
            log_problem(BAGGAGE_OVERSIZED, "baggage")
        elif header:
            if len(header) > _MEMO_VALUE_MAX and header.count(",") >= MAX_BAGGAGE_MEMBERS:
                # past the W3C member limit: OpenTelemetry keeps the first members, as here, but warns on
                # every request; one line per process instead
                log_problem(BAGGAGE_TOO_MANY, "baggage")
                entries = _REPORTED.parse(self._entries, header)
            else:
                entries = self._entries(header)
            for name, value in entries:
                if baggage_value(name, context) != value:  # (equal: setting it again changes nothing)
                    context = set_baggage(name, value, context)
        return self._lane._extract(carrier, context, getter, header)

    # -- inject -----------------------------------------------------------------------------------
    def inject(self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter) -> None:
        if not (isinstance(carrier, MutableMapping) or hasattr(carrier, "get")):  # nothing to merge into
            W3CBaggagePropagator.inject(self, carrier, context, setter)
            self._lane.inject(carrier, context, setter)
            return
        entries = get_all(context)
        lane = get_lane(self._key, context)
        if entries:
            items = tuple(entries.items())
            memo = (items, lane)
            try:
                header = self._formatted[memo]  # type: ignore[index]
            except KeyError:
                header = self._format(items, lane, context)
                if (header is not None and len(header) <= _MEMO_VALUE_MAX
                        and all(type(v) is str for _, v in items)):
                    _memo.put(self._formatted, memo, header, _MEMO_MAX)
            except TypeError:  # an unhashable baggage value: no memo
                header = self._format(items, lane, context)
            if header is not None:
                setter.set(carrier, "baggage", header)
                if lane is not None:
                    self._lane._set_header(carrier, lane, setter)
                return
        # Nothing OpenTelemetry would write: the lane alone, merged into what the carrier already holds.
        self._lane.inject(carrier, context, setter)

    def _format(self, items: tuple[tuple[str, object], ...], lane: str | None, context: Context | None) -> str | None:
        """OpenTelemetry's ``baggage`` header for ``items`` with the lane member merged in as LanePropagator
        merges it; None when OpenTelemetry writes no header (every member dropped by its limits)."""
        scratch: dict[str, str] = {}
        W3CBaggagePropagator.inject(self, scratch, context)
        header = scratch.get("baggage")
        if not header:
            return None
        if lane is None:
            return header
        return replace_baggage_member(header, self._key, lane if self._lane._send_baggage else None)

    @property
    def fields(self) -> set[str]:
        return {self._key, "baggage"}


class KeepLaneDecision(CompositePropagator):
    """The propagators the user chose (``OTEL_PROPAGATORS``), unchanged, plus one rule on extraction: inside a
    request whose lane graybaggage's server hook decided, the extracted context gets that decision back.

    OpenTelemetry server middlewares (and FastAPI's own telemetry) extract the request context again with
    the global propagator and attach the result: with ``tracecontext`` first the result starts from an empty
    context, so without this rule the lane would be lost (or a tag that edge policy dropped would come back
    from ``baggage``). Injection and ``fields`` are exactly the user's.
    """

    def __init__(self, chosen: TextMapPropagator, settings: config.Settings | None = None) -> None:
        parts = getattr(chosen, "_propagators", None)
        super().__init__(list(parts) if type(chosen) is CompositePropagator and isinstance(parts, list) else [chosen])
        self._key = (settings or config.get_settings()).header

    def extract(self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter) -> Context:
        extracted = super().extract(carrier, context, getter)
        decided = decision(context)
        if decided is None:
            return extracted
        return reassert(self._key, decided, extracted)
