"""The lane value: validation and its place in OTel Baggage. Pure: no I/O, no env, no globals.

A lane is a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters), optionally
restricted to an allow-list. Everything else is rejected with a *kind* (used to log once per kind).
"""
from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import unquote

from opentelemetry import baggage
from opentelemetry.context import Context, get_current

from graybaggage import _memo

BASE = "base"
MAX_LANE_LEN = 63
# Anything longer than this is not even inspected.
_MAX_INSPECT = 256
_LANE_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\Z")

# Problem kinds (stable strings; they appear in logs and tests)
EMPTY = "empty"
OVERSIZED = "oversized"
NOT_A_LABEL = "not-a-dns-label"
NOT_ALLOWED = "not-on-allow-list"
DUPLICATE = "duplicate-header"
CONTROL_CHARS = "control-characters"
BAGGAGE_OVERSIZED = "baggage-oversized"
BAGGAGE_MALFORMED = "baggage-malformed"
BAGGAGE_TOO_MANY = "baggage-too-many-members"
MAX_BAGGAGE_MEMBERS = 180  # the W3C baggage limit


def check_lane(value: object, allowed: frozenset[str] | None = None) -> tuple[str | None, str | None]:
    """Return ``(lane, None)`` for a valid lane, or ``(None, problem_kind)``.

    ``allowed`` is the optional allow-list; ``None`` accepts every valid label.
    """
    if not isinstance(value, str):
        return None, NOT_A_LABEL
    if not value:
        return None, EMPTY
    if len(value) > _MAX_INSPECT:
        return None, OVERSIZED
    if _LANE_RE.match(value) is None:
        if len(value) > MAX_LANE_LEN:
            return None, OVERSIZED
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            return None, CONTROL_CHARS
        return None, NOT_A_LABEL
    if allowed is not None and value not in allowed:
        return None, NOT_ALLOWED
    return value, None


def is_valid_lane(value: object) -> bool:
    """True if ``value`` is a syntactically valid lane name (ignores any allow-list)."""
    return isinstance(value, str) and len(value) <= MAX_LANE_LEN and _LANE_RE.match(value) is not None


def baggage_entry(header_value: str, key: str, max_bytes: int = 8192) -> tuple[str | None, str | None]:
    """Find ``key`` in a W3C ``baggage`` header value without parsing the other members.

    Returns ``(raw_value, None)``, ``(None, None)`` when absent, or ``(None, problem_kind)``.
    The returned value is percent-decoded but not validated as a lane.
    """
    if len(header_value) > max_bytes:
        return None, BAGGAGE_OVERSIZED
    # Fast reject: most headers do not mention the key at all.
    if key not in header_value and key not in header_value.lower():
        return None, None
    members = header_value.split(",")
    if len(members) > MAX_BAGGAGE_MEMBERS:
        return None, BAGGAGE_TOO_MANY
    found: str | None = None
    for member in members:
        name, sep, rest = member.partition("=")
        if name.strip().lower() != key:
            continue
        if not sep:
            return None, BAGGAGE_MALFORMED
        if found is not None:
            return None, DUPLICATE
        found = unquote(rest.split(";", 1)[0].strip())
    return found, None


def baggage_member(key: str, lane: str) -> str:
    """The W3C baggage member for a (valid) lane: ``key=lane``."""
    return f"{key}={lane}"


def replace_baggage_member(existing: str | None, key: str, lane: str | None) -> str | None:
    """A ``baggage`` header value whose member for ``key`` (exact key, any case) is ``key=lane``, or is
    gone when ``lane`` is None; other members are kept in order. None when nothing is left."""
    if not existing:
        return baggage_member(key, lane) if lane is not None else None
    if lane is not None and existing == baggage_member(key, lane):  # the usual value after a propagator's inject
        return existing
    kept = [m.strip() for m in existing.split(",") if m.strip() and m.split("=", 1)[0].strip().lower() != key]
    if lane is not None:
        kept.append(baggage_member(key, lane))
    return ",".join(kept) or None


def has_baggage_member(value: str, key: str) -> bool:
    """True when a ``baggage`` header value has a member for ``key`` (exact key, any case)."""
    if key not in value and key not in value.lower():
        return False
    return any(m.split("=", 1)[0].strip().lower() == key for m in value.split(","))


# The outbound carriers of a lane. A chosen carrier (GRAYBAGGAGE_CARRIERS) always ends up naming the lane; a
# carrier left out is never added, only corrected where the app itself sent one. Each answers the value to
# write, or None to leave the carrier as it is.

def header_update(current: object, lane: str, send: bool) -> str | None:
    """The lane header's new value, given its ``current`` value (None: absent)."""
    return lane if current != lane and (send or current is not None) else None


def baggage_update(current: str | None, key: str, lane: str, send: bool) -> str | None:
    """The ``baggage`` header's new value, given its ``current`` value (None or empty: absent)."""
    if not current:
        return baggage_member(key, lane) if send else None
    if not send and not has_baggage_member(current, key):
        return None
    merged = replace_baggage_member(current, key, lane)
    return merged if merged != current else None


_valid: dict[str, bool] = {}


def _baggage_key() -> Any:
    """OpenTelemetry's (private) context key of the baggage dict, when it is where graybaggage expects it."""
    key: Any = getattr(baggage, "_BAGGAGE_KEY", None)
    try:  # check the layout once: set_baggage must store a plain dict under that key
        probe: Any = baggage.set_baggage("graybaggage-probe", "1", Context())
        return key if isinstance(probe.get(key), dict) and probe[key].get("graybaggage-probe") == "1" else None
    except Exception:  # noqa: BLE001 - any surprise means: use the public API
        return None


_BAGGAGE_KEY: Any = _baggage_key()


def baggage_value(key: str, context: Context | None = None) -> object | None:
    """``opentelemetry.baggage.get_baggage(key, context)``, read straight from the context's baggage dict (a
    third of the calls) when OpenTelemetry keeps it where it did when this module was imported."""
    if _BAGGAGE_KEY is None:
        return baggage.get_baggage(key, context)
    bag = (context if context is not None else get_current()).get(_BAGGAGE_KEY)
    return bag.get(key) if isinstance(bag, dict) else None


def get_lane(key: str, context: Context | None = None) -> str | None:
    """The lane stored in baggage under ``key`` in ``context`` (default: current), if valid."""
    value = baggage_value(key, context)
    if not isinstance(value, str):  # absent, or something other than a lane put there
        return None
    ok = _valid.get(value)
    if ok is None:
        ok = is_valid_lane(value)
        if len(_valid) < 256:  # lanes are few; the cache cannot be grown by hostile values without bound
            _valid[value] = ok
    return value if ok else None


def set_lane(key: str, lane: str | None, context: Context | None = None) -> Context:
    """A context whose baggage holds ``lane`` under ``key`` (or no entry when ``lane`` is None)."""
    current = baggage_value(key, context)
    if lane is None:
        if current is None:
            return context if context is not None else get_current()
        return baggage.remove_baggage(key, context)
    if current == lane:  # already there: no copy
        return context if context is not None else get_current()
    return baggage.set_baggage(key, lane, context)


def parse_allow_list(items: Iterable[str]) -> frozenset[str] | None:
    """Normalise an allow-list; an empty list means "no restriction" (None)."""
    lanes = frozenset(i.strip() for i in items if i.strip())
    return lanes or None


def lane_from_carrier(
    header_values: list[str] | None,
    baggage_header: str | None,
    key: str,
    allowed: frozenset[str] | None = None,
    max_baggage_bytes: int = 8192,
) -> tuple[str | None, str | None, bool]:
    """Resolve the lane carried by a request: ``(lane, problem_kind, present)``.

    The explicit header wins over the baggage entry. A header that is present but invalid decides
    (the request is base): a malformed explicit tag never falls through to a baggage entry.
    ``present`` says whether the carrier mentioned a lane at all (valid or not).
    """
    if header_values:
        if len(header_values) > 1:
            return None, DUPLICATE, True
        raw = header_values[0]
        if "," in raw:
            return None, DUPLICATE, True
        lane, problem = check_lane(raw.strip(" \t"), allowed)
        return lane, problem, True
    if baggage_header:
        member, problem = baggage_entry(baggage_header, key, max_baggage_bytes)
        if problem is not None:
            return None, problem, True
        if member is None:
            return None, None, False
        lane, problem = check_lane(member, allowed)
        return lane, problem, True
    return None, None, False


class CarrierReader:
    """:func:`lane_from_carrier` with a bounded memo of its verdicts.

    A service sees the same few lane headers and ``baggage`` values on every request, and the verdict for
    one depends only on the value (and this reader's fixed settings). Only single header values and
    ``baggage`` values of at most ``value_max`` characters are remembered, at most ``size`` of them; anything
    else is computed each time. The memo is per instance: nothing global.
    """

    def __init__(self, key: str, allowed: frozenset[str] | None, max_baggage_bytes: int,
                 size: int = 256, value_max: int = 256) -> None:
        self.key = key
        self.allowed = allowed
        self.max_baggage_bytes = max_baggage_bytes
        self.size = size
        self.value_max = value_max
        self._verdicts: dict[tuple[bool, str], tuple[str | None, str | None, bool]] = {}

    def read(self, header_values: list[str] | None, baggage_header: str | None) -> tuple[str | None, str | None, bool]:
        """``(lane, problem_kind, present)`` exactly as :func:`lane_from_carrier` answers."""
        if header_values:
            if len(header_values) != 1:
                return lane_from_carrier(header_values, None, self.key, self.allowed, self.max_baggage_bytes)
            memo = (True, header_values[0])
        elif baggage_header:
            memo = (False, baggage_header)
        else:
            return None, None, False
        verdict = self._verdicts.get(memo)
        if verdict is None:
            verdict = lane_from_carrier(header_values, baggage_header, self.key, self.allowed, self.max_baggage_bytes)
            if isinstance(memo[1], str) and len(memo[1]) <= self.value_max:
                _memo.put(self._verdicts, memo, verdict, self.size)
        return verdict
