"""Testing helpers: a recording bus for producer tests (no runtime, no event loop).

``RecordingBus`` implements the bus interface (:class:`mpm_events.IEventBus`) and
records what is published, so producers can be tested in isolation::

    from mpm_events import HookEventProducer
    from mpm_events.testing import RecordingBus

    async def test_tool_use_is_published():
        bus = RecordingBus()
        producer = HookEventProducer(bus)
        assert await producer.publish_tool_use("Read", {"file_path": "/x"})
        [event] = bus.find("hook.tool")
        assert event.data["tool"] == "Read"

It validates events and topics like the real :class:`~mpm_events.EventBus` (the
same exceptions for a non-event, a ``data`` that is not a dict, a malformed topic
or a wildcard in a published topic), can refuse events (``accept=False``) to test
a producer's failure path, and can hand events to subscribed consumers
synchronously (``deliver=True``) to test a producer and a consumer together. It
does not retry, batch or time out; use the real bus (the ``event_bus`` fixture of
the pytest plugin) for those.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from mpm_events._core import Event, _validate_topic
from mpm_events.errors import InvalidEventError, InvalidTopicError
from mpm_events.interfaces import ConsumerPriority, IEventBus, IEventConsumer

__all__ = ["Delivery", "RecordingBus", "validate_pattern", "validate_topic"]

_EVENT_FIELDS = ("id", "topic", "type", "timestamp", "source", "data")
_PROBE = Event("probe", "probe")


def validate_topic(topic: str) -> None:
    """Checks a topic to publish with the engine's own validator (the real bus's messages).

    Raises:
        InvalidTopicError: Empty, an empty segment, whitespace or a control
            character, or a wildcard (a ``ValueError``).
    """
    _validate_topic(topic)


def validate_pattern(pattern: str) -> None:
    """Checks a subscription pattern exactly as the real bus does.

    Raises:
        InvalidTopicError: The pattern is malformed (a ``ValueError``).
    """
    _PROBE.matches_topic(pattern)


def _matches(topic: str, pattern: str) -> bool:
    # NOTE: the engine's own matcher, so the semantics cannot drift from the real bus.
    probe = Event("probe", topic)
    return probe.matches_topic(pattern)


def _as_event(obj: Any) -> Event:
    """Our Event for ``obj`` (any object with the Event attributes is converted)."""
    if isinstance(obj, Event):
        return obj
    if obj is None:
        raise InvalidEventError("publish() expected an Event, got None")
    for name in _EVENT_FIELDS:
        if not hasattr(obj, name):
            raise InvalidEventError(
                f"expected an Event; the object of type {type(obj).__name__} "
                f"has no attribute {name!r}"
            )
    return Event(
        obj.id,
        obj.topic,
        obj.type,
        obj.timestamp,
        obj.source,
        obj.data,
        metadata=getattr(obj, "metadata", None),
        correlation_id=getattr(obj, "correlation_id", None),
        priority=getattr(obj, "priority", None),
    )


def _check(obj: Any) -> Event:
    event = _as_event(obj)
    if not isinstance(event.data, dict):
        raise InvalidEventError(f"Event.data must be a dict, got {type(event.data).__name__}")
    validate_topic(event.topic)
    return event


def _priority_value(priority: Any) -> int:
    if isinstance(priority, int):
        return priority
    if isinstance(priority, str):
        return ConsumerPriority[priority.upper()].value
    value = getattr(priority, "value", ConsumerPriority.NORMAL.value)
    return int(value)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Delivery:
    """One event handed to one consumer by a delivering :class:`RecordingBus`.

    Attributes:
        consumer: The consumer's name.
        event: The event as the consumer received it (after ``transform_func``).
        ok: Whether it succeeded (a true return, no exception).
        error: The failure message, else None.
    """

    __slots__ = ("consumer", "error", "event", "ok")

    def __init__(self, consumer: str, event: Event, ok: bool, error: str | None) -> None:
        self.consumer = consumer
        self.event = event
        self.ok = ok
        self.error = error

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"failed: {self.error}"
        return f"Delivery({self.consumer!r}, {self.event.topic!r}, {state})"


class RecordingBus(IEventBus):
    """A bus that records what is published, for testing producers without a runtime.

    Args:
        accept: True (default) accepts every valid event; False refuses them all
            (``publish`` returns False, as the real bus does when full or stopped);
            a callable ``(event) -> bool`` decides per event. Refused events are in
            :attr:`refused`, not :attr:`events`.
        deliver: When True, each accepted event is also handed to the subscribed
            consumers whose topics match, in ``ConsumerPriority`` order, honouring
            ``filter_func`` and ``transform_func``. ``await publish()`` delivers
            before it returns; ``publish_nowait()`` defers to the next
            ``await publish()``/``publish_batch()``/``join()``. No retries, no
            batching (a consumer with ``batch_size > 1`` gets ``consume_batch([e])``).
        running: Whether the bus starts out running (default True, so producer
            tests need no ``start()``). When not running, ``publish`` returns False
            like the real bus.

    Attributes:
        events: Accepted events, in publish order.
        refused: Valid events that were refused (``accept`` or not running).
        deliveries: With ``deliver=True``, every :class:`Delivery`, in order.
    """

    def __init__(
        self,
        *,
        accept: bool | Callable[[Event], bool] = True,
        deliver: bool = False,
        running: bool = True,
    ) -> None:
        self.accept = accept
        self.deliver = deliver
        self.events: list[Event] = []
        self.refused: list[Event] = []
        self.deliveries: list[Delivery] = []
        self._running = running
        self._consumers: list[Any] = []
        self._undelivered: list[Event] = []
        self._lock = threading.Lock()

    # ----- recording -----

    def published_topics(self) -> list[str]:
        """The topics of the accepted events, in publish order."""
        with self._lock:
            return [e.topic for e in self.events]

    def find(self, topic_pattern: str = "**", *, type: str | None = None) -> list[Event]:
        """Accepted events whose topic matches ``topic_pattern`` (and ``type`` if given).

        Patterns follow the bus's rules: ``*`` one segment, ``**`` zero or more.

        Raises:
            InvalidTopicError: The pattern is malformed.
        """
        validate_pattern(topic_pattern)
        with self._lock:
            events = list(self.events)
        return [
            e for e in events if e.matches_topic(topic_pattern) and (type is None or e.type == type)
        ]

    def clear(self) -> None:
        """Forgets every recorded event, refusal and delivery (consumers stay)."""
        with self._lock:
            self.events.clear()
            self.refused.clear()
            self.deliveries.clear()
            self._undelivered.clear()

    # ----- IEventBus -----

    @property
    def is_running(self) -> bool:
        """Whether the bus accepts events."""
        return self._running

    async def start(self) -> None:
        """Starts accepting events (idempotent)."""
        self._running = True

    async def stop(self, timeout: float | None = None) -> None:
        """Delivers what is deferred, stops accepting, then shuts every consumer down."""
        if not self._running:
            return
        await self._flush()
        self._running = False
        for consumer in list(self._consumers):
            await _maybe_await(consumer.shutdown())

    async def publish(self, event: Any) -> bool:
        """Records one event; True if accepted. Validates like the real bus.

        Raises:
            InvalidEventError: Not an event, a missing attribute, ``data`` not a dict.
            InvalidTopicError: A malformed topic or a wildcard in it.
        """
        ok = self._record(_check(event))
        await self._flush()
        return ok

    def publish_nowait(self, event: Any) -> bool:
        """Records one event without awaiting (any thread); delivery is deferred."""
        return self._record(_check(event))

    async def publish_batch(self, events: Iterable[Any]) -> int:
        """Records several events; returns how many were accepted.

        Every event is validated first, so a bad one raises and none is recorded.
        """
        checked: list[Event] = []
        for i, e in enumerate(events):
            try:
                checked.append(_check(e))
            except (InvalidEventError, InvalidTopicError) as exc:
                raise type(exc)(f"publish_batch(): event #{i}: {exc}") from None
        accepted = sum(self._record(e) for e in checked)
        await self._flush()
        return accepted

    async def subscribe(self, consumer: IEventConsumer | Any) -> bool:
        """Adds a consumer after awaiting its ``initialize()``.

        Returns:
            False for a duplicate name or an ``initialize()`` that fails.

        Raises:
            InvalidTopicError: One of its topic patterns is malformed.
        """
        config = consumer.config
        for pattern in config.topics or ():
            validate_pattern(pattern)
        if any(c.config.name == config.name for c in self._consumers):
            return False
        try:
            ok = await _maybe_await(consumer.initialize())
        except Exception:
            return False
        if not ok:
            return False
        self._consumers.append(consumer)
        return True

    async def unsubscribe(self, consumer_name: str) -> bool:
        """Removes a consumer by name and awaits its ``shutdown()``."""
        for consumer in self._consumers:
            if consumer.config.name == consumer_name:
                self._consumers.remove(consumer)
                await _maybe_await(consumer.shutdown())
                return True
        return False

    def get_consumers(self) -> list[Any]:
        """The subscribed consumers, in subscription order."""
        return list(self._consumers)

    def get_metrics(self) -> dict[str, Any]:
        """The real bus's basic metric keys, computed from the recording."""
        with self._lock:
            published = len(self.events)
            dropped = len(self.refused)
            last = self.events[-1].metadata.published_at if self.events else None
            queued = len(self._undelivered)
        failed = sum(1 for d in self.deliveries if not d.ok)
        return {
            "events_published": published,
            "events_processed": published - queued,
            "events_failed": failed,
            "events_dropped": dropped,
            "consumers_active": len(self._consumers),
            "queue_size": queued,
            "processing_time_ms": 0.0,
            "last_event_time": last,
            "dead_letter_queue_size": 0,
            "consumers": {c.config.name: c.get_metrics() for c in self._consumers},
        }

    async def join(self, timeout: float | None = None) -> bool:
        """Delivers what ``publish_nowait`` deferred; returns True."""
        await self._flush()
        return True

    # ----- internals -----

    def _record(self, event: Event) -> bool:
        accept = self.accept(event) if callable(self.accept) else self.accept
        with self._lock:
            if not (self._running and accept):
                self.refused.append(event)
                return False
            event.metadata.published_at = datetime.now(UTC)
            self.events.append(event)
            if self.deliver:
                self._undelivered.append(event)
        return True

    async def _flush(self) -> None:
        while True:
            with self._lock:
                if not self._undelivered:
                    return
                event = self._undelivered.pop(0)
            await self._deliver(event)

    def _targets(self, topic: str) -> list[Any]:
        found = []
        for consumer in self._consumers:
            config = consumer.config
            topics = config.topics
            regex = config.topic_pattern
            if topics is None and regex is None:
                hit = True
            else:
                hit = any(_matches(topic, p) for p in topics or ())
                if not hit and regex is not None:
                    hit = re.match(regex, topic) is not None
            if hit:
                found.append(consumer)
        # NOTE: sorted() is stable, so equal priorities keep subscription order.
        return sorted(found, key=lambda c: _priority_value(c.config.priority))

    async def _deliver(self, event: Event) -> None:
        for consumer in self._targets(event.topic):
            config = consumer.config
            name = config.name
            try:
                target = event
                if config.filter_func is not None and not config.filter_func(event):
                    continue
                if config.transform_func is not None:
                    target = config.transform_func(event)
                    if target is None:
                        raise TypeError("transform_func returned None")
                if config.batch_size > 1:
                    result = await _maybe_await(consumer.consume_batch([target]))
                    ok = bool(result) and int(result) >= 1
                else:
                    ok = bool(await _maybe_await(consumer.consume(target)))
                error = None if ok else "consume() returned a false value"
            except Exception as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
                handler = getattr(config, "error_handler", None)
                if handler is not None:
                    await _maybe_await(handler(event, exc))
            meta = event.metadata
            if ok:
                meta.consumers_processed = meta.consumers_processed | {name}
                meta.consumers_failed = meta.consumers_failed - {name}
                if meta.consumed_at is None:
                    meta.consumed_at = datetime.now(UTC)
            else:
                meta.consumers_failed = meta.consumers_failed | {name}
                meta.error_messages = [*meta.error_messages, f"{name}: {error}"]
            with self._lock:
                self.deliveries.append(Delivery(name, target, ok, error))
