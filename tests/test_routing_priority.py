"""Priority queueing (CRITICAL events first) and ConsumerPriority order across consumers."""

from __future__ import annotations

import asyncio

from conftest import Recorder, make_event, wait_until
from mpm_events import ConsumerPriority, EventPriority


def gated():
    """A behaviour whose first call waits on a gate; later calls return True at once."""
    started = asyncio.Event()
    gate = asyncio.Event()
    state = {"first": True}

    async def behaviour(event):
        if state["first"]:
            state["first"] = False
            started.set()
            await gate.wait()
        return True

    return behaviour, started, gate


async def test_events_queued_while_busy_leave_highest_priority_first(bus):
    behaviour, started, gate = gated()
    c = Recorder("busy", ["**"], behaviour=behaviour)
    assert await bus.subscribe(c)
    await bus.publish(make_event("t.first"))
    await asyncio.wait_for(started.wait(), 5)
    order = [
        ("low1", EventPriority.LOW),
        ("normal1", EventPriority.NORMAL),
        ("high1", EventPriority.HIGH),
        ("critical1", EventPriority.CRITICAL),
        ("low2", EventPriority.LOW),
        ("critical2", EventPriority.CRITICAL),
        ("normal2", EventPriority.NORMAL),
        ("high2", EventPriority.HIGH),
    ]
    for name, prio in order:
        assert await bus.publish(make_event("t." + name, priority=prio))
    gate.set()
    await bus.join(timeout=5)
    assert c.topics_seen == [
        "t.first",
        "t.critical1",
        "t.critical2",
        "t.high1",
        "t.high2",
        "t.normal1",
        "t.normal2",
        "t.low1",
        "t.low2",
    ]


async def test_each_event_reaches_consumers_in_consumer_priority_order(bus):
    log: list[tuple[str, str]] = []
    prios = [
        ConsumerPriority.LOW,
        ConsumerPriority.CRITICAL,
        ConsumerPriority.DEFERRED,
        ConsumerPriority.NORMAL,
        ConsumerPriority.HIGH,
    ]
    for p in prios:
        assert await bus.subscribe(Recorder(p.name, ["**"], priority=p, log=log))
    events = [make_event("t.x") for _ in range(3)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    for e in events:
        names = [name for name, eid in log if eid == e.id]
        assert names == ["CRITICAL", "HIGH", "NORMAL", "LOW", "DEFERRED"]


async def test_consumer_priority_given_as_int_or_name(bus):
    log: list[tuple[str, str]] = []
    assert await bus.subscribe(Recorder("last", ["**"], priority=5, log=log))
    assert await bus.subscribe(Recorder("first", ["**"], priority="critical", log=log))
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert [n for n, _ in log] == ["first", "last"]
    assert bus.get_consumers()[0].config.priority is ConsumerPriority.DEFERRED


async def test_a_failing_consumer_does_not_stop_delivery_to_others(bus):
    def boom(event):
        raise RuntimeError("consumer exploded")

    bad = Recorder("bad", ["**"], behaviour=boom, priority=ConsumerPriority.CRITICAL, max_retries=0)
    good = Recorder("good", ["**"], priority=ConsumerPriority.LOW)
    await bus.subscribe(bad)
    await bus.subscribe(good)
    events = [make_event() for _ in range(5)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    assert good.ids == [e.id for e in events]
    assert len(bad.calls) == 5
    for e in events:
        assert e.metadata.consumers_processed == {"good"}
        assert e.metadata.consumers_failed == {"bad"}


async def test_published_at_and_consumed_at_are_set(bus):
    c = Recorder("c", ["**"])
    await bus.subscribe(c)
    e = make_event()
    assert e.metadata.published_at is None
    await bus.publish(e)
    await bus.join(timeout=5)
    await wait_until(lambda: e.metadata.consumed_at is not None)
    assert e.metadata.published_at <= e.metadata.consumed_at
    assert e.metadata.consumers_processed == {"c"}
