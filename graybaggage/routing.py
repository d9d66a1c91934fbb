"""Outbound routing policy: route decisions, fallback, marking lane targets down, and visibility.

The decision itself is the pure :meth:`graybaggage.table.LaneTable.decide`; this module adds the small
amount of process state that fallback needs (failure counts, a clock) and the telemetry of each decision.
Client integrations call :func:`send` / :func:`send_async` around their own "send to this URL" step.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Awaitable, Callable, TypeVar

from opentelemetry import trace

from graybaggage._log import log_once
from graybaggage.table import LaneTable, Route

_logger = logging.getLogger(__name__)
T = TypeVar("T")

# Outcomes (metric attribute values)
ROUTED = "routed"
FALLBACK = "fallback"
FALLBACK_DOWN = "fallback_down"
STRICT_ERROR = "strict_error"

ATTR_LANE = "graybaggage.lane"
ATTR_INSTANCE_LANE = "graybaggage.instance_lane"
ATTR_TARGET = "graybaggage.route.target"
ATTR_DESTINATION = "graybaggage.route.destination"
ATTR_FALLBACK = "graybaggage.route.fallback"
ATTR_OUTCOME = "graybaggage.route.outcome"


class LaneUnavailableError(ConnectionError):
    """Raised (as a subclass of the client's own connection error) in ``strict`` mode."""


def strict_message(route: Route, cause: BaseException | None) -> str:
    why = f": {cause}" if cause is not None else " (marked down after repeated connect failures)"
    return (
        f"graybaggage: lane {route.lane!r} target {route.authority} for {route.destination} "
        f"is unavailable and the lane's fallback is strict{why}"
    )


class Router:
    """Route decisions against the current lane table, with a per-target down-marker."""

    def __init__(
        self,
        table: Callable[[], LaneTable],
        namespace: str = "default",
        failures_to_down: int = 2,
        down_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = table
        self.namespace = namespace
        self.failures_to_down = failures_to_down
        self.down_seconds = down_seconds
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._counter: Any = None

    @property
    def table(self) -> LaneTable:
        return self._table()

    def routes_lane(self, lane: str) -> bool:
        """True when the lane table routes anything for ``lane`` (else no call in it needs a decision)."""
        return self._table().routes_lane(lane)

    def decide(self, lane: str | None, host: str, port: int | None) -> Route | None:
        if lane is None:
            return None
        return self._table().decide(lane, host, port, self.namespace)

    # -- target health --------------------------------------------------------------------------
    def is_down(self, route: Route) -> bool:
        until = self._down_until.get(route.authority)
        if until is None:
            return False
        if self._clock() >= until:
            with self._lock:
                self._down_until.pop(route.authority, None)
                self._failures.pop(route.authority, None)
            return False
        return True

    def failed(self, route: Route) -> None:
        with self._lock:
            n = self._failures.get(route.authority, 0) + 1
            self._failures[route.authority] = n
            if n >= self.failures_to_down and self.down_seconds > 0:
                self._down_until[route.authority] = self._clock() + self.down_seconds
                _logger.warning(
                    "graybaggage: lane %r target %s failed %d connects in a row; marked down for %.1fs",
                    route.lane, route.authority, n, self.down_seconds,
                )

    def succeeded(self, route: Route) -> None:
        if route.authority in self._failures:
            with self._lock:
                self._failures.pop(route.authority, None)

    # -- visibility -----------------------------------------------------------------------------
    def retried(self, route: Route) -> None:
        """A safe call is being retried once on its target (a span event; the call's outcome is recorded
        once, after the retry)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("graybaggage.retry", {ATTR_LANE: route.lane, ATTR_TARGET: route.authority})
        log_once(_logger, f"retry:{route.authority}",
                 "graybaggage: lane %r target %s closed a connection before answering a safe request; retried once",
                 route.lane, route.authority, level=logging.INFO)

    def record(self, route: Route, outcome: str) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            attributes = {
                ATTR_LANE: route.lane,
                ATTR_DESTINATION: route.destination,
                ATTR_TARGET: route.authority,
                ATTR_FALLBACK: outcome in (FALLBACK, FALLBACK_DOWN),
                ATTR_OUTCOME: outcome,
            }
            if outcome == ROUTED:  # the URL actually requested is the target's (semantic conventions)
                from graybaggage._spans import client_span_reroute

                attributes.update(client_span_reroute(span, route.host, route.port))
            span.set_attributes(attributes)
        counter = self._counter
        if counter is None:
            from opentelemetry import metrics

            counter = self._counter = metrics.get_meter("graybaggage").create_counter(
                "graybaggage.routed_calls", unit="{call}",
                description="Outbound calls whose lane had a target for the destination, by outcome",
            )
        counter.add(1, {"lane": route.lane, "target": route.authority, "outcome": outcome})
        if outcome in (FALLBACK, FALLBACK_DOWN):
            log_once(_logger, f"fallback:{route.authority}",
                     "graybaggage: lane %r target %s unavailable; falling back to %s", route.lane, route.authority,
                     route.destination, level=logging.INFO)


def strict_error_class(native: type[BaseException]) -> type[BaseException]:
    """A ``LaneUnavailableError`` that is also the client's own connection error ``native`` (cached)."""
    cls = _strict_classes.get(native)
    if cls is None:  # named like the public class: tracebacks say LaneUnavailableError, as the docs do
        cls = _strict_classes[native] = type("LaneUnavailableError", (native, LaneUnavailableError),
                                             {"__module__": LaneUnavailableError.__module__})
    return cls


_strict_classes: dict[type[BaseException], type[BaseException]] = {}


def _skip_down_target(router: Router, route: Route, strict_error: Callable[[str, BaseException | None], BaseException]) -> None:
    if route.fallback == "strict":
        router.record(route, STRICT_ERROR)
        raise strict_error(strict_message(route, None), None)
    router.record(route, FALLBACK_DOWN)


def _target_failed(router: Router, route: Route, exc: Exception, can_fall_back: Callable[[BaseException], bool],
                   strict_error: Callable[[str, BaseException | None], BaseException]) -> None:
    """Re-raise what must not fall back; otherwise count the failure and apply the lane's fallback mode."""
    if not can_fall_back(exc):
        raise exc
    router.failed(route)
    if route.fallback == "strict":
        router.record(route, STRICT_ERROR)
        raise strict_error(strict_message(route, exc), exc) from exc
    router.record(route, FALLBACK)


def send(
    router: Router,
    route: Route,
    to_target: Callable[[], T],
    to_base: Callable[[], T],
    can_fall_back: Callable[[BaseException], bool],
    strict_error: Callable[[str, BaseException | None], BaseException],
    retry: Callable[[BaseException], bool] | None = None,
) -> T:
    """Send to the lane target; on a failure ``can_fall_back`` accepts (the connection was never made, or
    a safe request got no complete response from a closing connection), mark it and apply the lane's fallback.

    A failure ``retry`` accepts (a safe request whose connection closed before any response byte: most often
    a kept-alive connection the target closed while the request was on its way) is first retried once on the
    same target; the failed connection is gone from the client's pool, so the retry takes another one."""
    if router.is_down(route):
        _skip_down_target(router, route, strict_error)
        return to_base()
    try:
        result = to_target()
    except Exception as exc:
        if retry is None or not retry(exc):
            _target_failed(router, route, exc, can_fall_back, strict_error)
            return to_base()
        router.retried(route)
        try:
            result = to_target()
        except Exception as exc2:
            _target_failed(router, route, exc2, can_fall_back, strict_error)
            return to_base()
    router.succeeded(route)
    router.record(route, ROUTED)
    return result


async def send_async(
    router: Router,
    route: Route,
    to_target: Callable[[], Awaitable[T]],
    to_base: Callable[[], Awaitable[T]],
    can_fall_back: Callable[[BaseException], bool],
    strict_error: Callable[[str, BaseException | None], BaseException],
    retry: Callable[[BaseException], bool] | None = None,
) -> T:
    """The async twin of :func:`send`."""
    if router.is_down(route):
        _skip_down_target(router, route, strict_error)
        return await to_base()
    try:
        result = await to_target()
    except Exception as exc:
        if retry is None or not retry(exc):
            _target_failed(router, route, exc, can_fall_back, strict_error)
            return await to_base()
        router.retried(route)
        try:
            result = await to_target()
        except Exception as exc2:
            _target_failed(router, route, exc2, can_fall_back, strict_error)
            return await to_base()
    router.succeeded(route)
    router.record(route, ROUTED)
    return result
