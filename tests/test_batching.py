"""Batching: ``consume_batch`` with up to ``batch_size`` events, flushed after ``batch_timeout``."""

from __future__ import annotations

import time

from conftest import Recorder, SyncRecorder, make_event, wait_until


async def test_full_batches_of_batch_size(bus):
    c = Recorder("b", ["**"], batch_size=4, batch_timeout=30.0)
    assert await bus.subscribe(c)
    events = [make_event() for _ in range(8)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    assert [len(b) for b in c.batches] == [4, 4]
    assert [call.id for b in c.batches for call in b] == [e.id for e in events]


async def test_batches_never_exceed_batch_size(bus):
    c = Recorder("b", ["**"], batch_size=5, batch_timeout=0.02)
    assert await bus.subscribe(c)
    events = [make_event() for _ in range(23)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    assert c.batches, "consume_batch was never called"
    assert all(1 <= len(b) <= 5 for b in c.batches)
    assert sorted(c.ids) == sorted(e.id for e in events)


async def test_partial_batch_flushed_after_batch_timeout(bus):
    c = Recorder("b", ["**"], batch_size=10, batch_timeout=0.2)
    assert await bus.subscribe(c)
    t0 = time.monotonic()
    for _ in range(3):
        await bus.publish(make_event())
    await wait_until(lambda: c.batches, 30, what="partial batch flushed")
    elapsed = time.monotonic() - t0
    assert [len(b) for b in c.batches] == [3]
    assert elapsed >= 0.1, "partial batch flushed long before batch_timeout"
    # generous: a loaded 2-core machine may be late, only "never" is a bug
    assert elapsed < 20.0


async def test_batch_consumer_not_called_one_by_one(bus):
    c = Recorder("b", ["**"], batch_size=3, batch_timeout=0.05)
    single = []

    async def consume(event):
        single.append(event)
        return True

    c.consume = consume  # type: ignore[method-assign]
    assert await bus.subscribe(c)
    for _ in range(6):
        await bus.publish(make_event())
    await bus.join(timeout=5)
    assert single == []
    assert sum(len(b) for b in c.batches) == 6


async def test_int_result_counts_successes_and_the_rest_are_retried(bus):
    state = {"n": 0}

    def batch(events):
        state["n"] += 1
        return 2 if state["n"] == 1 else len(events)

    c = Recorder(
        "b",
        ["**"],
        batch_size=5,
        batch_timeout=0.05,
        batch_behaviour=batch,
        max_retries=3,
        retry_delay=0.01,
    )
    assert await bus.subscribe(c)
    events = [make_event() for _ in range(5)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    first = [call.id for call in c.batches[0]]
    assert first == [e.id for e in events]
    later = [call for b in c.batches[1:] for call in b]
    # the first two succeeded; exactly the other three came back, as retries
    assert sorted(call.id for call in later) == sorted(e.id for e in events[2:])
    assert all(call.retry_count >= 1 for call in later)
    for e in events:
        assert "b" in e.metadata.consumers_processed
    assert [e.metadata.retry_count for e in events] == [0, 0, 1, 1, 1]
    assert bus.get_dead_letters() == []
    stats = bus.get_metrics()["consumer_stats"]["b"]
    assert stats["processed"] == 5
    assert stats["retried"] == 3


async def test_consume_batch_raising_fails_the_whole_batch_and_calls_error_handler(bus):
    seen = []

    async def handler(event, exc):
        seen.append((event.id, exc))

    def batch(events):
        raise ValueError("batch broke")

    c = Recorder(
        "b",
        ["**"],
        batch_size=3,
        batch_timeout=0.05,
        batch_behaviour=batch,
        max_retries=0,
        error_handler=handler,
    )
    assert await bus.subscribe(c)
    events = [make_event() for _ in range(3)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    dead = bus.get_dead_letters()
    assert sorted(d["event"].id for d in dead) == sorted(e.id for e in events)
    assert all("batch broke" in d["errors"][0] for d in dead)
    await wait_until(lambda: seen, what="error_handler called")
    assert isinstance(seen[0][1], ValueError)


async def test_sync_consume_batch_on_a_worker_thread(bus):
    c = SyncRecorder("sb", ["**"], batch_size=4, batch_timeout=30.0)
    assert await bus.subscribe(c)
    for _ in range(8):
        await bus.publish(make_event())
    await bus.join(timeout=5)
    assert [len(b) for b in c.batches] == [4, 4]
    import threading

    assert all(call.thread is not threading.main_thread() for call in c.calls)
