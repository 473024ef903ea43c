"""Sync consumers on worker threads, publish_nowait from threads, and exiting with a live bus."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import Recorder, SyncRecorder, fail_times, make_event, wait_until


async def test_sync_consumer_runs_on_a_worker_thread(bus):
    c = SyncRecorder("sync", ["**"])
    await bus.subscribe(c)
    events = [make_event() for _ in range(10)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    assert c.ids == [e.id for e in events]
    assert all(call.thread is not threading.main_thread() for call in c.calls)
    for e in events:
        assert e.metadata.consumers_processed == {"sync"}


async def test_blocking_sync_consumer_does_not_stall_async_ones(bus):
    release = threading.Event()

    def block(event):
        release.wait(10)
        return True

    slow = SyncRecorder("slow", ["**"], behaviour=block)
    fast = Recorder("fast", ["**"])
    await bus.subscribe(slow)
    await bus.subscribe(fast)
    try:
        for _ in range(5):
            await bus.publish(make_event())
        await wait_until(lambda: len(fast.calls) == 5, what="async consumer not stalled")
        # NOTE: the worker thread may not have begun its first call yet (a loaded
        # machine); once it has, it stays blocked in it.
        await wait_until(lambda: len(slow.calls) >= 1, what="the sync consumer's first call")
        assert len(slow.calls) == 1
    finally:
        release.set()
    await bus.join(timeout=5)
    assert len(slow.calls) == 5


async def test_sync_consumer_failures_are_retried(bus):
    c = SyncRecorder("sync", ["**"], behaviour=fail_times(2, "raise"), retry_delay=0.01)
    await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert [call.retry_count for call in c.calls] == [0, 1, 2]
    assert e.metadata.consumers_processed == {"sync"}


async def test_sync_consumer_returning_an_awaitable_is_awaited_on_the_loop(bus):
    loop_thread = threading.current_thread()
    ran_on = []

    async def on_loop():
        ran_on.append(threading.current_thread())
        # needs the running loop: fails if stepped on the worker thread
        await asyncio.sleep(0.01)
        return True

    c = SyncRecorder("sync", ["**"], behaviour=lambda e: on_loop())
    await bus.subscribe(c)
    e = make_event()
    await bus.publish(e)
    await bus.join(timeout=5)
    assert ran_on == [loop_thread]
    assert e.metadata.consumers_processed == {"sync"}


@pytest.mark.parametrize("consumer_cls", [Recorder, SyncRecorder])
async def test_publish_nowait_from_eight_threads_at_once(bus, consumer_cls):
    c = consumer_cls("c", ["**"])
    await bus.subscribe(c)
    per_thread = 500
    barrier = threading.Barrier(8)
    published: list[list[str]] = [[] for _ in range(8)]
    errors = []

    def worker(k):
        try:
            barrier.wait(5)
            for i in range(per_thread):
                e = make_event(f"thread{k}.ev", data={"i": i})
                assert bus.publish_nowait(e) is True
                published[k].append(e.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    await asyncio.to_thread(lambda: [t.join(30) for t in threads])
    assert errors == []
    await bus.join(timeout=20)
    all_ids = [i for p in published for i in p]
    assert len(all_ids) == 8 * per_thread
    assert len(c.ids) == len(all_ids), "an event was lost or delivered twice"
    assert sorted(c.ids) == sorted(all_ids)
    # each thread's events arrive in the order that thread published them
    for k in range(8):
        mine = [call.id for call in c.calls if call.topic == f"thread{k}.ev"]
        assert mine == published[k]
    assert bus.get_metrics()["events_published"] == 8 * per_thread


async def test_publish_nowait_from_a_thread_while_the_loop_is_idle(bus):
    c = Recorder("c", ["**"])
    await bus.subscribe(c)
    e = make_event()
    ok = await asyncio.to_thread(bus.publish_nowait, e)
    assert ok is True
    await wait_until(lambda: c.ids == [e.id], what="event published from a thread delivered")


EXIT_SCRIPTS = {
    "async_hang": """
        async def consume(self, event):
            await asyncio.Event().wait()
    """,
    "sync_hang": """
        def consume(self, event):
            time.sleep(3600)
    """,
    "sync_busy": """
        def consume(self, event):
            x = 0
            for i in range(10**9):
                x += i
            return True
    """,
}

SCRIPT = """
import asyncio, threading, time
from mpm_events import ConsumerConfig, Event, EventBus, IEventConsumer

class Hung(IEventConsumer):
    def __init__(self, name):
        self._config = ConsumerConfig(name, ["**"], timeout=1000.0)
    async def initialize(self):
        return True
{consume}
    async def consume_batch(self, events):
        return 0
    async def shutdown(self):
        pass
    @property
    def config(self):
        return self._config
    @property
    def is_healthy(self):
        return True
    def get_metrics(self):
        return {{}}

async def main():
    bus = EventBus()
    await bus.start()
    await bus.subscribe(Hung("hung"))
    for i in range(20):
        await bus.publish(Event("", "a.b", "T", None, "s", {{"i": i}}))

    def spam():
        while True:
            bus.publish_nowait(Event("", "a.c", "T", None, "s", {{}}))
            time.sleep(0.0005)

    threading.Thread(target=spam, daemon=True).start()
    await asyncio.sleep(0.2)
    print("leaving with the bus running", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", sorted(EXIT_SCRIPTS))
def test_interpreter_exits_with_the_bus_running(kind):
    consume = textwrap.indent(textwrap.dedent(EXIT_SCRIPTS[kind]).strip(), "    ")
    script = SCRIPT.format(consume=consume)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert "leaving with the bus running" in proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "Fatal Python error" not in proc.stderr
    assert "panicked" not in proc.stderr
    assert time.monotonic() - t0 < 30
