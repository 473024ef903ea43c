"""Shutdown and lifecycle: every accepted event ends in exactly one place.

An event the bus accepted is handled by each consumer it was routed to, or in the
dead letters with a reason, or (durable bus) still unacknowledged in the store for
redelivery; ``stop(timeout)`` accounts for all of them and ``get_metrics()`` adds
up. No consume call starts after that consumer's ``shutdown()`` has begun.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import BUS_KINDS, Recorder, SyncRecorder, make_event
from mpm_events import EventBus


def assert_metrics_add_up(bus: EventBus) -> dict[str, Any]:
    """published = processed + dead-lettered + pending in store + in flight, and per
    consumer: received = processed + filtered + dead-lettered + pending in store +
    waiting + in flight + waiting for a retry."""
    m = bus.get_metrics()
    assert m["events_published"] == (
        m["events_processed"]
        + m["events_dead_lettered"]
        + m["events_pending_in_store"]
        + m["events_in_flight"]
    ), m
    for name, c in m["consumer_stats"].items():
        assert c["received"] == (
            c["processed"]
            + c["filtered"]
            + c["dead_lettered"]
            + c["pending_in_store"]
            + c["pending"]
            + c["in_flight"]
            + c["retrying"]
        ), (name, c)
    return m


class ShutdownWatch:
    """Counts consume calls that start after ``shutdown()`` began."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.calls_after = 0

    def on_call(self) -> None:
        if self.down.is_set():
            self.calls_after += 1


def slow_async(watch: ShutdownWatch, delay: float):
    async def behaviour(event: Any) -> bool:
        watch.on_call()
        await asyncio.sleep(delay)
        return True

    return behaviour


def slow_sync(watch: ShutdownWatch, delay: float):
    def behaviour(event: Any) -> bool:
        watch.on_call()
        time.sleep(delay)
        return True

    return behaviour


class Watched(Recorder):
    def __init__(self, watch: ShutdownWatch, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.watch = watch

    async def shutdown(self) -> None:
        self.watch.down.set()
        await super().shutdown()


class WatchedSync(SyncRecorder):
    def __init__(self, watch: ShutdownWatch, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.watch = watch

    async def shutdown(self) -> None:
        self.watch.down.set()
        await super().shutdown()


# -- stop(timeout) with a backlog ------------------------------------------------


@pytest.mark.parametrize("kind", BUS_KINDS)
@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_stop_timeout_with_a_backlog_accounts_for_every_event(
    started_bus, kind, flavour, caplog
):
    bus = await started_bus(kind)
    watch = ShutdownWatch()
    if flavour == "async":
        c = Watched(watch, "slow", ["**"], behaviour=slow_async(watch, 0.01))
    else:
        c = WatchedSync(watch, "slow", ["**"], behaviour=slow_sync(watch, 0.01))
    await bus.subscribe(c)
    accepted = 0
    for _ in range(1000):
        accepted += await bus.publish(make_event("work.item"))
    assert accepted == 1000
    caplog.set_level("WARNING", logger="mpm_events")
    await bus.stop(timeout=0.2)

    handled = len(c.calls)
    m = assert_metrics_add_up(bus)
    assert m["events_in_flight"] == 0
    cs = m["consumer_stats"]["slow"]
    assert cs["received"] == 1000
    assert cs["processed"] == handled, "each call that ran to the end counts as processed"
    if kind == "memory":
        letters = bus.get_dead_letters()
        assert handled + len(letters) == 1000
        assert all("stopped before" in d["errors"][-1] for d in letters)
        assert m["events_dead_lettered"] == len(letters)
    else:
        assert bus.get_dead_letters() == []
        assert handled + m["events_pending_in_store"] == 1000
    # one warning that says what happened, not one per event
    lines = [r for r in caplog.records if "not handled in time" in r.getMessage()]
    assert len(lines) == 1
    assert str(1000 - handled) in lines[0].getMessage()
    # no consume call starts after shutdown() began, including in the next moments
    calls = len(c.calls)
    await asyncio.sleep(0.3)
    assert watch.calls_after == 0
    assert len(c.calls) == calls


async def test_durable_stop_timeout_leaves_the_rest_for_the_next_start(tmp_path):
    path = str(tmp_path / "events.db")
    bus = EventBus(enable_persistence=True, persistence_path=path)
    await bus.start()
    watch = ShutdownWatch()
    c = Watched(watch, "slow", ["**"], behaviour=slow_async(watch, 0.01))
    await bus.subscribe(c)
    for i in range(300):
        assert await bus.publish(make_event("work.item", {"i": i}))
    await bus.stop(timeout=0.1)
    first = {call.id for call in c.calls}
    left = bus.get_metrics()["events_pending_in_store"]
    assert left == 300 - len(first) > 0

    again = EventBus(enable_persistence=True, persistence_path=path)
    c2 = Recorder("slow", ["**"])
    await again.subscribe(c2)
    await again.start()
    try:
        await again.join(timeout=30)
        redelivered = {call.id for call in c2.calls}
        assert len(redelivered - first) == left, "what was left is delivered at the next start"
        assert len(redelivered | first) == 300, "every accepted event was handled"
    finally:
        await again.stop(timeout=5)


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_a_hung_call_is_abandoned_cancelled_and_counted(started_bus, kind):
    bus = await started_bus(kind)
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def hang(event: Any) -> bool:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    c = Recorder("hung", ["**"], behaviour=hang, timeout=60.0)
    await bus.subscribe(c)
    for _ in range(3):
        await bus.publish(make_event())
    await asyncio.wait_for(started.wait(), 5)
    t0 = time.monotonic()
    await bus.stop(timeout=0.3)
    took = time.monotonic() - t0
    assert took < 20, f"stop(timeout=0.3) took {took:.1f}s with a 60 s consume timeout"
    await asyncio.wait_for(cancelled.wait(), 5)
    assert len(c.calls) == 1, "no call started after the hung one"
    m = assert_metrics_add_up(bus)
    assert m["consumer_stats"]["hung"]["failed"] == 1, "the abandoned call counts as failed"
    if kind == "memory":
        letters = bus.get_dead_letters()
        assert len(letters) == 3
        assert sum(any("abandoned" in err for err in d["errors"]) for d in letters) == 1
    else:
        assert m["events_pending_in_store"] == 3


async def test_sync_consumer_hung_at_stop_is_abandoned_and_nothing_starts_after(started_bus):
    bus = await started_bus("memory")
    release = threading.Event()
    watch = ShutdownWatch()

    def hang(event: Any) -> bool:
        watch.on_call()
        release.wait(30)
        return True

    c = WatchedSync(watch, "hung", ["**"], behaviour=hang, timeout=60.0)
    await bus.subscribe(c)
    for _ in range(5):
        await bus.publish(make_event())
    t0 = time.monotonic()
    await bus.stop(timeout=0.3)
    assert time.monotonic() - t0 < 20
    release.set()
    m = assert_metrics_add_up(bus)
    assert len(bus.get_dead_letters()) == 5
    assert m["events_dead_lettered"] == 5
    await asyncio.sleep(0.3)
    assert watch.calls_after == 0
    assert len(c.calls) == 1


# -- a bus used under a second event loop ------------------------------------------


def _two_loops(kind: str, tmp_path: Any, second: Any) -> Any:
    kw: dict[str, Any] = {}
    if kind == "durable":
        kw = {"enable_persistence": True, "persistence_path": str(tmp_path / "e.db")}
    bus = EventBus(**kw)
    c = Recorder("c", ["**"])

    async def first() -> None:
        await bus.start()
        await bus.subscribe(c)
        await bus.publish(make_event("one.a"))
        await bus.join(timeout=5)

    asyncio.run(first())
    try:
        return asyncio.run(second(bus, c))
    finally:
        if bus.is_running:
            asyncio.run(bus.stop(timeout=5))


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_second_loop_without_start_rebinds_and_delivers(kind, tmp_path):
    async def second(bus: EventBus, c: Recorder) -> None:
        assert await bus.publish(make_event("two.a"))
        await bus.join(timeout=5)
        assert c.topics_seen == ["one.a", "two.a"]
        await asyncio.wait_for(bus.stop(), 10)  # a plain stop() returns
        assert not bus.is_running

    _two_loops(kind, tmp_path, second)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_second_loop_start_rebinds_and_delivers_what_waited(kind, tmp_path):
    async def second(bus: EventBus, c: Recorder) -> None:
        assert await bus.start() is True
        assert bus.is_running
        assert await bus.publish(make_event("two.a"))
        await bus.join(timeout=5)
        assert c.topics_seen == ["one.a", "two.a"]
        await asyncio.wait_for(bus.stop(timeout=1), 10)
        assert bus.get_dead_letters() == []

    _two_loops(kind, tmp_path, second)


def test_publish_with_no_loop_after_the_loop_closed_says_what_to_do(tmp_path):
    bus = EventBus()

    async def first() -> None:
        await bus.start()
        await bus.subscribe(Recorder("c", ["**"]))

    asyncio.run(first())
    with pytest.raises(RuntimeError, match=r"await bus.start\(\)"):
        bus.publish_nowait(make_event("x.y"))
    assert bus.get_metrics()["events_published"] == 0, "refused, not accepted-then-lost"

    async def again() -> None:
        await bus.start()
        assert bus.publish_nowait(make_event("x.y"))
        await bus.join(timeout=5)
        await bus.stop()

    asyncio.run(again())


def test_stop_in_a_second_loop_with_a_suspended_call_loses_nothing(tmp_path):
    """A call suspended when the first loop closed is cancelled with it; the event
    is retried under the second loop, not lost."""
    bus = EventBus()
    gate: dict[str, Any] = {}

    async def behaviour(event: Any) -> bool:
        if "first" not in gate:
            gate["first"] = True
            await asyncio.Event().wait()  # cancelled when the loop closes
        return True

    c = Recorder("c", ["**"], behaviour=behaviour, retry_delay=0.01)

    async def first() -> None:
        await bus.start()
        await bus.subscribe(c)
        await bus.publish(make_event("a.b"))
        await asyncio.sleep(0.05)

    asyncio.run(first())

    async def second() -> None:
        await bus.join(timeout=5)
        await bus.stop()

    asyncio.run(second())
    m = assert_metrics_add_up(bus)
    assert m["events_processed"] == 1
    assert len(c.calls) == 2


# -- logging ------------------------------------------------------------------------


async def test_failed_attempts_are_logged_at_debug_and_dead_letters_at_warning(
    started_bus, caplog
):
    caplog.set_level("DEBUG", logger="mpm_events")
    bus = await started_bus("memory")

    def boom(event: Any) -> bool:
        raise ValueError("bad payload")

    await bus.subscribe(Recorder("c", ["**"], behaviour=boom, max_retries=1, retry_delay=0.01))
    e = make_event("t.x")
    await bus.publish(e)
    await bus.join(timeout=5)
    await bus.stop()
    debug = [r for r in caplog.records if r.levelname == "DEBUG" and e.id in r.getMessage()]
    assert len(debug) == 2, [r.getMessage() for r in caplog.records]
    assert "attempt 1:" in debug[0].getMessage() and "retrying in" in debug[0].getMessage()
    assert "ValueError: bad payload" in debug[0].getMessage()
    assert "attempt 2:" in debug[1].getMessage() and "no retry left" in debug[1].getMessage()
    warn = [r for r in caplog.records if r.levelname == "WARNING" and e.id in r.getMessage()]
    assert len(warn) == 1
    assert "dead-lettered for consumer c after 2 attempt(s)" in warn[0].getMessage()


async def test_timeouts_are_logged(started_bus, caplog):
    caplog.set_level("DEBUG", logger="mpm_events")
    bus = await started_bus("memory")

    async def slow(event: Any) -> bool:
        await asyncio.sleep(5)
        return True

    await bus.subscribe(Recorder("c", ["**"], behaviour=slow, timeout=0.05, max_retries=0))
    await bus.publish(make_event())
    await bus.join(timeout=5)
    await bus.stop()
    debug = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert any("timed out after 0.05s" in m for m in debug), debug
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("dead-lettered" in m and "timed out" in m for m in warnings), warnings


async def test_many_dead_letters_are_rate_limited_with_a_summary(started_bus, caplog):
    caplog.set_level("WARNING", logger="mpm_events")
    bus = await started_bus("memory")
    await bus.subscribe(Recorder("c", ["**"], behaviour=lambda e: False, max_retries=0))
    for _ in range(200):
        await bus.publish(make_event())
    await bus.join(timeout=10)
    await bus.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "mpm_events"]
    single = [m for m in lines if "dead-lettered for consumer" in m]
    summary = [m for m in lines if "more event(s) were dead-lettered" in m]
    assert len(single) == 10
    assert len(summary) == 1 and summary[0].startswith("190 more")


async def test_nothing_is_logged_per_event_when_nothing_fails(started_bus, caplog):
    caplog.set_level("DEBUG", logger="mpm_events")
    bus = await started_bus("memory")
    await bus.subscribe(Recorder("c", ["**"]))
    caplog.clear()
    for _ in range(500):
        await bus.publish(make_event())
    await bus.join(timeout=5)
    assert [r.getMessage() for r in caplog.records if r.name == "mpm_events"] == []
