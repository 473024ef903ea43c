"""Per-consumer timeouts, filter/transform functions and failures kept to one consumer."""

from __future__ import annotations

import asyncio
import threading

from conftest import Recorder, SyncRecorder, make_event, wait_until
from mpm_events import Event


async def test_hanging_async_consumer_times_out_and_others_keep_flowing(bus):
    cancelled = []

    async def hang(event):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(event.id)
            raise

    hung = Recorder("hung", ["**"], behaviour=hang, timeout=0.3, max_retries=1, retry_delay=0.01)
    fast = Recorder("fast", ["**"])
    await bus.subscribe(hung)
    await bus.subscribe(fast)
    events = [make_event() for _ in range(2)]
    for e in events:
        await bus.publish(e)
    await wait_until(lambda: len(fast.calls) == 2, within=5, what="fast consumer served")
    assert bus.get_dead_letters() == [], "fast consumer had to wait for the hung one"
    await bus.join(timeout=10)
    assert len(hung.calls) == 4, "each event: first attempt + 1 retry after timing out"
    dead = bus.get_dead_letters()
    assert sorted(d["event"].id for d in dead) == sorted(e.id for e in events)
    for d in dead:
        assert d["consumer"] == "hung"
        assert all("timed out" in err for err in d["errors"])
    assert len(cancelled) == 4, "the timed-out coroutine is cancelled"


async def test_hanging_sync_consumer_times_out_and_gets_a_fresh_worker(bus):
    release = threading.Event()

    def hang_first(event):
        if event.data.get("hang"):
            release.wait(30)
        return True

    hung = SyncRecorder("hung", ["**"], behaviour=hang_first, timeout=0.3, max_retries=0)
    fast = Recorder("fast", ["**"])
    await bus.subscribe(hung)
    await bus.subscribe(fast)
    try:
        stuck = make_event(data={"hang": True})
        await bus.publish(stuck)
        later = [make_event() for _ in range(3)]
        for e in later:
            await bus.publish(e)
        await wait_until(lambda: len(fast.calls) == 4, what="async consumer served")
        await bus.join(timeout=10)
        (d,) = bus.get_dead_letters()
        assert d["event"].id == stuck.id
        assert "timed out" in d["errors"][0]
        for e in later:
            assert "hung" in e.metadata.consumers_processed, "events after the hang were handled"
    finally:
        release.set()


async def test_filter_func_skips_events_for_that_consumer_only(bus):
    picky = Recorder("picky", ["**"], filter_func=lambda e: e.data.get("keep", False))
    everyone = Recorder("all", ["**"])
    await bus.subscribe(picky)
    await bus.subscribe(everyone)
    keep = make_event(data={"keep": True})
    skip = make_event(data={"keep": False})
    await bus.publish(keep)
    await bus.publish(skip)
    await bus.join(timeout=5)
    assert picky.ids == [keep.id]
    assert everyone.ids == [keep.id, skip.id]
    assert bus.get_dead_letters() == []
    assert "picky" not in skip.metadata.consumers_failed
    assert bus.get_metrics()["consumer_stats"]["picky"]["failed"] == 0


async def test_transform_func_replaces_the_event_for_that_consumer(bus):
    def transform(e):
        return Event(e.id, e.topic, "Transformed", e.timestamp, e.source, {"x": e.data["x"] * 10})

    t = Recorder("t", ["**"], transform_func=transform)
    plain = Recorder("plain", ["**"])
    await bus.subscribe(t)
    await bus.subscribe(plain)
    e = make_event(data={"x": 4})
    await bus.publish(e)
    await bus.join(timeout=5)
    assert t.calls[0].event.data == {"x": 40}
    assert t.calls[0].event.type == "Transformed"
    assert plain.calls[0].event.data == {"x": 4}
    assert e.data == {"x": 4}


async def test_raising_filter_is_a_failure_for_that_consumer_only(bus):
    def bad_filter(e):
        raise LookupError("filter cannot decide")

    bad = Recorder("bad", ["**"], filter_func=bad_filter, max_retries=0)
    good = Recorder("good", ["**"])
    await bus.subscribe(bad)
    await bus.subscribe(good)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert bad.calls == []
    assert good.ids == [e.id]
    assert e.metadata.consumers_failed == {"bad"}
    assert e.metadata.consumers_processed == {"good"}
    assert any("filter cannot decide" in m for m in e.metadata.error_messages)
    (d,) = bus.get_dead_letters()
    assert d["consumer"] == "bad"
    assert "filter cannot decide" in d["errors"][0]


async def test_raising_transform_is_a_failure_for_that_consumer_only(bus):
    seen = []

    async def handler(event, exc):
        seen.append(exc)

    def bad_transform(e):
        raise ArithmeticError("transform broke")

    bad = Recorder(
        "bad", ["**"], transform_func=bad_transform, max_retries=0, error_handler=handler
    )
    good = Recorder("good", ["**"])
    await bus.subscribe(bad)
    await bus.subscribe(good)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert bad.calls == []
    assert good.ids == [e.id]
    assert e.metadata.consumers_failed == {"bad"}
    assert any("transform broke" in m for m in e.metadata.error_messages)
    (d,) = bus.get_dead_letters()
    assert "transform broke" in d["errors"][0]
    await wait_until(lambda: seen)
    assert isinstance(seen[0], ArithmeticError)


async def test_raising_consumer_is_retried_then_isolated(bus):
    def boom(e):
        raise RuntimeError("always")

    bad = Recorder("bad", ["**"], behaviour=boom, max_retries=1, retry_delay=0.01)
    good = Recorder("good", ["**"])
    await bus.subscribe(bad)
    await bus.subscribe(good)
    events = [make_event() for _ in range(3)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    assert good.ids == [e.id for e in events]
    assert len(bad.calls) == 6
    assert len(bus.get_dead_letters()) == 3
    assert bus.is_running
