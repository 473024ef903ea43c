"""Retries that really happen, with backoff, a cap, a dead-letter queue and replay."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime

import pytest
from conftest import Recorder, fail_times, make_event, wait_until


def gaps(calls):
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


@pytest.mark.parametrize("how", ["false", "raise"])
async def test_failed_delivery_is_retried_until_it_succeeds(bus, how):
    c = Recorder("r", ["**"], behaviour=fail_times(2, how), max_retries=3, retry_delay=0.01)
    assert await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert [call.retry_count for call in c.calls] == [0, 1, 2]
    assert e.metadata.retry_count == 2
    assert e.metadata.consumers_processed == {"r"}
    assert e.metadata.consumers_failed == set()
    assert len(e.metadata.error_messages) == 2
    if how == "raise":
        assert "boom 0" in e.metadata.error_messages[0]
        assert "boom 1" in e.metadata.error_messages[1]
    else:
        assert "False" in e.metadata.error_messages[0]
    assert bus.get_dead_letters() == []
    stats = bus.get_metrics()["consumer_stats"]["r"]
    assert stats["retried"] == 2
    assert stats["processed"] == 1
    assert stats["dead_lettered"] == 0


async def test_backoff_delays_grow(bus):
    c = Recorder(
        "r",
        ["**"],
        behaviour=lambda e: False,
        max_retries=3,
        retry_delay=0.05,
        retry_backoff=2.0,
    )
    assert await bus.subscribe(c)
    await bus.publish(make_event())
    await bus.join(timeout=10)
    assert len(c.calls) == 4
    g = gaps(c.calls)
    # nominal 0.05, 0.1, 0.2 s with +-10% jitter: loose lower bounds only
    assert g[0] >= 0.04
    assert g[1] >= 0.08
    assert g[2] >= 0.16
    assert sum(g) < 20.0  # generous: scheduling on a loaded machine only adds to a gap


async def test_backoff_is_capped_by_max_retry_delay(bus):
    c = Recorder(
        "r",
        ["**"],
        behaviour=lambda e: False,
        max_retries=3,
        retry_delay=0.05,
        retry_backoff=10.0,  # uncapped: 0.05, 0.5, 5.0 s
        max_retry_delay=0.1,
    )
    assert await bus.subscribe(c)
    await bus.publish(make_event())
    await bus.join(timeout=10)
    assert len(c.calls) == 4
    g = gaps(c.calls)
    assert g[1] >= 0.08
    assert g[2] >= 0.08
    assert max(g) < 3.0, g  # uncapped the third would be 5 s (+-10 %)


async def test_dead_letter_after_max_retries(bus):
    n = {"i": 0}

    def boom(event):
        n["i"] += 1
        raise ValueError(f"boom {n['i']}")

    c = Recorder("dl", ["**"], behaviour=boom, max_retries=2, retry_delay=0.01)
    ok = Recorder("ok", ["**"])
    await bus.subscribe(c)
    await bus.subscribe(ok)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert len(c.calls) == 3
    dead = bus.get_dead_letters()
    assert len(dead) == 1
    d = dead[0]
    assert set(d) >= {"event", "consumer", "errors", "attempts", "failed_at"}
    assert d["event"].id == e.id
    assert d["consumer"] == "dl"
    assert len(d["errors"]) == 3
    for i, err in enumerate(d["errors"], 1):
        assert f"boom {i}" in err
    assert d["attempts"] == 3, "attempts must equal the number of consume() calls"
    assert isinstance(d["failed_at"], datetime)
    assert e.metadata.retry_count == 2
    assert "dl" in e.metadata.consumers_failed
    assert e.metadata.consumers_processed == {"ok"}
    assert len(ok.calls) == 1
    m = bus.get_metrics()
    assert m["dead_letter_queue_size"] == 1
    assert m["events_failed"] == 1
    assert m["consumer_stats"]["dl"]["dead_lettered"] == 1
    assert m["consumer_stats"]["dl"]["retried"] == 2


async def test_max_retries_zero_means_a_single_attempt(bus):
    c = Recorder("once", ["**"], behaviour=lambda e: False, max_retries=0)
    await bus.subscribe(c)
    await bus.publish(make_event())
    await bus.join(timeout=5)
    assert len(c.calls) == 1
    (d,) = bus.get_dead_letters()
    assert d["attempts"] == 1
    assert len(d["errors"]) == 1


async def test_replay_dead_letters_redelivers(bus):
    broken = {"on": True}
    c = Recorder("r", ["**"], behaviour=lambda e: not broken["on"], max_retries=0)
    other = Recorder("other", ["**"])
    await bus.subscribe(c)
    await bus.subscribe(other)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert len(bus.get_dead_letters()) == 1
    broken["on"] = False
    assert bus.replay_dead_letters() == 1
    await bus.join(timeout=5)
    assert c.ids == [e.id, e.id]
    assert other.ids == [e.id], "replay goes only to the consumer that failed"
    assert bus.get_dead_letters() == []
    assert "r" in e.metadata.consumers_processed


async def test_replay_dead_letters_by_consumer_and_event_ids(bus):
    a = Recorder("a", ["**"], behaviour=lambda e: len(a.calls) > 2, max_retries=0)
    b = Recorder("b", ["**"], behaviour=lambda e: len(b.calls) > 2, max_retries=0)
    await bus.subscribe(a)
    await bus.subscribe(b)
    e1, e2 = make_event(), make_event()
    await bus.publish(e1)
    await bus.publish(e2)
    await bus.join(timeout=5)
    assert len(bus.get_dead_letters()) == 4
    assert bus.replay_dead_letters(consumer="a") == 2
    await bus.join(timeout=5)
    assert a.ids == [e1.id, e2.id, e1.id, e2.id]
    assert len(b.calls) == 2
    remaining = bus.get_dead_letters()
    assert {(d["consumer"], d["event"].id) for d in remaining} == {("b", e1.id), ("b", e2.id)}
    assert bus.replay_dead_letters(event_ids=[e2.id]) == 1
    await bus.join(timeout=5)
    assert b.ids == [e1.id, e2.id, e2.id]
    assert [d["event"].id for d in bus.get_dead_letters()] == [e1.id]


async def test_error_handler_gets_event_and_exception(bus):
    seen = []

    async def handler(event, exc):
        await asyncio.sleep(0)
        seen.append((event.id, exc))

    def boom(event):
        raise KeyError("missing-thing")

    c = Recorder(
        "h", ["**"], behaviour=boom, max_retries=1, retry_delay=0.01, error_handler=handler
    )
    await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await wait_until(lambda: len(seen) == 2, what="error_handler called for both attempts")
    assert [s[0] for s in seen] == [e.id, e.id]
    assert all(isinstance(s[1], KeyError) for s in seen)
    assert "missing-thing" in str(seen[0][1])


async def test_error_handler_is_awaited_before_the_event_counts_as_handled(bus):
    done = []

    async def handler(event, exc):
        await asyncio.sleep(0.05)
        done.append(event.id)

    def boom(event):
        raise RuntimeError("x")

    c = Recorder("h", ["**"], behaviour=boom, max_retries=0, error_handler=handler)
    await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert done == [e.id], "join() returned before error_handler finished"


async def test_error_handler_raising_does_not_break_the_bus(bus):
    async def handler(event, exc):
        raise RuntimeError("handler broke too")

    c = Recorder(
        "h", ["**"], behaviour=fail_times(1, "raise"), retry_delay=0.01, error_handler=handler
    )
    await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert e.metadata.consumers_processed == {"h"}
    assert bus.is_running


async def test_a_waiting_retry_does_not_hold_back_later_events(bus):
    def fail_a_once(event):
        return not (event.topic == "t.a" and c.ids.count(event.id) == 1)

    c = Recorder("r", ["**"], behaviour=fail_a_once, max_retries=1, retry_delay=1.0)
    await bus.subscribe(c)
    a = make_event("t.a")
    await bus.publish(a)
    await wait_until(lambda: len(c.calls) == 1)
    b = make_event("t.b")

    await bus.publish(b)
    # b must arrive while a's retry still waits out its 1 s delay
    await wait_until(lambda: b.id in c.ids, within=0.8, what="later event delivered during retry")
    assert c.ids.count(a.id) == 1
    await bus.join(timeout=5)
    assert c.ids == [a.id, b.id, a.id]
