"""The real ``EventBus.publish_batch`` (the stub's promises), on both kinds of bus.

Every event is validated first: one bad event raises naming its index and none is
published; then each is offered in order, one refused by a full queue is counted as
dropped and the rest are still offered; the awaitable resolves to how many were
accepted.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from conftest import BUS_KINDS, Recorder, make_event, wait_until
from mpm_events.errors import InvalidEventError, InvalidTopicError

pytestmark = pytest.mark.parametrize("kind", BUS_KINDS)


def foreign(**overrides: object) -> SimpleNamespace:
    """An object with every ``Event`` attribute (what the bus converts), some overridden."""
    e = make_event()
    fields = {k: getattr(e, k) for k in ("id", "topic", "type", "timestamp", "source", "data")}
    fields.update(metadata=None, correlation_id=None, priority=e.priority)
    fields.update(overrides)
    return SimpleNamespace(**fields)


async def test_returns_how_many_were_accepted_and_delivers_them_in_order(started_bus, kind):
    bus = await started_bus(kind)
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    sent = [make_event(data={"i": i}) for i in range(25)]
    assert await bus.publish_batch(sent) == 25
    assert await bus.join(timeout=10)
    assert rec.ids == [e.id for e in sent]
    m = bus.get_metrics()
    assert (m["events_published"], m["events_dropped"]) == (25, 0)


async def test_accepts_any_iterable_and_an_empty_batch(started_bus, kind):
    bus = await started_bus(kind)
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    assert await bus.publish_batch([]) == 0
    assert await bus.publish_batch(make_event(data={"i": i}) for i in range(3)) == 3
    assert await bus.join(timeout=10)
    assert [c.event.data["i"] for c in rec.calls] == [0, 1, 2]


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        ("not an event", InvalidEventError, "expected an Event"),
        (make_event(topic="a..b"), InvalidTopicError, "empty segment"),
        (make_event(topic="hook.*"), InvalidTopicError, "wildcard"),
        (foreign(data=["not", "a", "dict"]), TypeError, "dict"),
    ],
    ids=["not-an-event", "empty-segment", "wildcard", "data-not-a-dict"],
)
async def test_a_bad_event_raises_naming_its_index_and_nothing_is_published(
    started_bus, kind, bad, error, words
):
    bus = await started_bus(kind)
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    good = [make_event(data={"i": i}) for i in range(5)]
    batch = [*good[:3], bad, *good[3:]]  # the bad one at index 3, good ones after it
    with pytest.raises(error) as info:
        await bus.publish_batch(batch)
    assert "#3" in str(info.value), f"the index of the bad event is not named: {info.value}"
    assert words in str(info.value)
    assert await bus.join(timeout=10)
    assert rec.calls == [], "events before the bad one were published"
    assert bus.get_metrics()["events_published"] == 0
    if kind == "durable":
        assert bus.persistence_stats()["stored_events"] == 0, "a refused batch was stored"


async def test_a_full_queue_counts_the_refused_and_still_offers_the_rest(started_bus, kind):
    bus = await started_bus(kind, max_queue_size=3)
    gate = asyncio.Event()

    async def held(event):
        await gate.wait()
        return True

    rec = Recorder("rec", behaviour=held)
    assert await bus.subscribe(rec)
    first = make_event(data={"i": -1})
    assert await bus.publish(first)
    await wait_until(lambda: len(rec.calls) == 1, what="the first event handed out")
    sent = [make_event(data={"i": i}) for i in range(7)]
    accepted = await bus.publish_batch(sent)
    m = bus.get_metrics()
    assert accepted == 3, "room for exactly max_queue_size waiting events"
    assert m["events_dropped"] == 7 - accepted, "each refused event is counted as dropped"
    assert m["events_published"] == 1 + accepted
    gate.set()
    assert await bus.join(timeout=10)
    assert rec.ids == [first.id, *(e.id for e in sent[:accepted])]
    # Once the queue has room again, a batch is accepted whole.
    assert await bus.publish_batch([make_event(), make_event()]) == 2


async def test_a_stopped_bus_accepts_none(started_bus, kind):
    bus = await started_bus(kind)
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    await bus.stop(timeout=5)
    assert await bus.publish_batch([make_event() for _ in range(4)]) == 0
    assert rec.calls == []
    assert bus.get_metrics()["events_published"] == 0


async def test_a_bus_never_started_accepts_none(started_bus, kind):
    bus = await started_bus(kind, start=False)
    assert await bus.publish_batch([make_event() for _ in range(4)]) == 0
    assert bus.get_metrics()["events_published"] == 0
