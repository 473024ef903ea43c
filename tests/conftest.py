"""Shared fixtures and helpers for the mpm-events test suite.

Nothing here sleeps and hopes: tests wait on ``await bus.join(timeout=...)``,
on ``asyncio.Event``s or on :func:`wait_until`, which polls a condition with a
deadline and fails the test when the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mpm_events import ConsumerConfig, Event, EventBus, EventPriority, IEventConsumer

sys.path.insert(0, str(Path(__file__).parent))

DEADLINE = 5.0


async def wait_until(cond: Callable[[], bool], within: float = DEADLINE, what: str = "") -> None:
    """Poll ``cond`` on the event loop until true; fail the test after ``within`` s."""
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {within}s: {what or cond}")
        await asyncio.sleep(0.002)


def make_event(
    topic: str = "test.topic",
    data: dict[str, Any] | None = None,
    priority: EventPriority = EventPriority.NORMAL,
    **kw: Any,
) -> Event:
    """A fresh event with a generated id."""
    return Event(
        kw.pop("id", ""),
        topic,
        kw.pop("type", "TestEvent"),
        kw.pop("timestamp", None),
        kw.pop("source", "tests"),
        {} if data is None else data,
        priority=priority,
        **kw,
    )


class Call:
    """One call of a recording consumer."""

    def __init__(self, event: Any) -> None:
        self.event = event
        self.id = event.id
        self.topic = event.topic
        self.retry_count = event.metadata.retry_count
        self.at = time.monotonic()
        self.thread = threading.current_thread()


class Recorder(IEventConsumer):
    """A configurable async consumer that records every call.

    ``behaviour(event)`` decides the result of each ``consume`` call: its return
    value is returned (it may be a coroutine, which is awaited), and an exception
    it raises propagates to the bus. Without it every call returns True.
    ``batch_behaviour(events)`` does the same for ``consume_batch``.
    """

    def __init__(
        self,
        name: str = "rec",
        topics: list[str] | None = None,
        behaviour: Callable[[Any], Any] | None = None,
        batch_behaviour: Callable[[list[Any]], Any] | None = None,
        initialize_result: Any = True,
        log: list[tuple[str, str]] | None = None,
        **config: Any,
    ) -> None:
        self._config = ConsumerConfig(name=name, topics=topics, **config)
        self.name = name
        self.behaviour = behaviour
        self.batch_behaviour = batch_behaviour
        self.initialize_result = initialize_result
        self.calls: list[Call] = []
        self.batches: list[list[Call]] = []
        self.log = log
        self.initialized = 0
        self.shut_down = 0
        self.shutdown_after_calls: int | None = None

    # -- what tests read --
    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.calls]

    @property
    def topics_seen(self) -> list[str]:
        return [c.topic for c in self.calls]

    # -- IEventConsumer --
    async def initialize(self) -> bool:
        self.initialized += 1
        if isinstance(self.initialize_result, BaseException):
            raise self.initialize_result
        return self.initialize_result

    async def consume(self, event: Any) -> Any:
        self.calls.append(Call(event))
        if self.log is not None:
            self.log.append((self.name, event.id))
        if self.behaviour is None:
            return True
        result = self.behaviour(event)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def consume_batch(self, events: list[Any]) -> Any:
        calls = [Call(e) for e in events]
        self.batches.append(calls)
        self.calls.extend(calls)
        if self.batch_behaviour is None:
            return len(events)
        result = self.batch_behaviour(events)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def shutdown(self) -> None:
        self.shut_down += 1
        self.shutdown_after_calls = len(self.calls)

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return True

    def get_metrics(self) -> dict[str, Any]:
        return {"calls": len(self.calls)}


class SyncRecorder(Recorder):
    """The same consumer with plain ``def`` methods (run on a worker thread)."""

    def consume(self, event: Any) -> Any:  # type: ignore[override]
        self.calls.append(Call(event))
        if self.behaviour is None:
            return True
        return self.behaviour(event)

    def consume_batch(self, events: list[Any]) -> Any:  # type: ignore[override]
        calls = [Call(e) for e in events]
        self.batches.append(calls)
        self.calls.extend(calls)
        if self.batch_behaviour is None:
            return len(events)
        return self.batch_behaviour(events)


def fail_times(n: int, how: str = "false") -> Callable[[Any], Any]:
    """A behaviour failing the first ``n`` calls (per event id), then succeeding."""
    seen: dict[str, int] = {}

    def behaviour(event: Any) -> bool:
        k = seen.get(event.id, 0)
        seen[event.id] = k + 1
        if k < n:
            if how == "raise":
                raise RuntimeError(f"boom {k}")
            return False
        return True

    return behaviour


@pytest.fixture
async def bus():
    """A started bus, stopped after the test."""
    b = EventBus()
    await b.start()
    try:
        yield b
    finally:
        await b.stop(timeout=5)


@pytest.fixture
async def make_bus():
    """Factory for started buses with custom arguments; all stopped afterwards."""
    made: list[EventBus] = []

    async def factory(**kw: Any) -> EventBus:
        b = EventBus(**kw)
        await b.start()
        made.append(b)
        return b

    yield factory
    for b in made:
        await b.stop(timeout=5)


BUS_KINDS = ["memory", "durable"]


@pytest.fixture
async def started_bus(tmp_path: Path):
    """Factory ``await started_bus(kind, **kw)``: a started in-memory (``"memory"``) or
    durable (``"durable"``: ``enable_persistence=True``, a store in ``tmp_path``) bus.

    Every bus it made is stopped after the test, also when the test fails, so no bus
    leaks into later tests.
    """
    made: list[EventBus] = []

    async def factory(kind: str, *, start: bool = True, **kw: Any) -> EventBus:
        if kind == "durable":
            kw.setdefault("enable_persistence", True)
            kw.setdefault("persistence_path", str(tmp_path / f"events-{len(made)}.db"))
        elif kind != "memory":
            raise ValueError(f"unknown bus kind {kind!r}")
        b = EventBus(**kw)
        made.append(b)
        if start:
            await b.start()
        return b

    try:
        yield factory
    finally:
        for b in made:
            await b.stop(timeout=5)


@pytest.fixture
async def stop_after():
    """``stop_after(bus)`` registers a bus a test made itself (an example's own
    ``EventBus()``); each is stopped after the test, also when the test fails."""
    buses: list[EventBus] = []

    def register(b: EventBus) -> EventBus:
        buses.append(b)
        return b

    try:
        yield register
    finally:
        for b in buses:
            await b.stop(timeout=5)


# -- claude-mpm's real dashboard (tests/helpers/dashboard.py) --------------------------


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """claude-mpm's real dashboard server, one per test module."""
    from helpers.dashboard import Dashboard

    server = Dashboard(tmp_path_factory.mktemp("dashboard"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def browser(dashboard):
    """A browser-like Socket.IO client connected to ``dashboard``."""
    from helpers.dashboard import Browser

    b = Browser()
    await b.sio.connect(dashboard.url, transports=["websocket"], wait_timeout=10)
    try:
        yield b
    finally:
        await b.sio.disconnect()


@pytest.fixture(params=["sqlite", "redis"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The log on each backend: a SQLite file, or a private redis-server of its own
    (``tests/helpers/redis_server.py``). The cross-process tests run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    from helpers.redis_server import RedisServer

    server = RedisServer(tmp_path)
    try:
        yield server.url(prefix=f"t{uuid.uuid4().hex[:8]}")
    finally:
        server.kill()
