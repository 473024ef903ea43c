"""start/stop/join/subscribe/unsubscribe: draining, idempotence and the not-running refusal."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from conftest import Recorder, fail_times, make_event
from mpm_events import EventBus, IEventBus


async def test_publish_before_start_returns_false_and_warns(caplog, stop_after):
    b = stop_after(EventBus())
    c = Recorder("c")
    with caplog.at_level(logging.WARNING, logger="mpm_events"):
        assert await b.publish(make_event()) is False
        assert b.publish_nowait(make_event()) is False
    assert any("not running" in r.getMessage() for r in caplog.records)
    assert not b.is_running
    await b.start()
    try:
        assert await b.subscribe(c)
        assert await b.publish(make_event()) is True
        await b.join(timeout=5)
        assert len(c.calls) == 1
    finally:
        await b.stop()


async def test_start_and_stop_are_idempotent(stop_after):
    b = stop_after(EventBus())
    assert isinstance(b, IEventBus)
    await b.start()
    await b.start()
    assert b.is_running
    c = Recorder("c")
    await b.subscribe(c)
    await b.stop()
    assert not b.is_running
    await b.stop()
    assert c.shut_down == 1
    assert await b.publish(make_event()) is False


async def test_stop_drains_the_queue_then_calls_shutdown(stop_after):
    b = stop_after(EventBus())
    await b.start()

    async def slow(event):
        await asyncio.sleep(0.005)
        return True

    c = Recorder("slow", ["**"], behaviour=slow)
    await b.subscribe(c)
    events = [make_event() for _ in range(30)]
    for e in events:
        assert await b.publish(e)
    await b.stop(timeout=10)
    assert c.ids == [e.id for e in events]
    assert c.shut_down == 1
    assert c.shutdown_after_calls == 30, "shutdown() ran before the queue was drained"


async def test_stop_fires_waiting_retries_and_flushes_partial_batches(stop_after):
    b = stop_after(EventBus())
    await b.start()
    r = Recorder("r", ["**"], behaviour=fail_times(1), retry_delay=60.0)
    bt = Recorder("bt", ["**"], batch_size=50, batch_timeout=60.0)
    await b.subscribe(r)
    await b.subscribe(bt)
    e = make_event()
    await b.publish(e)
    t0 = time.monotonic()
    await b.stop(timeout=10)
    # generous for a loaded machine; what matters is not waiting out the 60 s
    assert time.monotonic() - t0 < 30, "stop() waited out a 60 s backoff or batch timeout"
    assert r.ids == [e.id, e.id]
    assert "r" in e.metadata.consumers_processed
    assert [len(x) for x in bt.batches] == [1]
    assert r.shutdown_after_calls == 2
    assert bt.shutdown_after_calls == 1


async def test_stop_with_timeout_returns_with_a_hung_consumer(stop_after):
    b = stop_after(EventBus())
    await b.start()

    async def hang(event):
        await asyncio.Event().wait()

    c = Recorder("hung", ["**"], behaviour=hang, timeout=60.0)
    await b.subscribe(c)
    for _ in range(3):
        await b.publish(make_event())
    t0 = time.monotonic()
    await b.stop(timeout=0.3)
    assert time.monotonic() - t0 < 30, "stop(timeout) waited for the 60 s consume timeout"
    assert not b.is_running
    assert c.shut_down == 1
    # what was still queued went to the dead-letter queue rather than vanishing
    assert len(b.get_dead_letters()) >= 2


async def test_join_waits_and_times_out(bus):
    gate = asyncio.Event()

    async def wait_gate(event):
        await gate.wait()
        return True

    c = Recorder("g", ["**"], behaviour=wait_gate)
    await bus.subscribe(c)
    assert await bus.join(timeout=1) is True  # idle bus
    await bus.publish(make_event())
    with pytest.raises(TimeoutError):
        await bus.join(timeout=0.1)
    gate.set()
    assert await bus.join(timeout=5) is True
    assert bus.get_metrics()["events_in_flight"] == 0


async def test_subscribe_unsubscribe(bus):
    c = Recorder("c", ["a.*"])
    assert await bus.subscribe(c) is True
    assert c.initialized == 1
    assert bus.get_consumers() == [c]
    await bus.publish(make_event("a.x"))
    await bus.join(timeout=5)
    assert await bus.unsubscribe("c") is True
    assert c.shut_down == 1
    assert bus.get_consumers() == []
    assert await bus.unsubscribe("c") is False
    assert await bus.unsubscribe("nobody") is False
    await bus.publish(make_event("a.y"))
    await bus.join(timeout=5)
    assert c.topics_seen == ["a.x"]
    # the name is free again
    assert await bus.subscribe(Recorder("c"))


async def test_restart_after_stop(stop_after):
    b = stop_after(EventBus())
    await b.start()
    c = Recorder("c")
    await b.subscribe(c)
    await b.stop()
    await b.start()
    try:
        assert b.is_running
        assert await b.publish(make_event())
        await b.join(timeout=5)
        assert len(c.calls) == 1
    finally:
        await b.stop()


async def test_a_consumer_cancelling_the_task_it_runs_in_stalls_nothing(bus):
    """consume() runs with a Task of the bus's pump as the current task; a consumer
    that cancels ``asyncio.current_task()`` ends that Task, and the next wake-up
    takes another."""
    cancelled: list[asyncio.Task] = []

    async def cancel_mine(event):
        task = asyncio.current_task()
        assert task is not None, "consume() sees a current task"
        if len(cancelled) < 3:
            cancelled.append(task)
            task.cancel()
        return True

    c = Recorder("c", ["**"], behaviour=cancel_mine)
    assert await bus.subscribe(c)
    for i in range(60):
        assert await bus.publish(make_event())
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    await bus.join(timeout=5)
    assert len(c.calls) == 60
    assert len(cancelled) == 3 and all(t.done() for t in cancelled)


async def test_cancelling_every_other_task_leaves_the_bus_working(bus):
    """A shutdown routine that cancels every task but its own (the pump's too) must
    not strand what is published after it."""
    c = Recorder("c")
    assert await bus.subscribe(c)
    assert await bus.publish(make_event())
    await bus.join(timeout=5)
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    for _ in range(10):
        assert await bus.publish(make_event())
    await bus.join(timeout=5)
    assert len(c.calls) == 11
