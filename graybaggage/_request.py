"""Read-only request views for the dye rules (:class:`graybaggage.dye.RequestView`).

Pure: each view only reads the WSGI environ / ASGI scope / header mapping it was given. Cookies and the
query string are parsed lazily, once, on the first ``cookie()`` / ``query()`` call, so rules that only look
at headers never pay for them.

Shared behaviour, so that a rule means the same thing behind every server:

* ``header(name)`` is case-insensitive. Repeated headers are joined with ``","`` (what WSGI servers such as
  gunicorn and werkzeug do); repeated ``Cookie`` headers (HTTP/2) are joined with ``"; "``.
* Text: header bytes are decoded as UTF-8 when they are valid UTF-8, else as latin-1. A WSGI environ holds
  latin-1-decoded native strings; they are re-read the same way, so ``User-Agent: 小明`` sent as UTF-8
  compares equal to the rule value ``"小明"`` under WSGI and ASGI alike.
* Values longer than :data:`graybaggage.dye.MAX_VALUE_LENGTH` characters are treated as missing (``None``).
* Cookies: ``Cookie`` is split on ``;``, each piece on its first ``=``; names and values are stripped, one
  pair of surrounding double quotes is removed, pieces without ``=`` or without a name are skipped, and the
  first occurrence of a name wins. Values are not URL-decoded. (``http.cookies.SimpleCookie`` is not used:
  it drops every cookie after a malformed one.)
* Query: :func:`urllib.parse.parse_qs` with ``keep_blank_values=True`` (``?a=`` gives ``""``, ``?a`` gives
  ``""``); the first value of a repeated parameter wins; ``+`` means space; percent-escapes are UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

from .dye import MAX_VALUE_LENGTH

__all__ = [
    "ASGIRequestView",
    "HeaderMapView",
    "WSGIRequestView",
    "parse_cookie_header",
    "parse_query_string",
]

_WSGI_UNPREFIXED = frozenset(("CONTENT_TYPE", "CONTENT_LENGTH"))


def _decode(raw: bytes) -> str:
    """UTF-8 when valid, else latin-1 (which never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text(raw: str) -> str:
    """Re-read a latin-1 "bytes as str" value (WSGI native string) as UTF-8 when it is valid UTF-8."""
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:  # characters above U+00FF (already real text) or not UTF-8: keep as is
        return raw


def _limited(value: str | None) -> str | None:
    if value is None or len(value) > MAX_VALUE_LENGTH:
        return None
    return value


def parse_cookie_header(header: str) -> dict[str, str]:
    """``name -> value`` from a ``Cookie`` header value, tolerant of malformed pieces (see module doc)."""
    cookies: dict[str, str] = {}
    for piece in header.split(";"):
        name, sep, value = piece.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name or name in cookies:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return cookies


def parse_query_string(query_string: str | bytes) -> dict[str, str]:
    """``name -> first value`` from a raw query string (``str`` as in WSGI, or ``bytes`` as in ASGI)."""
    if isinstance(query_string, (bytes, bytearray, memoryview)):
        text = _decode(bytes(query_string))
    else:
        text = _text(query_string)
    if not text:
        return {}
    try:
        parsed = parse_qs(text, keep_blank_values=True, encoding="utf-8", errors="replace")
    except ValueError:  # defensive: parse_qs is not strict by default, but never let a bad URL raise
        return {}
    return {name: values[0] for name, values in parsed.items() if values}


class _LazyCookiesAndQuery:
    """Shared lazy ``cookie()`` / ``query()`` on top of ``_cookie_header()`` / ``_query_string()``."""

    __slots__ = ("_cookies", "_query")

    def __init__(self) -> None:
        self._cookies: dict[str, str] | None = None
        self._query: dict[str, str] | None = None

    def _cookie_header(self) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _query_string(self) -> str | bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def cookie(self, name: str) -> str | None:
        cookies = self._cookies
        if cookies is None:
            header = self._cookie_header()
            cookies = self._cookies = parse_cookie_header(header) if header else {}
        return _limited(cookies.get(name))

    def query(self, name: str) -> str | None:
        query = self._query
        if query is None:
            query = self._query = parse_query_string(self._query_string())
        return _limited(query.get(name))


class WSGIRequestView(_LazyCookiesAndQuery):
    """A :class:`~graybaggage.dye.RequestView` over a WSGI environ (PEP 3333)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        super().__init__()
        self._environ = environ

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key not in _WSGI_UNPREFIXED:
            key = "HTTP_" + key
        raw = self._environ.get(key)
        if not isinstance(raw, str):
            return None
        return _limited(_text(raw))

    def _cookie_header(self) -> str | None:
        raw = self._environ.get("HTTP_COOKIE")
        return _text(raw) if isinstance(raw, str) else None

    def _query_string(self) -> str | bytes:
        raw = self._environ.get("QUERY_STRING")
        return raw if isinstance(raw, (str, bytes)) else ""


class ASGIRequestView(_LazyCookiesAndQuery):
    """A :class:`~graybaggage.dye.RequestView` over an ASGI HTTP scope (``headers``, ``query_string``)."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Mapping[str, Any]) -> None:
        super().__init__()
        self._scope = scope

    def _lookup(self, key: bytes) -> bytes | None:
        # A linear scan: a request has a handful of headers and a rule looks at one or two, so this is
        # cheaper than building a dict per request. ASGI servers send lowercase names (the spec requires it).
        found: bytes | None = None
        try:
            for name, value in self._scope.get("headers") or ():
                if name == key:
                    if found is None:
                        found = bytes(value)
                    else:
                        found = found + (b"; " if key == b"cookie" else b",") + bytes(value)
        except (TypeError, ValueError):
            return None  # a malformed header list from a buggy server: treat as missing, never fail
        return found

    def header(self, name: str) -> str | None:
        try:
            key = name.lower().encode("latin-1")
        except UnicodeEncodeError:
            return None
        raw = self._lookup(key)
        if raw is None or len(raw) > 4 * MAX_VALUE_LENGTH:  # cheap bound before decoding
            return None
        return _limited(_decode(raw))

    def _cookie_header(self) -> str | None:
        raw = self._lookup(b"cookie")
        return _decode(raw) if raw is not None else None

    def _query_string(self) -> str | bytes:
        raw = self._scope.get("query_string")
        if isinstance(raw, (bytes, bytearray)):
            return bytes(raw)
        return raw if isinstance(raw, str) else b""


class HeaderMapView(_LazyCookiesAndQuery):
    """A :class:`~graybaggage.dye.RequestView` over a header mapping and an optional raw query string.

    ``mapping`` may be a plain ``dict``, any case-insensitive mapping (werkzeug/starlette ``Headers``,
    requests' ``CaseInsensitiveDict``), or an iterable of ``(name, value)`` pairs. Names are matched
    case-insensitively; values may be ``str``, ``bytes`` or a list of them; repeated names (from ``items()``
    or a list value) are joined with ``","`` (``"; "`` for ``Cookie``).
    """

    __slots__ = ("_headers", "_query_raw", "_source")

    def __init__(
        self,
        mapping: Mapping[str, Any] | Iterable[tuple[str, Any]],
        query_string: str | bytes = "",
    ) -> None:
        super().__init__()
        self._source = mapping
        self._query_raw = query_string
        self._headers: dict[str, str] | None = None

    def _header_map(self) -> dict[str, str]:
        headers = self._headers
        if headers is None:
            headers = {}
            source = self._source
            items = source.items() if hasattr(source, "items") else source
            for key, value in items:
                if isinstance(key, (bytes, bytearray)):
                    key = _decode(bytes(key))
                elif not isinstance(key, str):
                    continue
                key = key.lower()
                if isinstance(value, str):
                    text = value if value.isascii() else _text(value)
                elif isinstance(value, (bytes, bytearray)):
                    text = _decode(bytes(value))
                elif isinstance(value, (list, tuple)):
                    parts = [
                        _decode(bytes(v)) if isinstance(v, (bytes, bytearray)) else _text(v)
                        for v in value
                        if isinstance(v, (str, bytes, bytearray))
                    ]
                    if not parts:
                        continue
                    text = ("; " if key == "cookie" else ",").join(parts)
                else:
                    continue
                old = headers.get(key)
                headers[key] = text if old is None else old + ("; " if key == "cookie" else ",") + text
            self._headers = headers
        return headers

    def header(self, name: str) -> str | None:
        return _limited(self._header_map().get(name.lower()))

    def _cookie_header(self) -> str | None:
        return self._header_map().get("cookie")

    def _query_string(self) -> str | bytes:
        return self._query_raw
