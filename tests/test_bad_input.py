"""Bad input: a clear exception or a False, the bus still running, nothing accepted lost."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest
from conftest import Recorder, make_event, wait_until
from mpm_events import Event, EventBus
from mpm_events.errors import ConsumerConfigError, InvalidEventError


def foreign(**overrides):
    fields = {
        "id": "f-1",
        "topic": "a.b",
        "type": "T",
        "timestamp": "2024-01-01T00:00:00+00:00",
        "source": "s",
        "data": {},
        "metadata": None,
        "correlation_id": None,
        "priority": 3,
    }
    fields.update(overrides)
    return types.SimpleNamespace(**{k: v for k, v in fields.items() if v is not ...})


async def assert_still_works(bus, c):
    before = len(c.calls)
    e = make_event("ok.after")
    assert await bus.publish(e)
    await bus.join(timeout=5)
    assert c.ids[before:] == [e.id]


@pytest.mark.parametrize("obj", [None, 42, "event", {"topic": "a.b"}, object()])
async def test_non_event_objects_raise_type_error(bus, obj):
    c = Recorder("c")
    await bus.subscribe(c)
    with pytest.raises(TypeError) as info:
        await bus.publish(obj)
    assert isinstance(info.value, InvalidEventError)
    with pytest.raises(TypeError):
        bus.publish_nowait(obj)
    assert bus.get_metrics()["events_published"] == 0
    await assert_still_works(bus, c)


@pytest.mark.parametrize("missing", ["id", "topic", "type", "timestamp", "source", "data"])
async def test_object_missing_an_attribute_names_it(bus, missing):
    c = Recorder("c")
    await bus.subscribe(c)
    with pytest.raises(TypeError, match=repr(missing).replace("'", "['\"]")):
        await bus.publish(foreign(**{missing: ...}))
    await assert_still_works(bus, c)


async def test_foreign_object_with_all_attributes_is_accepted(bus):
    c = Recorder("c")
    await bus.subscribe(c)
    assert await bus.publish(foreign())
    await bus.join(timeout=5)
    assert c.ids == ["f-1"]


@pytest.mark.parametrize("data", [[1, 2], "text", None.__class__, 5])
async def test_data_that_is_not_a_dict(bus, data):
    c = Recorder("c")
    await bus.subscribe(c)
    with pytest.raises(TypeError, match="data"):
        await bus.publish(foreign(data=data))
    await assert_still_works(bus, c)


async def test_duplicate_consumer_name_returns_false(bus):
    first = Recorder("dup")
    second = Recorder("dup")
    assert await bus.subscribe(first) is True
    assert await bus.subscribe(second) is False
    assert bus.get_consumers() == [first]
    assert second.initialized == 0
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert first.ids == [e.id]
    assert second.calls == []


async def test_initialize_raising_returns_false(bus):
    c = Recorder("c", initialize_result=RuntimeError("cannot init"))
    assert await bus.subscribe(c) is False
    assert bus.get_consumers() == []
    assert bus.is_running


async def test_initialize_returning_false_returns_false(bus):
    c = Recorder("c", initialize_result=False)
    assert await bus.subscribe(c) is False
    assert bus.get_consumers() == []
    # the name is not taken
    assert await bus.subscribe(Recorder("c"))


async def test_consumer_without_config_or_methods_is_refused(bus):
    class NoConfig:
        async def consume(self, e):
            return True

    with pytest.raises(ConsumerConfigError, match="config"):
        await bus.subscribe(NoConfig())
    with pytest.raises(ValueError, match="batch_size"):
        await bus.subscribe(Recorder("z", batch_size=0))
    assert bus.get_consumers() == []


async def test_consume_returning_none_is_a_failure(bus):
    c = Recorder("none", behaviour=lambda e: None, max_retries=1, retry_delay=0.01)
    await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert len(c.calls) == 2
    assert e.metadata.consumers_failed == {"none"}
    (d,) = bus.get_dead_letters()
    assert "None" in d["errors"][0]


async def test_ten_megabyte_payload(bus):
    c = Recorder("c")
    await bus.subscribe(c)
    blob = "x" * (10 * 1024 * 1024)
    e = make_event(data={"blob": blob})
    assert await bus.publish(e)
    await bus.join(timeout=10)
    got = c.calls[0].event.data["blob"]
    assert len(got) == len(blob)
    assert got == blob


def nested(depth):
    root: dict = {}
    node = root
    for _ in range(depth):
        child: dict = {}
        node["next"] = [child]
        node = child
    node["leaf"] = True
    return root


def depth_of(d):
    n = 0
    while "next" in d:
        d = d["next"][0]
        n += 1
    assert d["leaf"] is True
    return n


async def test_payload_nested_deeper_than_the_recursion_limit(bus):
    c = Recorder("c")
    await bus.subscribe(c)
    depth = sys.getrecursionlimit() + 500
    e = make_event(data=nested(depth))
    assert await bus.publish(e)
    assert await bus.publish(foreign(id="deep", data=nested(depth)))
    await bus.join(timeout=10)
    assert [depth_of(call.event.data) for call in c.calls] == [depth, depth]
    await assert_still_works(bus, c)


async def test_bounded_queue_refuses_and_counts_but_loses_nothing_accepted(make_bus):
    b = await make_bus(max_queue_size=5)
    gate = asyncio.Event()

    async def wait_gate(event):
        await gate.wait()
        return True

    c = Recorder("c", behaviour=wait_gate)
    await b.subscribe(c)
    results = []
    for i in range(12):
        e = make_event(data={"i": i})
        results.append((e, await b.publish(e)))
    accepted = [e for e, ok in results if ok]
    refused = [e for e, ok in results if not ok]
    assert 5 <= len(accepted) <= 6
    assert refused, "publish never returned False at max_queue_size"
    assert all(ok for _, ok in results[: len(accepted)]), "refusals only once full"
    m = b.get_metrics()
    assert m["events_dropped"] == len(refused)
    assert m["queue_size"] <= 5
    assert b.publish_nowait(make_event()) is False
    gate.set()
    await b.join(timeout=5)
    assert c.ids == [e.id for e in accepted], "an accepted event was lost"
    # room again
    assert await b.publish(make_event())
    await b.join(timeout=5)


async def test_cancelling_the_task_awaiting_publish(bus):
    c = Recorder("c")
    await bus.subscribe(c)
    accepted = []

    async def producer():
        i = 0
        while True:
            e = make_event(data={"i": i})
            if await bus.publish(e):
                accepted.append(e.id)
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(producer())
    await wait_until(lambda: len(accepted) >= 50, what="producer task running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # a publish awaited by a task cancelled before it ran
    e = make_event()
    t2 = asyncio.ensure_future(bus.publish(e))
    t2.cancel()
    await asyncio.gather(t2, return_exceptions=True)
    await bus.join(timeout=5)
    assert c.ids[: len(accepted)] == accepted
    assert len(c.ids) in (len(accepted), len(accepted) + 1)
    assert bus.is_running
    await assert_still_works(bus, c)


def test_bus_constructor_validates():
    with pytest.raises(ValueError):
        EventBus(max_queue_size=0)


def test_event_setters_validate():
    e = make_event()
    with pytest.raises(TypeError, match="topic"):
        e.topic = 5
    assert isinstance(e, Event)
