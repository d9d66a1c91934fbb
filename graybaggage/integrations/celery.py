"""Celery: the lane rides in task headers, the task runs in it, and lane workers get their own queues.

Producer (``apply_async`` / ``delay`` / ``send_task`` in a lane): the task message carries both carriers
(``x-mse-tag`` and a ``baggage`` member) as message headers. When the lane table says the lane has a Celery
worker for the task's queue (``lanes.<tag>.queues.celery``, docs/lane-table.md), the task is sent to
``<queue>-<lane>`` instead; otherwise to the base queue, with the tag kept (fallback).

Worker: each task runs in the lane its headers carry, decided by the same inbound code as an HTTP request
(edge policy, dye rules over the headers, pass-through), attached from ``task_prerun`` to ``task_postrun``, so
the task's own HTTP and gRPC calls carry it. A worker whose instance lane is not base
(``GRAYBAGGAGE_LANE=gray``) consumes ``<queue>-gray`` for each queue it was told to consume, and not the base
queues: base work never reaches a lane instance. When it stops (warm shutdown) and the lane table no longer
lists the queue for its lane (the lane is going away: the controller changes the table first), it moves the
tasks still waiting in its lane queues to the base queues, where they run in their lane; while the table still
lists the queue, they are left for the lane's other workers.

Hooks: ``AMQP._create_task_sender`` (the function every publish goes through, after routing) and
``WorkController.setup_queues`` / ``stop`` are wrapped (reversible); ``task_prerun`` / ``task_postrun`` are Celery's
public signals (disconnected by :func:`unpatch`).
"""
from __future__ import annotations

import logging
from typing import Any

from opentelemetry.context import detach

from graybaggage import _runtime
from graybaggage._log import log_once
from graybaggage._patch import wrap
from graybaggage._request import HeaderMapView
from graybaggage.integrations import _client
from graybaggage.integrations._server import _enter
from graybaggage.lane import BASE, baggage_update, header_update, replace_baggage_member

_instruments = ("celery >= 5.2, < 6",)
"""The Celery versions this integration supports (OpenTelemetry-contrib style)."""
_internals = {"celery.app.amqp": ("AMQP._create_task_sender",),
              "celery.worker.worker": ("WorkController.setup_queues", "WorkController.stop"),
              "celery.signals": ("task_prerun", "task_postrun")}
"""What the hooks touch in Celery (checked before patching)."""
_lost = "Celery tasks carry no lane in their headers, run in none, and are not sent to lane queues"

_logger = logging.getLogger(__name__)
_UID = "graybaggage.lane"


def lane_queue_name(queue: str, lane: str) -> str:
    """The queue a lane's workers consume instead of ``queue``."""
    return f"{queue}-{lane}"


_lane_twins: dict[tuple[int, str], tuple[Any, Any]] = {}


def _lane_twin(base: Any, lane: str) -> Any:
    """:func:`_lane_queue`, remembered per (base queue object, lane) for publishing (kombu objects are costly to
    build: ~100 k instructions); bounded."""
    hit = _lane_twins.get((id(base), lane))
    if hit is not None and hit[0] is base:
        return hit[1]
    twin = _lane_queue(base, lane)
    if len(_lane_twins) < 1024:
        _lane_twins[(id(base), lane)] = (base, twin)
    return twin


def _lane_queue(base: Any, lane: str) -> Any:
    """A kombu Queue for ``base``'s lane twin: same exchange, routing key ``<key>-<lane>``."""
    from kombu import Queue

    return Queue(lane_queue_name(base.name, lane), exchange=base.exchange,
                 routing_key=lane_queue_name(base.routing_key or base.name, lane))


def set_lane_headers(headers: dict, lane: str | None, rt: _runtime.Runtime) -> None:
    """Message headers carrying exactly ``lane`` (a plain dict, keys as sent)."""
    settings = rt.settings
    key = settings.header
    if lane is not None:
        header = header_update(headers.get(key), lane, settings.send_header)
        if header is not None:
            headers[key] = header
        bag = baggage_update(_client.text(headers.get("baggage")), key, lane, settings.send_baggage)
        if bag is not None:
            headers["baggage"] = bag
    elif settings.edge:
        headers.pop(key, None)
        existing = _client.text(headers.get("baggage"))
        if existing:
            kept = replace_baggage_member(existing, key, None)
            if kept:
                headers["baggage"] = kept
            else:
                headers.pop("baggage", None)


# -- producer ------------------------------------------------------------------------------------
def _route_to_lane(amqp: Any, options: dict, lane: str, rt: _runtime.Runtime) -> None:
    """Point ``options`` at the lane's queue when the lane table says the lane has a worker for it."""
    table = rt.router.table
    if not table.has_queues(lane):
        return
    queue = options.get("queue")
    if queue is None and options.get("exchange") is None:
        queue = amqp.default_queue
    if queue is None:
        return
    if isinstance(queue, str):
        queue = amqp.queues[queue]
    if not table.lane_has_queue(lane, queue.name):
        return
    lane_q = _lane_twin(queue, lane)
    options["queue"] = lane_q
    if options.get("routing_key"):
        options["routing_key"] = lane_q.routing_key


def _sender(send: Any, amqp: Any) -> Any:
    def send_task_message(producer: Any, name: Any, message: Any, *args: Any, **options: Any) -> Any:
        if args:  # Celery passes options by keyword; another layout: send as the app asked
            log_once(_logger, "celery-sender-args", "graybaggage: Celery's task sender takes positional options in "
                     "this version; tasks are sent without lane routing", level=logging.WARNING)
            return send(producer, name, message, *args, **options)
        try:
            rt, lane = _client.current()
            if lane is not None or rt.settings.edge:
                set_lane_headers(message[0], lane, rt)
                if options.get("headers"):  # headers given to apply_async(headers=...) are merged in last
                    options["headers"] = dict(options["headers"])
                    set_lane_headers(options["headers"], lane, rt)
            if lane is not None and rt.settings.routing:
                _route_to_lane(amqp, options, lane, rt)
        except Exception:  # noqa: BLE001 - never stop a publish: send it as the app asked
            log_once(_logger, "celery-publish", "graybaggage: cannot add the lane to a Celery task message; "
                     "sending it unchanged", level=logging.WARNING)
        return send(producer, name, message, **options)

    send_task_message._graybaggage = True  # type: ignore[attr-defined]
    return send_task_message


def _create_task_sender(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    return _sender(wrapped(*args, **kwargs), instance)


# -- worker --------------------------------------------------------------------------------------
def _setup_queues(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    lane = _runtime.get().settings.instance_lane
    if lane == BASE:
        return result
    try:
        _select_lane_queues(instance, lane)
    except Exception:  # noqa: BLE001 - the worker starts anyway, on the queues it was given
        _logger.warning("graybaggage: lane %r worker: could not switch to the lane's queues; it consumes the base "
                        "queues it was given (and so takes base tasks)", lane, exc_info=True)
    return result


def _select_lane_queues(instance: Any, lane: str) -> None:
    queues = instance.app.amqp.queues
    selected = dict(queues.consume_from)
    names = []
    for name, q in selected.items():
        if "@" in name or name.endswith(f"-{lane}"):  # worker-direct queues, or already a lane queue
            names.append(name)
            continue
        lane_q = queues.add(_lane_queue(q, lane))
        names.append(lane_q.name)
        _lane_queues[lane_q.name] = q
    queues.select(names)
    _logger.warning("graybaggage: lane %r worker: consuming %s (not the base queues %s)", lane,
                    ", ".join(names), ", ".join(n for n in selected if n not in names))


_lane_queues: dict[str, Any] = {}
"""This lane worker's queues: lane queue name -> the base queue it stands for."""


def _stop(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        hand_back(instance.app)
    except Exception:  # noqa: BLE001 - never stop a shutdown
        _logger.warning("graybaggage: could not hand the lane queues' tasks back to base", exc_info=True)
    return result


def hand_back(app: Any) -> int:
    """After a lane worker stopped: move the tasks still waiting in its lane queues to the base queues, for
    each queue the lane table no longer lists for this lane (the lane is going away; they keep their lane
    headers and run on base in that lane). Queues the table still lists are left to the lane's other workers.
    Returns how many tasks were moved."""
    rt = _runtime.get()
    lane = rt.settings.instance_lane
    table = rt.router.table
    moved = 0
    for lane_name, base in list(_lane_queues.items()):
        if table.lane_has_queue(lane, base.name):
            continue
        from kombu import Producer

        with app.connection_for_write() as conn:
            channel = conn.channel()
            producer = Producer(channel)
            while True:
                message = channel.basic_get(lane_name, no_ack=False)
                if message is None:
                    break
                props = {k: v for k, v in (message.properties or {}).items()
                         if k in ("correlation_id", "reply_to", "priority", "expiration")}
                producer.publish(message.body, exchange=base.exchange, routing_key=base.routing_key or base.name,
                                 headers=message.headers, content_type=message.content_type,
                                 content_encoding=message.content_encoding, declare=[base], **props)
                message.ack()
                moved += 1
            channel.close()
        _lane_queues.pop(lane_name, None)
        _logger.warning("graybaggage: lane %r worker stopped and the lane table no longer lists queue %r for it: "
                        "moved %d waiting task(s) from %s to %s (they keep their lane)", lane, base.name, moved,
                        lane_name, base.name)
    return moved


def _request_value(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(name)
    return value


_tokens: dict[str, Any] = {}


def _prerun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        rt = _runtime.get()
        inbound = rt.inbound
        request = getattr(task, "request", None)
        header = _client.text(_request_value(request, inbound.header))
        bag = _client.text(_request_value(request, "baggage"))
        seen = {k: v for k, v in ((inbound.header, header), ("baggage", bag)) if isinstance(v, str)}
        lane = inbound.decide([header] if isinstance(header, str) else None, bag if isinstance(bag, str) else None,
                              lambda: HeaderMapView(seen))
        _tokens[task_id] = _enter(lane, inbound.header)
    except Exception:  # noqa: BLE001 - the task runs anyway, without a lane
        log_once(_logger, "celery-prerun", "graybaggage: cannot read the lane of a Celery task; running it on base",
                 level=logging.WARNING, exc_info=True)


def _postrun(task_id: Any = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None)
    if token is not None:
        detach(token)


def _connect_signals(mod: Any) -> None:
    mod.task_prerun.connect(_prerun, weak=False, dispatch_uid=_UID)
    mod.task_postrun.connect(_postrun, weak=False, dispatch_uid=_UID)


def unpatch() -> None:
    import sys

    mod = sys.modules.get("celery.signals")
    if mod is not None:
        mod.task_prerun.disconnect(_prerun, dispatch_uid=_UID)
        mod.task_postrun.disconnect(_postrun, dispatch_uid=_UID)


def patch_amqp(mod: Any) -> None:
    wrap(mod.AMQP, "_create_task_sender", _create_task_sender)


def patch_worker(mod: Any) -> None:
    wrap(mod.WorkController, "setup_queues", _setup_queues)
    wrap(mod.WorkController, "stop", _stop)


MODULES = {
    "celery.app.amqp": patch_amqp,
    "celery.worker.worker": patch_worker,
    "celery.signals": _connect_signals,
}
