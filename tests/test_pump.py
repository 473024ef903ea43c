"""The pump that runs the bus's jobs on its loop, both ways it has
(``mpm_events._bus.loop._Pump``): on asyncio's own loops a reusable Handle on the
loop's ready queue with the bus's holder Task entered as the current task; on
loops without that queue (uvloop) a Task waiting on a Future between runs. Either
way consume() sees a current task, a consumer that cancels it stalls nothing, a
consumer that suspends finishes in a Task of its own, and a burst of publishes
costs one run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import Recorder, make_event
from mpm_events import EventBus
from mpm_events._bus import loop as loop_glue


@pytest.fixture(params=["ready_queue", "task"])
async def pump_bus(request, monkeypatch) -> AsyncIterator[EventBus]:
    if request.param == "task":
        real_init = loop_glue._Pump.__init__

        def without_ready_queue(self, bus, loop):
            real_init(self, bus, loop)
            self.ready = None

        monkeypatch.setattr(loop_glue._Pump, "__init__", without_ready_queue)
    b = EventBus()
    await b.start()
    pumps = list(loop_glue._pumps.values())
    assert pumps, "no pump attached"
    expected = request.param == "ready_queue"
    assert any((p.ready is not None) == expected for p in pumps), request.param
    try:
        yield b
    finally:
        await b.stop()


async def test_consume_sees_a_current_task_and_cancelling_it_stalls_nothing(pump_bus):
    seen: list[asyncio.Task] = []

    async def cancel_some(event):
        task = asyncio.current_task()
        assert task is not None, "consume() sees a current task"
        seen.append(task)
        if len(seen) in (3, 7, 11):
            task.cancel()
        return True

    c = Recorder("c", ["**"], behaviour=cancel_some)
    assert await pump_bus.subscribe(c)
    for _ in range(40):
        assert await pump_bus.publish(make_event())
        await asyncio.sleep(0)
    await pump_bus.join(timeout=5)
    assert len(c.calls) == 40
    cancelled = [seen[2], seen[6], seen[10]]
    await asyncio.sleep(0)
    assert all(t.done() for t in cancelled)
    # A cancelled task is never handed out again.
    assert all(t is not seen[2] for t in seen[3:])
    assert asyncio.current_task() not in seen


async def test_a_suspending_consumer_finishes_in_a_task_of_its_own(pump_bus):
    tasks: list[asyncio.Task | None] = []

    async def suspend(event):
        before = asyncio.current_task()
        await asyncio.sleep(0.001)
        tasks.append(asyncio.current_task())
        assert before is not None
        return True

    c = Recorder("c", ["**"], behaviour=suspend)
    assert await pump_bus.subscribe(c)
    for _ in range(5):
        assert await pump_bus.publish(make_event())
    await pump_bus.join(timeout=5)
    assert len(c.calls) == 5 and all(t is not None for t in tasks)


async def test_a_burst_of_publishes_is_one_run(pump_bus):
    c = Recorder("c")
    assert await pump_bus.subscribe(c)
    await pump_bus.join(timeout=5)
    pump = next(p for p in loop_glue._pumps.values() if p.bus is pump_bus)
    loop = asyncio.get_running_loop()
    # Publishes that never yield to the loop: every one wakes the pump.
    for _ in range(50):
        assert await pump_bus.publish(make_event())
    if pump.ready is not None:
        assert list(loop._ready).count(pump.handle) == 1, "one run queued for the burst"
    else:
        assert pump.fut is None or pump.fut.done(), "the Task was woken"
    assert len(c.calls) == 0, "nothing ran inside the publishes"
    await pump_bus.join(timeout=5)
    assert len(c.calls) == 50
