"""claude-mpm's production event bus (``claude_mpm.services.event_bus``) on our engine.

Change the import line and existing claude-mpm code keeps working::

    # from claude_mpm.services.event_bus import EventBus, SocketIORelay
    from mpm_events.compat.event_bus import EventBus, SocketIORelay

Same API as claude-mpm 5.9.10's pyee-based singleton: ``EventBus.get_instance()``,
``publish(event_type, data) -> bool`` (sync, any thread, with or without a running
loop), ``publish_async``, ``on``/``once``/``remove_listener``/``remove_all_listeners``
(a pattern ending in ``*`` is a prefix wildcard whose handlers get
``(event_type, data)``; other handlers get ``data``), ``add_filter``/
``remove_filter``/``clear_filters`` (same rules: exact names or trailing-``*``
prefixes; no filters means everything passes; a filtered event counts
``events_filtered``), ``enable``/``disable``/``set_debug``, ``get_stats`` (same keys),
``get_recent_events(limit=10)`` (same records ``{timestamp, type, data}``, last 100),
``clear_history``, ``reset_stats``; and ``SocketIORelay``/``get_relay``/
``start_relay``/``stop_relay``, relaying ``hook.*`` events as ``claude_event`` to the
dashboard.

Every accepted event goes through an ``mpm_events.EventBus`` (topic = the event type
when it is a valid topic, else ``compat.event``; type = the part after the first
``.``, else ``generic``; source ``event_bus``; data = the payload when it is a dict,
else ``{"value": payload}``). The engine runs on a private event-loop thread; one
consumer on ``**`` calls the handlers there, in the original's order (exact-name
handlers in registration order, then wildcard handlers), with the very object that
was published.

What differs, on purpose:

- **Delivery is asynchronous.** The original calls sync handlers inside ``publish``;
  here ``publish`` returns once the engine accepted the event and handlers run
  shortly after on the bus's thread (in order, one event after another). Use
  ``bus.flush(timeout)`` to wait until every accepted event was handled.
- **Async handlers always run.** The original never awaits an ``async def`` handler
  registered with ``on`` for an exact name (the coroutine is dropped), and skips
  async wildcard handlers when the publishing thread has no event loop. Here every
  coroutine handler runs as a task on the bus's loop.
- **No handler stops the others.** In the original a raising ``once`` handler makes
  ``publish`` return ``False`` (counted in ``events_failed``) and the handlers after
  it are skipped; here its exception is logged at debug level like any other.
- **Wildcard handlers can be removed.** ``remove_listener("hook.*", h)`` removes it
  (the original silently keeps it), and ``remove_all_listeners()`` /
  ``remove_all_listeners("hook.*")`` clear wildcard handlers too (the original keeps
  them forever). Removing an unregistered handler behaves as in the original:
  nothing happens when the event type has no handlers, else ``KeyError``.
- ``events_failed`` counts events the engine refused (full queue, or the bus shut
  down); ``publish`` then returns ``False``. The history is updated under a lock.
- ``SocketIORelay`` sends through our ``SocketIOConsumer`` (its own engine bus), so
  the payload is the dashboard protocol of that consumer (``event: "mpm_event"``,
  ``type``/``subtype`` from the event type as in the original, ``timestamp``,
  ``data``, ``source: "event_bus"``, plus ``id``/``topic``/session fields) and
  delivery is buffered and retried; it prints nothing to stdout. Its stats keep the
  original's keys: ``events_relayed`` counts events handed to the consumer,
  ``connected`` is the consumer's ``is_healthy``, ``connection_failures`` stays 0
  (the consumer reconnects on its own). ``SocketIORelay`` also takes ``url=``;
  ``disable()`` stops relaying without closing the connection (``stop()`` does).
- ``EventBus.shutdown(timeout)`` (new) stops the engine; the singleton is dropped
  and the next ``get_instance()`` makes a fresh bus. It also runs at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import mpm_events
from mpm_events import ConsumerConfig, Event

__all__ = ["EventBus", "SocketIORelay", "get_relay", "start_relay", "stop_relay"]

logger = logging.getLogger(__name__)

_FALLBACK_TOPIC = "compat.event"
_MAX_HISTORY = 100


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _fresh_stats() -> dict[str, Any]:
    return {
        "events_published": 0,
        "events_filtered": 0,
        "events_failed": 0,
        "last_event_time": None,
    }


def _topic_for(event_type: str) -> str:
    try:
        mpm_events._core._validate_topic(event_type)
    except Exception:
        return _FALLBACK_TOPIC
    return event_type


def _to_event(event_type: str, data: Any) -> Event:
    subtype = event_type.split(".", 1)[1] if "." in event_type else "generic"
    payload = data if isinstance(data, dict) else {"value": data}
    timestamp = payload.get("timestamp") if isinstance(payload, dict) else None
    try:
        return Event(
            topic=_topic_for(event_type),
            type=subtype or "generic",
            timestamp=timestamp if isinstance(timestamp, str) else None,
            source="event_bus",
            data=payload,
        )
    except (TypeError, ValueError):
        return Event(
            topic=_topic_for(event_type),
            type=subtype or "generic",
            source="event_bus",
            data=payload if all(isinstance(k, str) for k in payload) else {"value": data},
        )


class _Engine:
    """An ``mpm_events.EventBus`` started on a private event-loop thread."""

    def __init__(self, name: str, consumer: Any, start_timeout: float = 10.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.bus = mpm_events.EventBus()
        self.consumer = consumer
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.call(self._start(), start_timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _start(self) -> None:
        await self.bus.start()
        await self.bus.subscribe(self.consumer)

    def call(self, coro: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def publish(self, event: Event) -> bool:
        return bool(self.bus.publish_nowait(event))

    def flush(self, timeout: float | None) -> bool:
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() cannot be called from a handler")
        return bool(self.call(self.bus.join(timeout), None if timeout is None else timeout + 5))

    def close(self, timeout: float) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self.bus.stop(timeout), timeout + 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout + 5)
        if not self._thread.is_alive():
            self.loop.close()


class _Dispatcher:
    """The one engine consumer: hands each event to the compat bus's handlers."""

    def __init__(self, owner: EventBus) -> None:
        self._owner = owner
        self.config = ConsumerConfig("compat.event_bus", topics=["**"], max_retries=0)
        self.is_healthy = True

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Event) -> bool:
        self._owner._dispatch(event.id)
        return True

    async def consume_batch(self, events: list[Event]) -> int:
        for event in events:
            self._owner._dispatch(event.id)
        return len(events)

    async def shutdown(self) -> None:
        return None

    def get_metrics(self) -> dict[str, Any]:
        return {}


class EventBus:
    """Singleton event bus with claude-mpm's ``services.event_bus`` API (see the module)."""

    _instance: ClassVar[EventBus | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __new__(cls) -> EventBus:
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = super().__new__(cls)
        return cls._instance

    def __init__(self) -> None:
        if hasattr(self, "_initialized"):
            return
        with EventBus._lock:
            if hasattr(self, "_initialized"):
                return
            self._state = threading.RLock()
            self._enabled = True
            self._event_filters: set[str] = set()
            self._stats = _fresh_stats()
            self._debug = False
            self._event_history: list[dict[str, Any]] = []
            self._max_history_size = _MAX_HISTORY
            self._handler_tasks: set[asyncio.Task[Any]] = set()
            # event type -> [(handler, once)], in registration order (pyee keeps on and
            # once listeners of one event in one ordered list)
            self._listeners: dict[str, list[tuple[Callable[..., Any], bool]]] = {}
            # prefix -> handlers, in the order the prefixes were first registered
            self._wildcard_handlers: dict[str, list[Callable[..., Any]]] = {}
            self._pending: dict[str, tuple[str, Any]] = {}
            self._engine = _Engine("mpm-events-compat", _Dispatcher(self))
            # NOTE: registered after the engine bus exists, so it runs before the
            # engine's own exit handling and what is queued still reaches the handlers.
            atexit.register(_shutdown_at_exit)
            self._initialized = True
        logger.info("EventBus initialized")

    @classmethod
    def get_instance(cls) -> EventBus:
        """Get the singleton EventBus instance."""
        return cls()

    # -- switches -------------------------------------------------------------------

    def enable(self) -> None:
        """Enable event bus processing."""
        self._enabled = True
        logger.info("EventBus enabled")

    def disable(self) -> None:
        """Disable event bus processing: ``publish`` returns False and counts nothing."""
        self._enabled = False
        logger.info("EventBus disabled")

    def set_debug(self, debug: bool) -> None:
        """Enable or disable debug logging (this module's logger: DEBUG or INFO)."""
        self._debug = debug
        logger.setLevel(logging.DEBUG if debug else logging.INFO)

    # -- filters --------------------------------------------------------------------

    def add_filter(self, pattern: str) -> None:
        """Only events matching a filter pattern are processed (``hook.*``: prefix)."""
        self._event_filters.add(pattern)
        logger.debug("Added event filter: %s", pattern)

    def remove_filter(self, pattern: str) -> None:
        """Remove an event filter pattern."""
        self._event_filters.discard(pattern)
        logger.debug("Removed event filter: %s", pattern)

    def clear_filters(self) -> None:
        """Clear all event filters (allow all events)."""
        self._event_filters.clear()
        logger.debug("Cleared all event filters")

    def _should_process_event(self, event_type: str) -> bool:
        filters = list(self._event_filters)
        if not filters:
            return True
        for pattern in filters:
            if pattern.endswith("*"):
                if event_type.startswith(pattern[:-1]):
                    return True
            elif event_type == pattern:
                return True
        return False

    # -- publishing -----------------------------------------------------------------

    def publish(self, event_type: str, data: Any) -> bool:
        """Publish an event from any thread, with or without a running loop.

        Returns:
            True if the event was accepted, False if disabled, filtered or refused.
        """
        if not self._enabled:
            if self._debug:
                logger.debug("EventBus disabled, dropping event: %s", event_type)
            return False
        if not self._should_process_event(event_type):
            with self._state:
                self._stats["events_filtered"] += 1
            if self._debug:
                logger.debug("Event filtered out: %s", event_type)
            return False
        event: Event | None = None
        try:
            event = _to_event(event_type, data)
            with self._state:
                self._record_event(event_type, data)
                self._pending[event.id] = (event_type, data)
            if not self._engine.publish(event):
                raise RuntimeError("the engine refused the event (queue full or stopped)")
        except Exception as exc:
            with self._state:
                if event is not None:
                    self._pending.pop(event.id, None)
                self._stats["events_failed"] += 1
            logger.error("Failed to publish event %s: %s", event_type, exc)
            return False
        with self._state:
            self._stats["events_published"] += 1
            self._stats["last_event_time"] = _now()
        if self._debug:
            logger.debug("Published event: %s", event_type)
        return True

    async def publish_async(self, event_type: str, data: Any) -> bool:
        """Publish an event from an async context (same as ``publish``)."""
        return self.publish(event_type, data)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """New: wait until every accepted event's handlers ran, async ones included.

        Not from a handler.

        Returns:
            True if the bus went idle within ``timeout``.
        """
        end = None if timeout is None else time.monotonic() + timeout
        if not self._engine.flush(timeout):
            return False
        left = None if end is None else max(0.0, end - time.monotonic())
        return bool(
            self._engine.call(self._wait_handler_tasks(left), None if left is None else left + 5)
        )

    async def _wait_handler_tasks(self, timeout: float | None) -> bool:
        tasks = set(self._handler_tasks)
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    def shutdown(self, timeout: float = 5.0) -> None:
        """New: stop the engine; the next ``get_instance()`` makes a fresh bus."""
        with EventBus._lock:
            if EventBus._instance is self:
                EventBus._instance = None
        self._engine.close(timeout)

    # -- handlers -------------------------------------------------------------------

    def on(self, event_type: str, handler: Callable[..., Any]) -> None:
        """Register a sync or async handler; a trailing ``*`` makes a prefix wildcard."""
        with self._state:
            if event_type.endswith("*"):
                self._wildcard_handlers.setdefault(event_type[:-1], []).append(handler)
                logger.debug("Registered wildcard handler for: %s", event_type)
            else:
                self._listeners.setdefault(event_type, []).append((handler, False))
                logger.debug("Registered handler for: %s", event_type)

    def once(self, event_type: str, handler: Callable[..., Any]) -> None:
        """Register a one-time handler for an exact event type."""
        with self._state:
            self._listeners.setdefault(event_type, []).append((handler, True))
        logger.debug("Registered one-time handler for: %s", event_type)

    def remove_listener(self, event_type: str, handler: Callable[..., Any]) -> None:
        """Remove a handler (its last registration).

        Raises:
            KeyError: As the original (pyee): ``event_type`` has handlers, but not this
                one. With no handlers for ``event_type`` it does nothing.
        """
        with self._state:
            if event_type.endswith("*"):
                handlers = self._wildcard_handlers.get(event_type[:-1], [])
                for i in range(len(handlers) - 1, -1, -1):
                    if handlers[i] == handler:
                        del handlers[i]
                        break
            else:
                entries = self._listeners.get(event_type)
                if not entries:
                    return
                for i in range(len(entries) - 1, -1, -1):
                    if entries[i][0] == handler:
                        del entries[i]
                        break
                else:
                    # pyee's behaviour: the event has listeners, but not this one
                    raise KeyError(handler)
                if not entries:
                    del self._listeners[event_type]
        logger.debug("Removed handler for: %s", event_type)

    def remove_all_listeners(self, event_type: str | None = None) -> None:
        """Remove all listeners for an event type (or wildcard pattern), or all."""
        with self._state:
            if event_type:
                self._listeners.pop(event_type, None)
                if event_type.endswith("*"):
                    self._wildcard_handlers.pop(event_type[:-1], None)
                logger.debug("Removed all handlers for: %s", event_type)
            else:
                self._listeners.clear()
                self._wildcard_handlers.clear()
                logger.debug("Removed all event handlers")

    def _dispatch(self, event_id: str) -> None:
        """Runs on the bus's loop: call the handlers of one accepted event."""
        with self._state:
            pending = self._pending.pop(event_id, None)
            if pending is None:
                return
            event_type, data = pending
            calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
            entries = self._listeners.get(event_type)
            if entries:
                for handler, _once in entries:
                    calls.append((handler, (data,)))
                entries[:] = [e for e in entries if not e[1]]
            for prefix, handlers in list(self._wildcard_handlers.items()):
                if event_type.startswith(prefix):
                    calls.extend((h, (event_type, data)) for h in handlers)
        for handler, args in calls:
            try:
                result = handler(*args)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._handler_tasks.add(task)
                    task.add_done_callback(self._handler_done)
            except Exception as exc:
                if self._debug:
                    logger.debug("Handler error for %s: %s", event_type, exc)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._debug:
            logger.debug("Async handler error: %s", task.exception())

    # -- history and stats ----------------------------------------------------------

    def _record_event(self, event_type: str, data: Any) -> None:
        self._event_history.append({"timestamp": _now(), "type": event_type, "data": data})
        if len(self._event_history) > self._max_history_size:
            self._event_history = self._event_history[-self._max_history_size :]

    def get_stats(self) -> dict[str, Any]:
        """Statistics, with the original's keys."""
        with self._state:
            return {
                **self._stats,
                "enabled": self._enabled,
                "filters_active": len(self._event_filters) > 0,
                "filter_count": len(self._event_filters),
                "history_size": len(self._event_history),
            }

    def get_recent_events(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` events published: ``{timestamp, type, data}``."""
        with self._state:
            return self._event_history[-limit:]

    def clear_history(self) -> None:
        """Clear the event history."""
        with self._state:
            self._event_history.clear()
        logger.debug("Cleared event history")

    def reset_stats(self) -> None:
        """Reset event statistics."""
        with self._state:
            self._stats = _fresh_stats()
        logger.debug("Reset event statistics")


def _shutdown_at_exit() -> None:
    stop_relay()
    bus = EventBus._instance
    if bus is not None and hasattr(bus, "_engine"):
        bus.shutdown(2.0)


class SocketIORelay:
    """Relays the bus's ``hook.*`` events to the dashboard through ``SocketIOConsumer``."""

    def __init__(self, port: int | None = None, *, url: str | None = None) -> None:
        self.port = port or int(os.environ.get("CLAUDE_MPM_SOCKETIO_PORT", "8765"))
        self.url = url or f"http://localhost:{self.port}"
        self.event_bus = EventBus.get_instance()
        self.enabled = True
        self.connected = False
        self.debug = os.environ.get("CLAUDE_MPM_RELAY_DEBUG", "false").lower() == "true"
        self.stats: dict[str, Any] = {
            "events_relayed": 0,
            "events_failed": 0,
            "connection_failures": 0,
            "last_relay_time": None,
        }
        self._engine: _Engine | None = None
        self._consumer: Any = None
        self._handler: Callable[..., Any] | None = None

    def enable(self) -> None:
        """Enable the relay."""
        self.enabled = True
        logger.info("SocketIO relay enabled")

    def disable(self) -> None:
        """Disable the relay (events are no longer relayed)."""
        self.enabled = False
        logger.info("SocketIO relay disabled")

    async def relay_event(self, event_type: str, data: Any) -> bool:
        """Hand one event to the Socket.IO consumer; True if it was accepted."""
        return self._relay(event_type, data)

    def _relay(self, event_type: str, data: Any) -> bool:
        if not self.enabled or self._engine is None:
            return False
        try:
            accepted = self._engine.publish(_to_event(event_type, data))
        except Exception as exc:
            if self.debug:
                logger.debug("Failed to relay event %s: %s", event_type, exc)
            accepted = False
        if accepted:
            self.stats["events_relayed"] += 1
            self.stats["last_relay_time"] = _now()
        else:
            self.stats["events_failed"] += 1
        return accepted

    def start(self) -> None:
        """Subscribe to ``hook.*`` on the bus and start the Socket.IO consumer."""
        if not self.enabled:
            logger.warning("Cannot start relay: disabled")
            return
        if self._engine is None:
            self._consumer = mpm_events.SocketIOConsumer(url=self.url)
            self._engine = _Engine("mpm-events-compat-relay", self._consumer)
            atexit.register(_shutdown_at_exit)  # again: before this engine's own exit

        def handle_hook_event(event_type: str, data: Any) -> None:
            if event_type.startswith("hook."):
                self._relay(event_type, data)

        if self._handler is None:
            self._handler = handle_hook_event
            self.event_bus.on("hook.*", handle_hook_event)
        logger.info("SocketIO relay started and subscribed to events")

    def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe and stop the consumer (it flushes what it buffered first)."""
        if self._handler is not None:
            self.event_bus.remove_listener("hook.*", self._handler)
            self._handler = None
        if self._engine is not None:
            self._engine.close(timeout)
        self._engine = None
        self._consumer = None
        self.connected = False
        logger.info("SocketIO relay stopped")

    def get_stats(self) -> dict[str, Any]:
        """Relay statistics, with the original's keys."""
        if self._consumer is not None:
            self.connected = bool(self._consumer.is_healthy)
        return {
            **self.stats,
            "enabled": self.enabled,
            "connected": self.connected,
            "port": self.port,
        }


_relay_instance: SocketIORelay | None = None
_relay_lock = threading.Lock()


def get_relay(port: int | None = None) -> SocketIORelay:
    """Get or create the global relay."""
    global _relay_instance
    if _relay_instance is not None:
        return _relay_instance
    with _relay_lock:
        if _relay_instance is None:
            _relay_instance = SocketIORelay(port)
        return _relay_instance


def start_relay(port: int | None = None) -> SocketIORelay:
    """Start the global relay."""
    relay = get_relay(port)
    relay.start()
    return relay


def stop_relay() -> None:
    """Stop and drop the global relay."""
    global _relay_instance
    with _relay_lock:
        if _relay_instance is not None:
            _relay_instance.stop()
            _relay_instance = None
