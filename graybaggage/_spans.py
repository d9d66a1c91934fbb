"""Lane attributes on every span (when an OpenTelemetry SDK is in use): the request lane and the
instance lane, read from the span's parent context at start. SDK imported lazily."""
from __future__ import annotations

from typing import Any

from graybaggage.lane import BASE, get_lane
from graybaggage.routing import ATTR_INSTANCE_LANE, ATTR_LANE


def add_span_processor(provider: Any, header: str, instance_lane: str) -> bool:
    """Attach the lane span processor to an SDK ``TracerProvider``; False if ``provider`` is not one."""
    if not hasattr(provider, "add_span_processor"):
        return False
    if getattr(provider, "_graybaggage_processor", False):
        return False
    from opentelemetry.sdk.trace import SpanProcessor

    class LaneSpanProcessor(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            # Two set_attribute calls: set_attributes(dict) is slower (the SDK checks a mapping against the
            # Sequence and Mapping ABCs before cleaning it).
            span.set_attribute(ATTR_LANE, get_lane(header, parent_context) or BASE)
            span.set_attribute(ATTR_INSTANCE_LANE, instance_lane)

    provider.add_span_processor(LaneSpanProcessor())
    provider._graybaggage_processor = True
    return True


ATTR_ORIGINAL_URL = "graybaggage.route.original_url"
_URL_KEYS = ("url.full", "http.url")  # stable and old HTTP semantic conventions
_HOST_KEYS = ("server.address", "net.peer.name")
_PORT_KEYS = ("server.port", "net.peer.port")


def _with_authority(url: str, host: str, port: int | None) -> str:
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != {"http": 80, "https": 443}.get(u.scheme):
        netloc += f":{port}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def reroute_attributes(attributes: Any, host: str, port: int | None) -> dict[str, Any]:
    """The attributes a client span must change after its call went to ``host:port`` instead of the URL the
    span was started with, following the HTTP semantic conventions in use on the span (stable ``url.full`` /
    ``server.address`` / ``server.port``, old ``http.url`` / ``net.peer.name`` / ``net.peer.port``, or both).
    The original URL is kept in ``graybaggage.route.original_url``. Pure: ``attributes`` is only read."""
    out: dict[str, Any] = {}
    for key in _URL_KEYS:
        url = attributes.get(key)
        if isinstance(url, str) and url:
            out[key] = _with_authority(url, host, port)
            out.setdefault(ATTR_ORIGINAL_URL, url)
    for key in _HOST_KEYS:
        if key in attributes:
            out[key] = host
    for key in _PORT_KEYS:
        if key in attributes and port is not None:
            out[key] = port
    if "http.host" in attributes:  # old conventions: the Host header value
        name = f"[{host}]" if ":" in host else host
        out["http.host"] = f"{name}:{port}" if port is not None else name
    return out


def client_span_reroute(span: Any, host: str, port: int | None) -> dict[str, Any]:
    """:func:`reroute_attributes` for ``span`` when it is the client span of the re-routed call (an SDK span of
    kind CLIENT), else nothing: a server span, or a span graybaggage cannot read, is never changed."""
    from opentelemetry.trace import SpanKind

    if getattr(span, "kind", None) is not SpanKind.CLIENT:
        return {}
    attributes = getattr(span, "attributes", None)
    if attributes is None:
        return {}
    return reroute_attributes(attributes, host, port)
