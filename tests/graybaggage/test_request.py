"""Tests for graybaggage._request: the WSGI, ASGI and header-mapping request views."""

from __future__ import annotations

import pytest

from graybaggage._request import (
    ASGIRequestView,
    HeaderMapView,
    WSGIRequestView,
    parse_cookie_header,
    parse_query_string,
)
from graybaggage.dye import MAX_VALUE_LENGTH, parse_rules


def wsgi(pairs, query_string=""):
    """An environ as a WSGI server builds it: latin-1 native strings, duplicates joined with ','."""
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": query_string}
    for name, value in pairs:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        raw = value.encode("utf-8").decode("latin-1") if isinstance(value, str) else value.decode("latin-1")
        environ[key] = environ[key] + "," + raw if key in environ else raw
    return WSGIRequestView(environ)


def asgi(pairs, query_string=""):
    headers = [
        (name.lower().encode("latin-1"), value.encode("utf-8") if isinstance(value, str) else value)
        for name, value in pairs
    ]
    qs = query_string.encode("utf-8") if isinstance(query_string, str) else query_string
    return ASGIRequestView({"type": "http", "headers": headers, "query_string": qs})


def header_map(pairs, query_string=""):
    return HeaderMapView(list(pairs), query_string)


VIEWS = {"wsgi": wsgi, "asgi": asgi, "map": header_map}


@pytest.fixture(params=sorted(VIEWS))
def make(request):
    return VIEWS[request.param]


# --------------------------------------------------------------------------------------------- headers

HEADER_CASES = [
    # (request header pairs, looked-up name, expected)
    ([("User-Agent", "xiaoming")], "User-Agent", "xiaoming"),
    ([("User-Agent", "xiaoming")], "user-agent", "xiaoming"),
    ([("User-Agent", "xiaoming")], "USER-AGENT", "xiaoming"),
    ([("User-Agent", "xiaoming")], "x-user-id", None),
    ([], "User-Agent", None),
    ([("X-Empty", "")], "x-empty", ""),
    ([("Content-Type", "application/json")], "content-type", "application/json"),
    ([("Content-Length", "12")], "Content-Length", "12"),
    # duplicates: joined with "," like WSGI servers do, in every view
    ([("X-Tag", "a"), ("X-Tag", "b"), ("X-Tag", "c")], "x-tag", "a,b,c"),
    ([("X-Tag", "a"), ("Other", "z"), ("x-tag", "b")], "X-Tag", "a,b"),
    # non-ASCII: UTF-8 on the wire reads back as text
    ([("X-User", "小明")], "x-user", "小明"),
    ([("X-User", "café")], "x-user", "café"),
    # bytes that are not UTF-8 fall back to latin-1
    ([("X-User", b"caf\xe9")], "x-user", "café"),
    # size limit: at most MAX_VALUE_LENGTH characters, longer is missing
    ([("X-Big", "x" * MAX_VALUE_LENGTH)], "x-big", "x" * MAX_VALUE_LENGTH),
    ([("X-Big", "x" * (MAX_VALUE_LENGTH + 1))], "x-big", None),
    ([("X-Big", "x" * 100_000)], "x-big", None),
    ([("X-Big", "小" * MAX_VALUE_LENGTH)], "x-big", "小" * MAX_VALUE_LENGTH),  # characters, not bytes
    ([("X-Big", "x" * 3000), ("X-Big", "y" * 3000)], "x-big", None),  # joined value too long
]


@pytest.mark.parametrize(("pairs", "name", "expected"), HEADER_CASES)
def test_header(make, pairs, name, expected):
    assert make(pairs).header(name) == expected


def test_wsgi_header_details():
    view = WSGIRequestView({"HTTP_X_NUM": 7, "HTTP_X_OK": "ok", "CONTENT_TYPE": "text/plain"})
    assert view.header("x-num") is None  # non-string environ value from a buggy middleware
    assert view.header("X-OK") == "ok"
    assert view.header("content-type") == "text/plain"
    assert view.header("HTTP_X_OK") is None  # no double prefix


def test_asgi_header_details():
    assert ASGIRequestView({"type": "http"}).header("x") is None  # no headers key
    assert ASGIRequestView({"headers": [(b"x", b"1", b"extra")]}).header("x") is None  # malformed: missing
    assert ASGIRequestView({"headers": [(b"x", b"1")]}).header("名") is None  # not latin-1: cannot be sent
    # servers may hand bytearrays / lists
    assert ASGIRequestView({"headers": [[bytearray(b"x-a"), bytearray(b"1")]]}).header("X-A") == "1"


def test_header_map_details():
    assert HeaderMapView({"USER-AGENT": "xiaoming"}).header("user-agent") == "xiaoming"
    assert HeaderMapView({"x-tag": ["a", "b"]}).header("X-Tag") == "a,b"  # list values
    assert HeaderMapView({b"x-tag": b"a"}).header("x-tag") == "a"  # bytes
    assert HeaderMapView({"x-num": 7, 8: "x"}).header("x-num") is None  # ignored junk

    class CaseInsensitiveHeaders:  # werkzeug/starlette style: items() repeats names
        def items(self):
            return [("X-Tag", "a"), ("x-tag", "b")]

    assert HeaderMapView(CaseInsensitiveHeaders()).header("x-tag") == "a,b"


# --------------------------------------------------------------------------------------------- cookies

COOKIE_CASES = [
    # (Cookie header, name, expected)
    ("uid=7", "uid", "7"),
    ("uid=7; region=hz", "region", "hz"),
    ("uid=7;region=hz", "region", "hz"),
    ("  uid = 7 ;  region = hz  ", "region", "hz"),
    ("uid=7", "UID", None),  # names are case-sensitive
    ("uid=7", "region", None),
    ("uid=", "uid", ""),
    ('uid="7"', "uid", "7"),  # one pair of quotes removed
    ('uid="7', "uid", '"7'),
    ("uid=a=b=c", "uid", "a=b=c"),  # split on the first '='
    ("uid=7; uid=8", "uid", "7"),  # first wins
    # malformed pieces are skipped, the rest still parses (SimpleCookie gives up on these)
    ("garbage; uid=7", "uid", "7"),
    ('bad"cookie; uid=7', "uid", "7"),
    ('a=1; b="unterminated; uid=7', "uid", "7"),
    ("=nameless; uid=7", "uid", "7"),
    (";;; ;uid=7;;", "uid", "7"),
    ("a=1, uid=7", "uid", None),  # ',' is not a separator: the value of a is "1, uid=7"
    ("uid=%E5%B0%8F", "uid", "%E5%B0%8F"),  # not URL-decoded
    ("name=小明", "name", "小明"),  # raw UTF-8 bytes in the header
    ("big=" + "x" * (MAX_VALUE_LENGTH + 1) + "; uid=7", "big", None),
    ("big=" + "x" * (MAX_VALUE_LENGTH + 1) + "; uid=7", "uid", "7"),
    ("big=" + "x" * MAX_VALUE_LENGTH, "big", "x" * MAX_VALUE_LENGTH),
    ("", "uid", None),
]


@pytest.mark.parametrize(("header", "name", "expected"), COOKIE_CASES)
def test_cookie(make, header, name, expected):
    assert make([("Cookie", header)]).cookie(name) == expected


def test_no_cookie_header(make):
    assert make([("User-Agent", "x")]).cookie("uid") is None


def test_repeated_cookie_headers_asgi_and_map():
    """HTTP/2 may split Cookie into several headers: they are joined with '; '."""
    pairs = [("cookie", "uid=7"), ("cookie", "region=hz")]
    for make in (asgi, header_map):
        view = make(pairs)
        assert view.cookie("uid") == "7"
        assert view.cookie("region") == "hz"


def test_parse_cookie_header():
    assert parse_cookie_header('a=1; b; =c; d="4"; a=5') == {"a": "1", "d": "4"}


def test_cookies_parsed_lazily_once():
    view = wsgi([("Cookie", "uid=7"), ("User-Agent", "x")], "v=1")
    assert view._cookies is None and view._query is None
    view.header("user-agent")
    assert view._cookies is None and view._query is None
    assert view.cookie("uid") == "7"
    assert view._cookies == {"uid": "7"} and view._query is None
    view._environ["HTTP_COOKIE"] = "uid=8"  # parsed once per view
    assert view.cookie("uid") == "7"


# ----------------------------------------------------------------------------------------------- query

QUERY_CASES = [
    # (raw query string, name, expected)
    ("ver=v2", "ver", "v2"),
    ("a=1&ver=v2&b=3", "ver", "v2"),
    ("ver=1&ver=2", "ver", "1"),  # first value wins
    ("ver=", "ver", ""),  # blank values kept
    ("ver", "ver", ""),
    ("ver=a+b", "ver", "a b"),
    ("ver=a%20b%26c", "ver", "a b&c"),
    ("name=%E5%B0%8F%E6%98%8E", "name", "小明"),
    ("name=小明", "name", "小明"),  # raw UTF-8 (a lenient client)
    ("ver=%zz", "ver", "%zz"),  # bad escape kept literally
    ("ver=%FF", "ver", "\ufffd"),  # bad UTF-8 replaced, never raises
    ("Ver=v2", "ver", None),  # case-sensitive
    ("a=1;ver=v2", "ver", None),  # ';' is not a separator
    ("", "ver", None),
    ("&&=&ver=v2&", "ver", "v2"),
    ("big=" + "x" * (MAX_VALUE_LENGTH + 1) + "&ver=v2", "big", None),
    ("big=" + "x" * (MAX_VALUE_LENGTH + 1) + "&ver=v2", "ver", "v2"),
]


@pytest.mark.parametrize(("query_string", "name", "expected"), QUERY_CASES)
def test_query(make, query_string, name, expected):
    if make is wsgi:
        # PEP 3333: QUERY_STRING holds the raw bytes as latin-1
        query_string = query_string.encode("utf-8").decode("latin-1")
    assert make([], query_string).query(name) == expected


def test_query_details():
    assert ASGIRequestView({"type": "http"}).query("v") is None
    assert ASGIRequestView({"query_string": None}).query("v") is None
    assert WSGIRequestView({}).query("v") is None
    assert HeaderMapView({}, b"v=1").query("v") == "1"
    assert parse_query_string(b"a=1&a=2&b=") == {"a": "1", "b": ""}


# ------------------------------------------------------------------------------------- with dye rules

RULES = parse_rules([
    {"lane": "gray", "conditions": [{"type": "header", "name": "User-Agent", "operator": "==", "value": "xiaoming"}]},
    {"lane": "blue", "match": "any", "conditions": [
        {"type": "cookie", "name": "uid", "operator": "in", "values": ["7", "9"]},
        {"type": "query", "name": "ver", "operator": "prefix", "value": "v2"},
        {"type": "header", "name": "x-tag", "operator": "regex", "value": "(^|,)blue(,|$)"},
    ]},
])


@pytest.mark.parametrize(
    ("pairs", "query_string", "expected"),
    [
        ([("User-Agent", "xiaoming")], "", "gray"),
        ([("user-agent", "xiaoming"), ("Cookie", "uid=7")], "", "gray"),
        ([("User-Agent", "xiaoming "), ("Cookie", "bad; uid=9")], "", "blue"),
        ([("Cookie", 'x="; uid=7')], "", "blue"),
        ([], "ver=v2.1", "blue"),
        ([("X-Tag", "red"), ("X-Tag", "blue")], "", "blue"),  # duplicates joined the same everywhere
        ([("X-Tag", "red"), ("X-Tag", "green")], "", None),
        ([("User-Agent", "x" * (MAX_VALUE_LENGTH + 1))], "ver=v1", None),
        ([], "", None),
    ],
)
def test_views_dye_the_same(make, pairs, query_string, expected):
    assert RULES.evaluate(make(pairs, query_string)) == expected
