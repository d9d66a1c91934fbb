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
