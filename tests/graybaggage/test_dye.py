"""Tests for graybaggage.dye: operators, AND/OR, order, implied lanes, percentage, errors, purity."""

from __future__ import annotations

import ast
import sys
import zlib
from pathlib import Path
from urllib.parse import urlencode

import pytest

from graybaggage._request import ASGIRequestView, HeaderMapView, WSGIRequestView
from graybaggage.dye import (
    MAX_VALUE_LENGTH,
    Condition,
    DyeRules,
    RequestView,
    Rule,
    RuleError,
    parse_lane_table_rules,
    parse_rules,
    percentage_bucket,
    validate_lane_table_rules,
    validate_rules,
)

SEED_RULES = [
    {
        "lane": "gray",
        "match": "all",
        "conditions": [{"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}],
    }
]

EXAMPLE_RULES = SEED_RULES + [
    {
        "lane": "blue",
        "match": "any",
        "conditions": [
            {"type": "cookie", "name": "uid", "operator": "in", "values": ["7", "9"]},
            {"type": "query", "name": "ver", "operator": "prefix", "value": "v2"},
            {"type": "header", "name": "x-user-id", "operator": "regex", "value": "^1[0-9]{3}$"},
            {"type": "header", "name": "x-user-id", "operator": "percentage", "value": 30},
        ],
    }
]


# ------------------------------------------------------------------------------------ request builders


def make_view(
    kind: str,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> RequestView:
    """The same request seen through a WSGI environ, an ASGI scope, or a header mapping."""
    pairs = list((headers or {}).items())
    if cookies:
        pairs.append(("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items())))
    query_string = urlencode(query or {})
    if kind == "wsgi":
        environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": query_string}
        for name, value in pairs:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            # PEP 3333: native strings holding the raw bytes as latin-1.
            environ[key] = value.encode("utf-8").decode("latin-1")
        return WSGIRequestView(environ)
    if kind == "asgi":
        scope = {
            "type": "http",
            "headers": [(n.lower().encode("latin-1"), v.encode("utf-8")) for n, v in pairs],
            "query_string": query_string.encode("ascii"),
        }
        return ASGIRequestView(scope)
    if kind == "map":
        return HeaderMapView(dict(pairs), query_string)
    raise AssertionError(kind)


VIEW_KINDS = ("wsgi", "asgi", "map")


def request_with(kind: str, field: str, name: str, value: str | None) -> RequestView:
    """A request whose header/cookie/query ``name`` is ``value`` (absent when None), plus some noise."""
    headers = {"Host": "a.example", "Accept": "*/*"}
    cookies = {"session": "s1"}
    query = {"page": "1"}
    if value is not None:
        {"header": headers, "cookie": cookies, "query": query}[field][name] = value
    return make_view(kind, headers, cookies, query)


def one_condition(field: str, name: str, operator: str, value) -> DyeRules:
    cond = {"type": field, "name": name, "operator": operator}
    cond["values" if operator == "in" else "value"] = value
    return parse_rules([{"lane": "gray", "conditions": [cond]}])


# ------------------------------------------------------------------------------------------ operators

# (operator, rule value, request value or None for missing, expected)
OPERATOR_CASES = [
    ("==", "xiaoming", "xiaoming", True),
    ("==", "xiaoming", "xiaomin", False),
    ("==", "xiaoming", "Xiaoming", False),  # values are case-sensitive
    ("==", "xiaoming", None, False),
    ("==", "", "", True),  # present and empty equals ""
    ("==", "小明", "小明", True),  # non-ASCII, sent as UTF-8
    ("!=", "prod", "dev", True),
    ("!=", "prod", "prod", False),
    ("!=", "prod", None, False),  # missing: != is false too (documented choice)
    ("in", ["7", "9"], "9", True),
    ("in", ["7", "9"], "8", False),
    ("in", ["7", "9"], "79", False),
    ("in", ["7", "9"], None, False),
    ("prefix", "v2", "v2.1.0", True),
    ("prefix", "v2", "v2", True),
    ("prefix", "v2", "v1.9", False),
    ("prefix", "v2", "V2", False),
    ("prefix", "v2", None, False),
    ("regex", "^1[0-9]{3}$", "1234", True),
    ("regex", "^1[0-9]{3}$", "12345", False),
    ("regex", "^1[0-9]{3}$", "2234", False),
    ("regex", "[0-9]{3}", "ab123cd", True),  # search semantics: may match anywhere
    ("regex", "^1[0-9]{3}$", None, False),
    ("percentage", 100, "anyone", True),
    ("percentage", 100, "", True),
    ("percentage", 0, "anyone", False),
    ("percentage", 30, "user-1", True),  # crc32("user-1") % 100 == 24
    ("percentage", 25, "user-1", True),
    ("percentage", 24, "user-1", False),
    ("percentage", 30, "user-2", False),  # bucket 50
    ("percentage", 51, "user-2", True),
    ("percentage", 21, "小明", True),  # bucket 20 (UTF-8 bytes are hashed)
    ("percentage", 20, "小明", False),
    ("percentage", 100, None, False),
]


@pytest.mark.parametrize("kind", VIEW_KINDS)
@pytest.mark.parametrize("field", ["header", "cookie", "query"])
@pytest.mark.parametrize(("operator", "rule_value", "request_value", "expected"), OPERATOR_CASES)
def test_operator(kind, field, operator, rule_value, request_value, expected):
    name = {"header": "X-Probe", "cookie": "probe", "query": "probe"}[field]
    rules = one_condition(field, name, operator, rule_value)
    request = request_with(kind, field, name, request_value)
    assert rules.evaluate(request) == ("gray" if expected else None)


@pytest.mark.parametrize("kind", VIEW_KINDS)
@pytest.mark.parametrize(
    ("field", "rule_name", "request_name", "expected"),
    [
        ("header", "USER-AGENT", "user-agent", True),
        ("header", "user-agent", "User-Agent", True),
        ("header", "X-User-Id", "x-user-id", True),
        ("cookie", "uid", "uid", True),
        ("cookie", "UID", "uid", False),  # cookie names are case-sensitive
        ("query", "ver", "ver", True),
        ("query", "Ver", "ver", False),  # query parameter names are case-sensitive
    ],
)
def test_name_case(kind, field, rule_name, request_name, expected):
    rules = one_condition(field, rule_name, "==", "x")
    assert rules.evaluate(request_with(kind, field, request_name, "x")) == ("gray" if expected else None)


def test_percentage_bucket_formula():
    for key in ["user-1", "user-2", "alice", "bob", "小明", "", "x" * 100]:
        assert percentage_bucket(key) == zlib.crc32(key.encode("utf-8")) % 100
    # Pinned values: changing the formula would move users between lanes.
    assert [percentage_bucket(k) for k in ["user-1", "user-2", "user-42", "alice", "bob", "1001"]] == [
        24, 50, 35, 35, 4, 33,
    ]


def test_percentage_is_sticky():
    rules = one_condition("header", "x-user-id", "percentage", 30)
    for user in ["user-1", "user-2", "user-42", "bob", "小明"]:
        results = {rules.evaluate(make_view("wsgi", {"x-user-id": user})) for _ in range(100)}
        assert len(results) == 1, user
        expected = "gray" if percentage_bucket(user) < 30 else None
        assert results == {expected}
        # ... and the same through every view
        assert {rules.evaluate(make_view(k, {"x-user-id": user})) for k in VIEW_KINDS} == {expected}


@pytest.mark.parametrize("field", ["header", "cookie"])
def test_percentage_distribution(field):
    name = "x-user-id" if field == "header" else "uid"
    rules = one_condition(field, name, "percentage", 30)
    ids = [f"user-{i}" for i in range(10_000)]
    dyed = sum(rules.evaluate(request_with("wsgi", field, name, uid)) == "gray" for uid in ids)
    share = dyed / len(ids) * 100
    print(f"\n30% {field} rule over 10,000 ids user-0..user-9999: {dyed} dyed = {share:.2f}%")
    assert 28.0 <= share <= 32.0


def test_percentage_distribution_other_thresholds():
    ids = [f"user-{i}" for i in range(10_000)]
    buckets = [percentage_bucket(uid) for uid in ids]
    for n in (1, 10, 50, 90):
        share = sum(b < n for b in buckets) / len(buckets) * 100
        assert abs(share - n) <= 2, (n, share)


# ------------------------------------------------------------------------------------ AND / OR / order

AND_OR_RULE = {
    "lane": "gray",
    "conditions": [
        {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"},
        {"type": "cookie", "name": "region", "operator": "in", "values": ["hz", "sh"]},
    ],
}


@pytest.mark.parametrize("kind", VIEW_KINDS)
@pytest.mark.parametrize(
    ("match", "user_agent", "region", "expected"),
    [
        ("all", "xiaoming", "hz", "gray"),
        ("all", "xiaoming", "bj", None),
        ("all", "xiaoming", None, None),
        ("all", "curl", "hz", None),
        ("all", None, None, None),
        ("any", "xiaoming", "hz", "gray"),
        ("any", "xiaoming", "bj", "gray"),
        ("any", "curl", "sh", "gray"),
        ("any", "curl", "bj", None),
        ("any", None, None, None),
        (None, "xiaoming", "bj", None),  # match defaults to all
        (None, "xiaoming", "sh", "gray"),
    ],
)
def test_and_or(kind, match, user_agent, region, expected):
    rule = dict(AND_OR_RULE)
    if match is not None:
        rule["match"] = match
    rules = parse_rules([rule])
    headers = {"User-Agent": user_agent} if user_agent is not None else {}
    cookies = {"region": region} if region is not None else {}
    assert rules.evaluate(make_view(kind, headers, cookies)) == expected


ORDERED = [
    {"lane": "gray", "conditions": [{"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]},
    {"lane": "blue", "conditions": [{"type": "header", "name": "User-Agent", "operator": "prefix", "value": "xiao"}]},
    {"lane": "gray", "conditions": [{"type": "query", "name": "lane", "operator": "==", "value": "g"}]},
    {"lane": "green", "match": "any", "conditions": [
        {"type": "query", "name": "lane", "operator": "!=", "value": "none"},
        {"type": "cookie", "name": "green", "operator": "==", "value": "1"},
    ]},
]


@pytest.mark.parametrize(
    ("headers", "cookies", "query", "expected"),
    [
        ({"User-Agent": "xiaoming"}, {}, {}, "gray"),  # rules 0 and 1 match: the first wins
        ({"User-Agent": "xiaohong"}, {}, {}, "blue"),
        ({"User-Agent": "xiaohong"}, {}, {"lane": "g"}, "blue"),  # 1 before 2
        ({"User-Agent": "curl"}, {}, {"lane": "g"}, "gray"),
        ({"User-Agent": "curl"}, {}, {"lane": "x"}, "green"),
        ({"User-Agent": "curl"}, {"green": "1"}, {}, "green"),
        ({"User-Agent": "curl"}, {}, {"lane": "none"}, None),
        ({}, {}, {}, None),
    ],
)
@pytest.mark.parametrize("kind", VIEW_KINDS)
def test_first_match_wins(kind, headers, cookies, query, expected):
    assert parse_rules(ORDERED).evaluate(make_view(kind, headers, cookies, query)) == expected


def test_example_rules_from_the_brief():
    rules = parse_rules(EXAMPLE_RULES)
    assert rules.lanes == ("gray", "blue")
    assert rules.evaluate(make_view("wsgi", {"User-Agent": "xiaoming"})) == "gray"
    assert rules.evaluate(make_view("wsgi", {"User-Agent": "curl"}, {"uid": "7"})) == "blue"
    assert rules.evaluate(make_view("asgi", {}, {}, {"ver": "v2.3"})) == "blue"
    assert rules.evaluate(make_view("map", {"X-User-Id": "1234"})) == "blue"
    assert rules.evaluate(make_view("map", {"X-User-Id": "user-1"})) == "blue"  # bucket 24 < 30
    assert rules.evaluate(make_view("map", {"X-User-Id": "user-2"})) is None  # bucket 50
    assert rules.evaluate(make_view("wsgi", {})) is None


# ---------------------------------------------------------------------------------------- implied lane

ENTRY_RULES = [
    {"conditions": [{"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]},
    {"lane": "gray", "match": "any", "conditions": [{"type": "cookie", "name": "g", "operator": "==", "value": "1"}]},
]


def test_implied_lane():
    rules = parse_rules(ENTRY_RULES, lane="gray")
    assert [r.lane for r in rules] == ["gray", "gray"]
    assert rules.lanes == ("gray",)
    assert rules.evaluate(make_view("wsgi", {"User-Agent": "xiaoming"})) == "gray"
    assert rules.evaluate(make_view("wsgi", {}, {"g": "1"})) == "gray"
    # the lane-table entry form
    assert parse_rules({"rules": ENTRY_RULES}, lane="gray") == rules
    assert parse_rules({"rules": []}, lane="gray") is DyeRules.EMPTY
    assert parse_rules({}, lane="gray") is DyeRules.EMPTY


def test_implied_lane_conflict_and_missing():
    with pytest.raises(RuleError) as err:
        parse_rules([{"lane": "blue", "conditions": ENTRY_RULES[0]["conditions"]}], lane="gray")
    assert str(err.value).startswith("rules[0].lane: 'blue' differs from the lane these rules belong to ('gray')")
    with pytest.raises(RuleError) as err:
        parse_rules(ENTRY_RULES)
    assert str(err.value).startswith("rules[0].lane: missing")
    with pytest.raises(RuleError) as err:
        parse_rules(ENTRY_RULES, lane="Gray")
    assert str(err.value).startswith("lane: 'Gray' is not a valid lane")


def test_lane_table_rules():
    table = {
        "version": 1,
        "lanes": {
            "gray": {"routes": {}, "entry": {"rules": ENTRY_RULES}},
            "blue": {"routes": {}},  # no entry
            "green": {"routes": {}, "entry": {"rules": [
                {"conditions": [{"type": "query", "name": "lane", "operator": "==", "value": "green"}]}]}},
        },
    }
    rules = parse_lane_table_rules(table)
    assert rules.lanes == ("gray", "green")
    assert rules.evaluate(make_view("wsgi", {}, {}, {"lane": "green"})) == "green"
    assert validate_lane_table_rules(table) == []

    table["lanes"]["green"]["entry"]["rules"][0]["lane"] = "gray"
    table["lanes"]["gray"]["entry"]["extra"] = True
    errors = validate_lane_table_rules(table)
    assert errors == [
        "lanes.gray.entry: unknown key 'extra' (allowed: rules)",
        "lanes.green.entry.rules[0].lane: 'gray' differs from the lane these rules belong to ('green')",
    ]
    with pytest.raises(RuleError) as err:
        parse_lane_table_rules(table)
    assert str(err.value) == errors[0]
    assert err.value.errors == tuple(errors)
    assert parse_lane_table_rules({"version": 1, "lanes": {}}) is DyeRules.EMPTY


# ------------------------------------------------------------------------------------------ errors

GOOD_CONDITION = {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}


def rule_with(**overrides):
    rule = {"lane": "gray", "conditions": [dict(GOOD_CONDITION)]}
    for key, value in overrides.items():
        if value is _DELETE:
            rule.pop(key, None)
        else:
            rule[key] = value
    return [rule]


def cond_with(**overrides):
    cond = dict(GOOD_CONDITION)
    for key, value in overrides.items():
        if value is _DELETE:
            cond.pop(key, None)
        else:
            cond[key] = value
    return [{"lane": "gray", "conditions": [dict(GOOD_CONDITION), cond]}]


_DELETE = object()

# (id, data, expected full message or prefix ending in "...")
ERROR_CASES = [
    ("not-a-list", "gray", "rules: expected a list of rules, got string"),
    ("rule-not-object", ["gray"], "rules[0]: expected an object, got string"),
    ("bad-lane-case", rule_with(lane="Gray"),
     "rules[0].lane: 'Gray' is not a valid lane (DNS-1123 label, lowercase, at most 63 characters)"),
    ("bad-lane-long", rule_with(lane="a" * 64),
     f"rules[0].lane: {'a' * 64!r} is not a valid lane (DNS-1123 label, lowercase, at most 63 characters)"),
    ("bad-lane-dash", rule_with(lane="-gray"), "rules[0].lane: '-gray' is not a valid lane ..."),
    ("bad-lane-newline", rule_with(lane="gray\n"), "rules[0].lane: 'gray\\n' is not a valid lane ..."),
    ("lane-type", rule_with(lane=7), "rules[0].lane: expected a string, got int"),
    ("lane-missing", rule_with(lane=_DELETE), "rules[0].lane: missing (required unless the rules belong to a lane)"),
    ("unknown-rule-key", rule_with(when="now"), "rules[0]: unknown key 'when' (allowed: lane, match, conditions)"),
    ("bad-match", rule_with(match="xor"), "rules[0].match: unknown match 'xor' (expected all or any)"),
    ("conditions-missing", rule_with(conditions=_DELETE), "rules[0].conditions: missing ..."),
    ("conditions-empty", rule_with(conditions=[]), "rules[0].conditions: must not be empty"),
    ("conditions-type", rule_with(conditions={"type": "header"}),
     "rules[0].conditions: expected a non-empty list, got object"),
    ("condition-not-object", rule_with(conditions=[None]), "rules[0].conditions[0]: expected an object, got null"),
    ("unknown-operator", cond_with(operator="=~"),
     "rules[0].conditions[1].operator: unknown operator '=~' (expected one of ==, !=, in, prefix, regex, percentage)"),
    ("operator-missing", cond_with(operator=_DELETE), "rules[0].conditions[1].operator: missing ..."),
    ("unknown-type", cond_with(type="body"),
     "rules[0].conditions[1].type: unknown type 'body' (expected one of header, cookie, query)"),
    ("type-missing", cond_with(type=_DELETE), "rules[0].conditions[1].type: missing ..."),
    ("name-empty", cond_with(name=""), "rules[0].conditions[1].name: must not be empty"),
    ("name-type", cond_with(name=["a"]), "rules[0].conditions[1].name: expected a non-empty string, got list"),
    ("name-missing", cond_with(name=_DELETE), "rules[0].conditions[1].name: missing ..."),
    ("header-name-invalid", cond_with(name="User Agent"),
     "rules[0].conditions[1].name: 'User Agent' is not a valid header name"),
    ("unknown-condition-key", cond_with(vaule="x"),
     "rules[0].conditions[1]: unknown key 'vaule' (allowed: type, name, operator, value, values)"),
    ("unknown-condition-keys", cond_with(a=1, b=2), "rules[0].conditions[1]: unknown keys 'a', 'b' ..."),
    ("value-missing", cond_with(value=_DELETE),
     "rules[0].conditions[1].value: missing (operator '==' needs a string)"),
    ("value-type", cond_with(value=7), "rules[0].conditions[1].value: expected a string, got int"),
    ("values-with-eq", cond_with(values=["a"]),
     "rules[0].conditions[1].values: only used by operator 'in' (use 'value' with '==')"),
    ("in-without-values", cond_with(operator="in"), "rules[0].conditions[1].value: not used by operator 'in' ..."),
    ("in-values-missing", cond_with(operator="in", value=_DELETE),
     "rules[0].conditions[1].values: missing (operator 'in' needs a non-empty list of strings)"),
    ("in-values-empty", cond_with(operator="in", value=_DELETE, values=[]),
     "rules[0].conditions[1].values: must not be empty"),
    ("in-values-type", cond_with(operator="in", value=_DELETE, values="7,9"),
     "rules[0].conditions[1].values: expected a non-empty list of strings, got string"),
    ("in-values-item", cond_with(operator="in", value=_DELETE, values=["7", 9]),
     "rules[0].conditions[1].values[1]: expected a string, got int"),
    ("bad-regex", cond_with(operator="regex", value="(unclosed"),
     ("rules[0].conditions[1].value: invalid regular expression '(unclosed': missing ), unterminated subpattern "
      "at position 0")),
    ("percentage-high", cond_with(operator="percentage", value=101),
     "rules[0].conditions[1].value: percentage 101 out of range 0..100"),
    ("percentage-negative", cond_with(operator="percentage", value=-1),
     "rules[0].conditions[1].value: percentage -1 out of range 0..100"),
    ("percentage-float", cond_with(operator="percentage", value=30.5),
     "rules[0].conditions[1].value: percentage must be an integer 0..100, got float 30.5"),
    ("percentage-string", cond_with(operator="percentage", value="30"),
     "rules[0].conditions[1].value: percentage must be an integer 0..100, got string '30'"),
    ("percentage-bool", cond_with(operator="percentage", value=True),
     "rules[0].conditions[1].value: percentage must be an integer 0..100, got bool True"),
    ("entry-unknown-key", {"rules": [], "lane": "gray"}, "entry: unknown key 'lane' (allowed: rules)"),
    ("second-rule", SEED_RULES + rule_with(match="both"), "rules[1].match: unknown match 'both' ..."),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_rules(data, expected):
    with pytest.raises(RuleError) as err:
        parse_rules(data)
    message = str(err.value)
    if expected.endswith("..."):
        assert message.startswith(expected[:-3].rstrip()), message
    else:
        assert message == expected
    assert isinstance(err.value, ValueError)
    assert validate_rules(data)[0] == message
    assert err.value.errors == tuple(validate_rules(data))


def test_validate_rules_returns_every_error():
    data = [
        {"lane": "Gray", "match": "xor", "extra": 1, "conditions": [
            {"type": "body", "name": "", "operator": "=~", "value": "x"},
            {"type": "header", "name": "x-user-id", "operator": "percentage", "value": 300},
            {"type": "header", "name": "x-user-id", "operator": "regex", "value": "["},
        ]},
        SEED_RULES[0],  # valid
        {"lane": "blue", "conditions": []},
        "nope",
    ]
    errors = validate_rules(data)
    assert [e.split(": ", 1)[0] for e in errors] == [
        "rules[0]",  # unknown key 'extra'
        "rules[0].lane",
        "rules[0].match",
        "rules[0].conditions[0].type",
        "rules[0].conditions[0].name",
        "rules[0].conditions[0].operator",
        "rules[0].conditions[1].value",
        "rules[0].conditions[2].value",
        "rules[2].conditions",
        "rules[3]",
    ]
    assert "unknown key 'extra'" in errors[0]
    assert "unterminated character set" in errors[7]
    with pytest.raises(RuleError) as err:
        parse_rules(data)
    assert str(err.value) == errors[0]
    assert list(err.value.errors) == errors
    assert validate_rules(SEED_RULES) == []
    assert validate_rules(EXAMPLE_RULES) == []
    assert validate_rules(None) == []
    assert validate_rules([{"conditions": [GOOD_CONDITION]}], "gray") == []


def test_custom_error_path_prefix():
    assert validate_rules([{"conditions": []}], "gray", path="GRAYBAGGAGE_DYE_RULES") == [
        "GRAYBAGGAGE_DYE_RULES[0].conditions: must not be empty"
    ]


# ---------------------------------------------------------------------------------------- DyeRules


def test_empty_rules():
    for data in ([], None, {"rules": []}):
        rules = parse_rules(data)
        assert rules is DyeRules.EMPTY
    assert not DyeRules.EMPTY
    assert len(DyeRules.EMPTY) == 0
    assert DyeRules.EMPTY.lanes == ()
    assert DyeRules.EMPTY.evaluate(make_view("wsgi", {"User-Agent": "xiaoming"})) is None
    assert DyeRules() == DyeRules.EMPTY


def test_rules_object():
    rules = parse_rules(EXAMPLE_RULES)
    assert rules
    assert len(rules) == 2
    assert [r.lane for r in rules] == ["gray", "blue"]
    assert rules.rules[1].match == "any"
    cond = rules.rules[1].conditions[0]
    assert (cond.type, cond.name, cond.operator, cond.value) == ("cookie", "uid", "in", ("7", "9"))
    # round trip through the normalised JSON form (match "all" is filled in)
    assert parse_rules(rules.to_data()) == rules
    assert rules.to_data()[0]["match"] == "all"
    assert hash(parse_rules(EXAMPLE_RULES)) == hash(rules)
    assert parse_rules(SEED_RULES) != rules
    assert "xiaoming" in repr(rules)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: setattr(r, "rules", ()),
        lambda r: setattr(r.rules[0], "lane", "blue"),
        lambda r: setattr(r.rules[0].conditions[0], "value", "x"),
        lambda r: delattr(r.rules[0], "lane"),
    ],
)
def test_rules_are_immutable(mutate):
    rules = parse_rules(SEED_RULES)
    with pytest.raises(AttributeError):
        mutate(rules)
    assert rules.evaluate(make_view("wsgi", {"User-Agent": "xiaoming"})) == "gray"


def test_merged():
    first = parse_rules(SEED_RULES)
    second = parse_rules([
        {"lane": "blue", "conditions": [{"type": "header", "name": "User-Agent", "operator": "prefix", "value": "x"}]},
    ])
    both = first.merged(second)
    assert both.lanes == ("gray", "blue")
    assert both.evaluate(make_view("wsgi", {"User-Agent": "xiaoming"})) == "gray"
    assert second.merged(first).evaluate(make_view("wsgi", {"User-Agent": "xiaoming"})) == "blue"
    assert both.evaluate(make_view("wsgi", {"User-Agent": "xiaohong"})) == "blue"
    assert first.merged(DyeRules.EMPTY) is first
    assert DyeRules.EMPTY.merged(first) is first
    assert len(first) == 1 and len(second) == 1  # operands unchanged
    with pytest.raises(TypeError):
        first.merged(SEED_RULES)


def test_rules_built_by_hand():
    rules = DyeRules([Rule("gray", "any", [Condition("query", "lane", "==", "gray")])])
    assert rules.evaluate(make_view("wsgi", query={"lane": "gray"})) == "gray"
    with pytest.raises(TypeError):
        DyeRules([SEED_RULES[0]])


# -------------------------------------------------------------------------------- evaluation details


class CountingView:
    """A RequestView that records which lookups evaluate() made."""

    def __init__(self, headers=None, cookies=None, query=None):
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.cookies = cookies or {}
        self.queries = query or {}
        self.calls: list[tuple[str, str]] = []

    def header(self, name):
        self.calls.append(("header", name))
        return self.headers.get(name.lower())

    def cookie(self, name):
        self.calls.append(("cookie", name))
        return self.cookies.get(name)

    def query(self, name):
        self.calls.append(("query", name))
        return self.queries.get(name)


def test_request_view_protocol():
    assert isinstance(CountingView(), RequestView)
    for kind in VIEW_KINDS:
        assert isinstance(make_view(kind), RequestView)


def test_short_circuit_and_lookups():
    rules = parse_rules([
        {"lane": "gray", "conditions": [
            {"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"},
            {"type": "cookie", "name": "uid", "operator": "==", "value": "7"},
        ]},
        {"lane": "blue", "match": "any", "conditions": [
            {"type": "query", "name": "v", "operator": "==", "value": "2"},
            {"type": "cookie", "name": "uid", "operator": "==", "value": "7"},
        ]},
    ])
    view = CountingView({"User-Agent": "curl"})
    assert rules.evaluate(view) is None
    # AND stops at the first false condition; names are handed to the view pre-lowered for headers
    assert view.calls == [("header", "user-agent"), ("query", "v"), ("cookie", "uid")]
    view = CountingView({"User-Agent": "curl"}, query={"v": "2"})
    assert rules.evaluate(view) == "blue"
    assert view.calls == [("header", "user-agent"), ("query", "v")]  # OR stops at the first true one


def test_cookies_and_query_parsed_only_when_needed():
    environ = {"HTTP_USER_AGENT": "xiaoming", "HTTP_COOKIE": "uid=7", "QUERY_STRING": "v=2"}
    view = WSGIRequestView(environ)
    assert parse_rules(SEED_RULES).evaluate(view) == "gray"
    assert view._cookies is None and view._query is None
    assert one_condition("cookie", "uid", "==", "7").evaluate(view) == "gray"
    assert view._cookies == {"uid": "7"} and view._query is None


@pytest.mark.parametrize("field", ["header", "cookie", "query"])
@pytest.mark.parametrize(("operator", "value"), [("==", "x" * 5000), ("!=", "y"), ("prefix", "x"), ("percentage", 100)])
def test_oversized_values_from_any_view_are_missing(field, operator, value):
    """Even a custom view that does not apply the limit: evaluate() treats long values as missing."""
    long_value = "x" * (MAX_VALUE_LENGTH + 1)
    store = {"header": "headers", "cookie": "cookies", "query": "queries"}[field]
    view = CountingView()
    getattr(view, store)["k"] = long_value
    assert one_condition(field, "k", operator, value).evaluate(view) is None
    getattr(view, store)["k"] = "x" * MAX_VALUE_LENGTH
    expected = None if value == "x" * 5000 else "gray"
    assert one_condition(field, "k", operator, value).evaluate(view) == expected


# ------------------------------------------------------------------------------------------- purity


def test_dye_module_is_pure_stdlib():
    from graybaggage import dye

    tree = ast.parse(Path(dye.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert not imported & {"os", "logging", "io", "socket", "pathlib", "threading"}, imported
    source = Path(dye.__file__).read_text(encoding="utf-8")
    assert "os.environ" not in source and "getenv" not in source and "open(" not in source
    assert "global " not in source


def test_validation_never_raises_on_junk():
    """Whatever the config holds, validate_rules reports strings and parse_rules raises only RuleError."""
    import random

    rng = random.Random(4)
    atoms = [None, True, 0, 7, -1, 101, 30.5, "", "gray", "Gray", "==", "in", "regex", "(", "header", [], {}, ["7"]]
    keys = ["lane", "match", "conditions", "type", "name", "operator", "value", "values", "rules", "x", 1]

    def junk(depth):
        roll = rng.random()
        if depth <= 0 or roll < 0.4:
            return rng.choice(atoms)
        if roll < 0.7:
            return [junk(depth - 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(keys): junk(depth - 1) for _ in range(rng.randint(0, 5))}

    for _ in range(3000):
        data = junk(4)
        lane = rng.choice([None, "gray", "Bad!"])
        errors = validate_rules(data, lane)
        assert all(isinstance(e, str) and ": " in e for e in errors)
        try:
            rules = parse_rules(data, lane=lane)
        except RuleError as exc:
            assert list(exc.errors) == errors
        else:
            assert errors == []
            assert rules.evaluate(CountingView({"User-Agent": "gray"}, {"uid": "7"}, {"v": "2"})) in (None, *rules.lanes)
