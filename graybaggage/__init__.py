"""graybaggage: traffic lanes (end-to-end canary) for Python services, on OpenTelemetry Baggage.

Switch it on without code (``graybaggage run -- python app.py``), or call :func:`instrument`.
The public API is what ``__all__`` lists; everything else is private.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from opentelemetry.context import attach, detach

from graybaggage import config as _config
from graybaggage.lane import baggage_member as _baggage_member
from graybaggage.lane import check_lane as _check_lane
from graybaggage.lane import get_lane as _get_lane
from graybaggage.lane import set_lane as _set_lane
from graybaggage.routing import LaneUnavailableError

__version__ = "0.1.0"
__all__ = [
    "LaneUnavailableError",
    "current_lane",
    "forward_headers",
    "instance_lane",
    "instrument",
    "lane",
    "uninstrument",
    "__version__",
]


def current_lane() -> str | None:
    """The lane of the request being handled (None for base)."""
    return _get_lane(_config.get_settings().header)


def instance_lane() -> str:
    """The lane this process serves (``GRAYBAGGAGE_LANE``, ``MSE_ALICLOUD_SERVICE_TAG`` or ``base``)."""
    return _config.get_settings().instance_lane


@contextlib.contextmanager
def lane(name: str | None) -> Iterator[str | None]:
    """Run a block in lane ``name`` (None: base), e.g. in batch jobs and tests.

    Raises ValueError for a name that is not a valid lane.
    """
    settings = _config.get_settings()
    if name is not None:
        valid, problem = _check_lane(name, settings.allowed_lanes)
        if valid is None:
            raise ValueError(f"{name!r} is not a valid lane ({problem}); lanes are DNS-1123 labels of at most 63 characters")
    token = attach(_set_lane(settings.header, name))
    try:
        yield name
    finally:
        detach(token)


def forward_headers() -> dict[str, str]:
    """Headers that carry the current lane, for clients graybaggage does not instrument ({} on base)."""
    settings = _config.get_settings()
    current = _get_lane(settings.header)
    if current is None:
        return {}
    return {settings.header: current, "baggage": _baggage_member(settings.header, current)}


def instrument(**settings: Any) -> None:
    """Switch lanes on in this process: the same as auto-instrumentation with the graybaggage distro.

    Keyword arguments override the environment (names as in :class:`graybaggage.config.Settings`,
    e.g. ``instrument(edge=True, table_file="lanes.json")``).
    """
    from graybaggage import _bootstrap

    _bootstrap.instrument(**settings)


def uninstrument() -> None:
    """Undo :func:`instrument`: remove every graybaggage patch and stop the lane-table source."""
    from graybaggage import _bootstrap

    _bootstrap.uninstrument()
