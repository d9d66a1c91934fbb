"""Entry dyeing rules: decide which lane an incoming request belongs to.

Pure core (see the house rules): no I/O, no environment reads, no logging, no mutable globals. Rules are
JSON-compatible data (from an env var, a file, or a lane's ``entry`` in the lane table); they are checked and
compiled once by :func:`parse_rules` and then evaluated per request by :meth:`DyeRules.evaluate`.

The model follows Alibaba MSE's lane conditions so its users recognise it::

    [
      {"lane": "gray", "match": "all", "conditions": [
         {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]},
      {"lane": "blue", "match": "any", "conditions": [
         {"type": "cookie", "name": "uid", "operator": "in", "values": ["7", "9"]},
         {"type": "header", "name": "x-user-id", "operator": "percentage", "value": 30}]}
    ]

Semantics chosen (documented in docs/dye-rules.md):

* ``type``: ``header`` names are case-insensitive; ``cookie`` and ``query`` names are case-sensitive.
* ``regex`` uses :func:`re.search` (the pattern may match anywhere; anchor with ``^...$`` for a full match).
* A missing value (no such header/cookie/parameter, or a value longer than :data:`MAX_VALUE_LENGTH`) makes
  EVERY operator false, ``!=`` included: ``!=`` is true only when the value is present and different.
* ``percentage`` N is true when ``zlib.crc32(value.encode("utf-8")) % 100 < N``: sticky per key value.
* ``match``: ``all`` (AND, the default) or ``any`` (OR). Rules are ordered; the first matching rule's lane
  wins; no match gives ``None``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, cast, runtime_checkable

__all__ = [
    "CONDITION_TYPES",
    "MATCH_MODES",
    "MAX_VALUE_LENGTH",
    "OPERATORS",
    "Condition",
    "DyeRules",
    "RequestView",
    "Rule",
    "RuleError",
    "parse_lane_table_rules",
    "parse_rules",
    "percentage_bucket",
    "validate_lane_table_rules",
    "validate_rules",
]

#: Values longer than this many characters are treated as missing (defensive; views apply it too).
MAX_VALUE_LENGTH = 4096

#: Condition types, in the order error messages list them.
CONDITION_TYPES = ("header", "cookie", "query")

#: Operators, in the order error messages list them.
OPERATORS = ("==", "!=", "in", "prefix", "regex", "percentage")

#: Values of a rule's ``match``.
MATCH_MODES = ("all", "any")

_LANE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# RFC 9110 token: what a header field name may be made of.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

_RULE_KEYS = ("lane", "match", "conditions")
_CONDITION_KEYS = ("type", "name", "operator", "value", "values")
_ENTRY_KEYS = ("rules",)

_Predicate = Callable[[Any], bool]


class RuleError(ValueError):
    """Invalid dye rules. The message starts with the exact field path, e.g. ``rules[1].conditions[0].operator``.

    ``errors`` holds every problem found (the message is the first one).
    """

    def __init__(self, message: str, errors: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(errors) if errors is not None else (message,)


@runtime_checkable
class RequestView(Protocol):
    """What :meth:`DyeRules.evaluate` needs from a request (see ``graybaggage._request`` for WSGI/ASGI views).

    Each method returns the value, or ``None`` when it is absent. ``header`` is case-insensitive.
    Views should treat values longer than :data:`MAX_VALUE_LENGTH` as missing.
    """

    def header(self, name: str) -> str | None: ...

    def cookie(self, name: str) -> str | None: ...

    def query(self, name: str) -> str | None: ...


def percentage_bucket(value: str) -> int:
    """The sticky bucket 0..99 of a key value: ``zlib.crc32(value.encode("utf-8")) % 100``.

    A ``percentage`` condition with N is true when ``percentage_bucket(value) < N``.
    """
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % 100


# --------------------------------------------------------------------------------------------- model


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")


class Condition(_Frozen):
    """One compiled condition (immutable). ``name`` is as written; headers are looked up case-insensitively."""

    __slots__ = ("_key", "_test", "name", "operator", "type", "value")

    type: str
    name: str
    operator: str
    value: Any  # str for ==, !=, prefix, regex; int for percentage; tuple[str, ...] for in
    _key: str  # lowercased for headers
    _test: Callable[[str], bool]

    def __init__(self, type: str, name: str, operator: str, value: Any) -> None:
        # Validation happens in parse_rules; this constructor trusts its arguments.
        set_ = object.__setattr__
        set_(self, "type", type)
        set_(self, "name", name)
        set_(self, "operator", operator)
        if operator == "in":
            value = tuple(value)
        set_(self, "value", value)
        set_(self, "_key", name.lower() if type == "header" else name)
        set_(self, "_test", _make_test(operator, value))

    def matches(self, request: RequestView) -> bool:
        """True when this condition holds for ``request`` (a missing value is always false)."""
        got = getattr(request, self.type)(self._key)
        return got is not None and len(got) <= MAX_VALUE_LENGTH and self._test(got)

    def to_data(self) -> dict[str, Any]:
        """The JSON-compatible form, as :func:`parse_rules` accepts it."""
        data: dict[str, Any] = {"type": self.type, "name": self.name, "operator": self.operator}
        if self.operator == "in":
            data["values"] = list(self.value)
        else:
            data["value"] = self.value
        return data

    def _ident(self) -> tuple[Any, ...]:
        return (self.type, self._key, self.operator, self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Condition):
            return NotImplemented
        return self._ident() == other._ident()

    def __hash__(self) -> int:
        return hash(self._ident())

    def __repr__(self) -> str:
        return f"Condition({self.type!r}, {self.name!r}, {self.operator!r}, {self.value!r})"


class Rule(_Frozen):
    """One compiled rule (immutable): a lane, ``match`` (``all``/``any``) and its conditions."""

    __slots__ = ("_preds", "conditions", "lane", "match")

    lane: str
    match: str
    conditions: tuple[Condition, ...]
    _preds: tuple[_Predicate, ...]

    def __init__(self, lane: str, match: str, conditions: Iterable[Condition]) -> None:
        conditions = tuple(conditions)
        set_ = object.__setattr__
        set_(self, "lane", lane)
        set_(self, "match", match)
        set_(self, "conditions", conditions)
        set_(self, "_preds", tuple(_make_predicate(c) for c in conditions))

    def matches(self, request: RequestView) -> bool:
        if self.match == "all":
            for pred in self._preds:
                if not pred(request):
                    return False
            return True
        for pred in self._preds:
            if pred(request):
                return True
        return False

    def to_data(self) -> dict[str, Any]:
        return {
            "lane": self.lane,
            "match": self.match,
            "conditions": [c.to_data() for c in self.conditions],
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return (self.lane, self.match, self.conditions) == (other.lane, other.match, other.conditions)

    def __hash__(self) -> int:
        return hash((self.lane, self.match, self.conditions))

    def __repr__(self) -> str:
        return f"Rule({self.lane!r}, {self.match!r}, {list(self.conditions)!r})"


class DyeRules(_Frozen):
    """An ordered, immutable set of compiled dye rules. Build it with :func:`parse_rules`.

    ``evaluate(request)`` returns the lane of the first matching rule, or ``None``.
    """

    __slots__ = ("_compiled", "rules")

    EMPTY: DyeRules  # set below

    rules: tuple[Rule, ...]
    _compiled: tuple[tuple[str, bool, tuple[_Predicate, ...]], ...]

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        rules = tuple(rules)
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"DyeRules takes Rule objects, got {type(rule).__name__}")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(
            self, "_compiled", tuple((r.lane, r.match == "all", r._preds) for r in rules)
        )

    def evaluate(self, request: RequestView) -> str | None:
        """The lane of the first rule that matches ``request``, or ``None`` when none does."""
        for lane, match_all, preds in self._compiled:
            if match_all:
                for pred in preds:
                    if not pred(request):
                        break
                else:
                    return lane
            else:
                for pred in preds:
                    if pred(request):
                        return lane
        return None

    @property
    def lanes(self) -> tuple[str, ...]:
        """The distinct lanes these rules can set, in rule order."""
        return tuple(dict.fromkeys(r.lane for r in self.rules))

    def merged(self, other: DyeRules) -> DyeRules:
        """``self``'s rules followed by ``other``'s (so ``self`` wins where both match)."""
        if not isinstance(other, DyeRules):
            raise TypeError(f"can only merge DyeRules, got {type(other).__name__}")
        if not other.rules:
            return self
        if not self.rules:
            return other
        return DyeRules(self.rules + other.rules)

    def to_data(self) -> list[dict[str, Any]]:
        """The JSON-compatible (normalised) form; ``parse_rules(r.to_data()) == r``."""
        return [r.to_data() for r in self.rules]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DyeRules):
            return NotImplemented
        return self.rules == other.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def __repr__(self) -> str:
        return f"DyeRules({list(self.rules)!r})"


DyeRules.EMPTY = DyeRules()


# ------------------------------------------------------------------------------------- compilation


def _make_test(operator: str, value: Any) -> Callable[[str], bool]:
    """A test on a present value (the caller already handled missing and oversized values)."""
    if operator == "==":
        expected: str = value

        def eq(got: str) -> bool:
            return got == expected

        return eq
    if operator == "!=":
        unexpected: str = value

        def ne(got: str) -> bool:
            return got != unexpected

        return ne
    if operator == "in":
        return frozenset(value).__contains__
    if operator == "prefix":
        prefix: str = value

        def starts(got: str) -> bool:
            return got.startswith(prefix)

        return starts
    if operator == "regex":
        search = re.compile(value).search

        def searches(got: str) -> bool:
            return search(got) is not None

        return searches
    if operator == "percentage":
        n: int = value
        crc32 = zlib.crc32

        def below(got: str) -> bool:
            return crc32(got.encode("utf-8", "surrogatepass")) % 100 < n

        return below
    raise ValueError(f"unknown operator {operator!r}")  # unreachable after validation


def _make_predicate(cond: Condition) -> _Predicate:
    """A fast ``request -> bool`` closure for one condition (names pre-lowered, regexes pre-compiled)."""
    key = cond._key
    test = cond._test
    limit = MAX_VALUE_LENGTH
    kind = cond.type
    op = cond.operator
    if kind == "header" and op == "==" and len(cond.value) <= limit:
        # The common case (the seed rule): one call, no generic test. None == str is False, and a value
        # longer than the limit can never equal an expected value within it.
        expected: str = cond.value

        def header_eq(request: Any) -> bool:
            got: str | None = request.header(key)
            return got == expected

        return header_eq
    if kind == "header":

        def header_pred(request: Any) -> bool:
            got: str | None = request.header(key)
            return got is not None and len(got) <= limit and test(got)

        return header_pred
    if kind == "cookie":

        def cookie_pred(request: Any) -> bool:
            got: str | None = request.cookie(key)
            return got is not None and len(got) <= limit and test(got)

        return cookie_pred

    def query_pred(request: Any) -> bool:
        got: str | None = request.query(key)
        return got is not None and len(got) <= limit and test(got)

    return query_pred


# -------------------------------------------------------------------------------------- validation


def _typename(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _bad_lane_message(lane: Any) -> str:
    return f"{lane!r} is not a valid lane (DNS-1123 label, lowercase, at most 63 characters)"


def _valid_lane(lane: Any) -> bool:
    return isinstance(lane, str) and _LANE_RE.fullmatch(lane) is not None


def _unknown_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], path: str, errors: list[str]) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        word = "key" if len(unknown) == 1 else "keys"
        errors.append(f"{path}: unknown {word} {names} (allowed: {', '.join(allowed)})")


def _check_condition(data: Any, path: str, errors: list[str]) -> Condition | None:
    if not isinstance(data, Mapping):
        errors.append(f"{path}: expected an object, got {_typename(data)}")
        return None
    start = len(errors)
    _unknown_keys(data, _CONDITION_KEYS, path, errors)

    kind = data.get("type")
    if "type" not in data:
        errors.append(f"{path}.type: missing (expected one of {', '.join(CONDITION_TYPES)})")
    elif kind not in CONDITION_TYPES:
        errors.append(f"{path}.type: unknown type {kind!r} (expected one of {', '.join(CONDITION_TYPES)})")

    name = data.get("name")
    if "name" not in data:
        errors.append(f"{path}.name: missing (the {kind if kind in CONDITION_TYPES else 'value'} name)")
    elif not isinstance(name, str):
        errors.append(f"{path}.name: expected a non-empty string, got {_typename(name)}")
    elif not name:
        errors.append(f"{path}.name: must not be empty")
    elif kind == "header" and _TOKEN_RE.fullmatch(name) is None:
        errors.append(f"{path}.name: {name!r} is not a valid header name")

    op = data.get("operator")
    op_ok = False
    if "operator" not in data:
        errors.append(f"{path}.operator: missing (expected one of {', '.join(OPERATORS)})")
    elif op not in OPERATORS:
        errors.append(f"{path}.operator: unknown operator {op!r} (expected one of {', '.join(OPERATORS)})")
    else:
        op_ok = True

    value: Any = None
    if op_ok:
        if op == "in":
            if "value" in data:
                errors.append(f"{path}.value: not used by operator 'in' (use 'values': a list of strings)")
            if "values" not in data:
                errors.append(f"{path}.values: missing (operator 'in' needs a non-empty list of strings)")
            else:
                values = data["values"]
                if not _is_list(values):
                    errors.append(f"{path}.values: expected a non-empty list of strings, got {_typename(values)}")
                elif not values:
                    errors.append(f"{path}.values: must not be empty")
                else:
                    for i, item in enumerate(values):
                        if not isinstance(item, str):
                            errors.append(f"{path}.values[{i}]: expected a string, got {_typename(item)}")
                    value = tuple(values)
        else:
            if "values" in data:
                errors.append(f"{path}.values: only used by operator 'in' (use 'value' with {op!r})")
            if "value" not in data:
                what = "an integer 0..100" if op == "percentage" else "a string"
                errors.append(f"{path}.value: missing (operator {op!r} needs {what})")
            else:
                value = data["value"]
                if op == "percentage":
                    if isinstance(value, bool) or not isinstance(value, int):
                        errors.append(
                            f"{path}.value: percentage must be an integer 0..100, got {_typename(value)} {value!r}"
                        )
                    elif not 0 <= value <= 100:
                        errors.append(f"{path}.value: percentage {value} out of range 0..100")
                elif not isinstance(value, str):
                    errors.append(f"{path}.value: expected a string, got {_typename(value)}")
                elif op == "regex":
                    try:
                        re.compile(value)
                    except re.error as exc:
                        errors.append(f"{path}.value: invalid regular expression {value!r}: {exc}")

    if len(errors) != start:
        return None
    return Condition(cast(str, kind), cast(str, name), cast(str, op), value)


def _check_rule(data: Any, path: str, implied_lane: str | None, errors: list[str]) -> Rule | None:
    if not isinstance(data, Mapping):
        errors.append(f"{path}: expected an object, got {_typename(data)}")
        return None
    start = len(errors)
    _unknown_keys(data, _RULE_KEYS, path, errors)

    lane = data.get("lane")
    if "lane" not in data:
        if implied_lane is None:
            errors.append(f"{path}.lane: missing (required unless the rules belong to a lane)")
        lane = implied_lane
    elif not isinstance(lane, str):
        errors.append(f"{path}.lane: expected a string, got {_typename(lane)}")
    elif not _valid_lane(lane):
        errors.append(f"{path}.lane: {_bad_lane_message(lane)}")
    elif implied_lane is not None and lane != implied_lane:
        errors.append(f"{path}.lane: {lane!r} differs from the lane these rules belong to ({implied_lane!r})")

    match = data.get("match", "all")
    if match not in MATCH_MODES:
        errors.append(f"{path}.match: unknown match {match!r} (expected all or any)")

    conditions: list[Condition] = []
    if "conditions" not in data:
        errors.append(f"{path}.conditions: missing (a non-empty list of conditions)")
    else:
        raw = data["conditions"]
        if not _is_list(raw):
            errors.append(f"{path}.conditions: expected a non-empty list, got {_typename(raw)}")
        elif not raw:
            errors.append(f"{path}.conditions: must not be empty")
        else:
            for i, item in enumerate(raw):
                cond = _check_condition(item, f"{path}.conditions[{i}]", errors)
                if cond is not None:
                    conditions.append(cond)

    if len(errors) != start:
        return None
    return Rule(cast(str, lane), cast(str, match), conditions)


def _check_rules(data: Any, lane: str | None, path: str, errors: list[str]) -> list[Rule]:
    if lane is not None and not _valid_lane(lane):
        errors.append(f"lane: {_bad_lane_message(lane)}")
        return []
    if isinstance(data, Mapping):  # the lane-table "entry" form: {"rules": [...]}
        _unknown_keys(data, _ENTRY_KEYS, path.rpartition(".")[0] or "entry", errors)
        if "rules" not in data:
            return []
        data = data["rules"]
    if data is None:
        return []
    if not _is_list(data):
        errors.append(f"{path}: expected a list of rules, got {_typename(data)}")
        return []
    rules = []
    for i, item in enumerate(data):
        rule = _check_rule(item, f"{path}[{i}]", lane, errors)
        if rule is not None:
            rules.append(rule)
    return rules


# ------------------------------------------------------------------------------------------ public


def validate_rules(data: Any, lane: str | None = None, *, path: str = "rules") -> list[str]:
    """Every problem in ``data`` as ``"<field path>: <message>"`` strings; ``[]`` when valid.

    ``data`` and ``lane`` are as for :func:`parse_rules`. Never raises for bad input.
    """
    errors: list[str] = []
    _check_rules(data, lane, path, errors)
    return errors


def parse_rules(data: Any, *, lane: str | None = None, path: str = "rules") -> DyeRules:
    """Check and compile dye rules.

    ``data`` is a list of rule objects (JSON-compatible), ``None`` (no rules), or the lane-table entry form
    ``{"rules": [...]}``. ``lane`` is the implied lane (a lane-table entry): rules may then omit ``lane``,
    and a rule naming another lane is an error. ``path`` prefixes field paths in error messages.

    Raises :class:`RuleError` for the first problem (``.errors`` lists all of them).
    """
    errors: list[str] = []
    rules = _check_rules(data, lane, path, errors)
    if errors:
        raise RuleError(errors[0], errors)
    if not rules:
        return DyeRules.EMPTY
    return DyeRules(rules)


def _lane_table_entries(table: Any, errors: list[str]) -> list[tuple[str, Any]]:
    if not isinstance(table, Mapping):
        errors.append(f"<lane table>: expected an object, got {_typename(table)}")
        return []
    lanes = table.get("lanes")
    if lanes is None:
        return []
    if not isinstance(lanes, Mapping):
        errors.append(f"lanes: expected an object, got {_typename(lanes)}")
        return []
    entries = []
    for tag, spec in lanes.items():
        if not isinstance(spec, Mapping) or spec.get("entry") is None:
            continue  # the lane table's own reader reports malformed lanes; only entries matter here
        if not _valid_lane(tag):
            errors.append(f"lanes.{tag}: {_bad_lane_message(tag)}")
            continue
        entries.append((tag, spec["entry"]))
    return entries


def validate_lane_table_rules(table: Any) -> list[str]:
    """Every problem in the ``entry`` rules of a (parsed) lane table, with paths like ``lanes.gray.entry.rules[0]``."""
    errors: list[str] = []
    for tag, entry in _lane_table_entries(table, errors):
        _check_entry(tag, entry, errors)
    return errors


def parse_lane_table_rules(table: Any) -> DyeRules:
    """The dye rules of every lane's ``entry`` in a (parsed) lane table, lanes in table order.

    Only ``lanes.<tag>.entry`` is read (the rest of the table is the table reader's business).
    Raises :class:`RuleError` like :func:`parse_rules`.
    """
    errors: list[str] = []
    rules: list[Rule] = []
    for tag, entry in _lane_table_entries(table, errors):
        rules.extend(_check_entry(tag, entry, errors))
    if errors:
        raise RuleError(errors[0], errors)
    return DyeRules(rules) if rules else DyeRules.EMPTY


def _check_entry(tag: str, entry: Any, errors: list[str]) -> list[Rule]:
    path = f"lanes.{tag}.entry"
    if not isinstance(entry, Mapping):
        errors.append(f"{path}: expected an object with 'rules', got {_typename(entry)}")
        return []
    return _check_rules(entry, tag, f"{path}.rules", errors)
