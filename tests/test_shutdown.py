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
from conftest import BUS_KINDS, Recorder, SyncRecorder, make_event, wait_until
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


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_failed_attempts_are_logged_at_debug_and_dead_letters_at_warning(
    started_bus, kind, caplog
):
    caplog.set_level("DEBUG", logger="mpm_events")
    bus = await started_bus(kind)

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


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_timeouts_are_logged(started_bus, kind, caplog):
    caplog.set_level("DEBUG", logger="mpm_events")
    bus = await started_bus(kind)

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


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_many_dead_letters_are_rate_limited_with_a_summary(started_bus, kind, caplog):
    caplog.set_level("WARNING", logger="mpm_events")
    bus = await started_bus(kind)
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


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_nothing_is_logged_per_event_when_nothing_fails(started_bus, kind, caplog):
    caplog.set_level("DEBUG", logger="mpm_events")
    bus = await started_bus(kind)
    await bus.subscribe(Recorder("c", ["**"]))
    caplog.clear()
    for _ in range(500):
        await bus.publish(make_event())
    await bus.join(timeout=5)
    assert [r.getMessage() for r in caplog.records if r.name == "mpm_events"] == []


# -- short-lived processes -----------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_socketio_with_the_dashboard_down_stops_fast_and_dead_letters(started_bus, kind):
    """A hook process: the dashboard is not there. Each attempt fails at once with
    the connection error (no waiting for acks that cannot come), stop() does not
    wait out the retries nor the flush_timeout (a draining bus fires its retries at
    once, and each fails at once while the last connection attempt is fresh), and
    the events reach the bus's own dead letters with the reason."""
    from mpm_events import SocketIOConsumer

    bus = await started_bus(kind)
    port = _free_port()  # nothing listens there
    sio = SocketIOConsumer(url=f"http://127.0.0.1:{port}", flush_timeout=20.0)
    assert await bus.subscribe(sio)
    sent = [make_event("hook.pre_tool", {"i": i}) for i in range(5)]
    for e in sent:
        assert await bus.publish(e)

    await wait_until(
        lambda: bus.get_metrics()["consumer_stats"]["SocketIOConsumer"]["failed"] >= 5,
        5,
        "every event's first attempt failed",
    )
    t0 = time.monotonic()
    await bus.stop()
    took = time.monotonic() - t0
    assert took < 3, f"stop() waited {took:.1f}s (retries are 1 s apart, flush_timeout 20 s)"
    m = assert_metrics_add_up(bus)
    sm = sio.get_metrics()
    assert sm["events_emitted"] == 0 and sm["events_failed"] >= 5 and sm["unreachable"] >= 5
    assert m["consumer_stats"]["SocketIOConsumer"]["processed"] == 0
    letters = bus.get_dead_letters()
    assert sorted(d["event"].id for d in letters) == sorted(e.id for e in sent)
    assert all(d["consumer"] == "SocketIOConsumer" for d in letters)
    for d in letters:
        assert any("cannot reach the Socket.IO server" in e for e in d["errors"]), d["errors"]
        assert any("refused" in e.lower() for e in d["errors"]), d["errors"]
    assert m["events_dead_lettered"] == 5
    assert m["consumer_stats"]["SocketIOConsumer"]["dead_lettered"] == 5


def test_a_hook_process_with_the_dashboard_down_exits_fast_and_says_so(tmp_path):
    """The same as a real short-lived process, timed from the outside."""
    import subprocess
    import sys
    import textwrap

    port = _free_port()
    script = textwrap.dedent(
        f"""
        import asyncio, logging, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        from mpm_events import EventBus, HookEventProducer, SocketIOConsumer

        async def main():
            bus = EventBus()
            await bus.start()
            await bus.subscribe(SocketIOConsumer(url="http://127.0.0.1:{port}"))
            producer = HookEventProducer(bus)
            for i in range(3):
                await producer.publish_tool_use("Read", {{"file_path": f"/x{{i}}"}})
            await bus.stop()
            print("dead letters:", len(bus.get_dead_letters()))

        asyncio.run(main())
        """
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert "dead letters: 3" in out.stdout
    assert took < 4.5, f"the hook process took {took:.1f}s (flush_timeout is 5 s)"
    assert out.stderr.count("dead-lettered for consumer SocketIOConsumer") == 3, out.stderr


# -- interpreter exit with a running bus -----------------------------------------------

EXIT_SCRIPT = """
import asyncio, logging, sys, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from mpm_events import ConsumerConfig, DeadLetterConsumer, Event, EventBus, IEventConsumer

class Slow(IEventConsumer):
    config = ConsumerConfig("slow", topics=["work.**"])
    is_healthy = True
    async def initialize(self): return True
    {consume}
    async def consume_batch(self, events): return len(events)
    async def shutdown(self): pass
    def get_metrics(self): return {{}}

async def main():
    kw = {bus_kw}
    bus = EventBus(**kw)
    await bus.start()
    await bus.subscribe(Slow())
    if {dlc!r}:
        await bus.subscribe(DeadLetterConsumer(output_dir={out_dir!r}))
    for i in range(50):
        assert await bus.publish(Event(topic="work.item", type="t", source="s", data={{"i": i}}))
    await asyncio.sleep(0.05)
    print("exiting without stop()", flush=True)

asyncio.run(main())
"""

ASYNC_CONSUME = "async def consume(self, event):\n        await asyncio.sleep(0.02); return True"
SYNC_CONSUME = "def consume(self, event):\n        time.sleep(0.02); return True"


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize("dlc", [False, True])
def test_interpreter_exit_with_a_running_bus_accounts_for_what_was_queued(tmp_path, flavour, dlc):
    import json
    import subprocess
    import sys

    script = EXIT_SCRIPT.format(
        consume=ASYNC_CONSUME if flavour == "async" else SYNC_CONSUME,
        bus_kw="{}",
        dlc=dlc,
        out_dir=str(tmp_path / "dl"),
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "exiting without stop()" in out.stdout
    lines = [ln for ln in out.stderr.splitlines() if "Interpreter exiting" in ln]
    assert len(lines) == 1, out.stderr
    import re

    n = int(re.search(r"(\d+) accepted event\(s\) were not delivered", lines[0]).group(1))
    assert 0 < n <= 50
    if dlc:
        files = list((tmp_path / "dl").glob("*.jsonl"))
        written = [json.loads(x) for f in files for x in f.read_text().splitlines()]
        assert len(written) == n, "every undelivered event is in the DeadLetterConsumer's file"
        assert str(files[0]) in lines[0]
        assert all(w["dead_letter"]["consumer"] == "slow" for w in written)


def test_interpreter_exit_with_a_running_durable_bus_leaves_the_rest_in_the_store(tmp_path):
    import re
    import subprocess
    import sys

    path = str(tmp_path / "events.db")
    script = EXIT_SCRIPT.format(
        consume=ASYNC_CONSUME,
        bus_kw=repr({"enable_persistence": True, "persistence_path": path}),
        dlc=False,
        out_dir=str(tmp_path / "dl"),
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if "Interpreter exiting" in ln]
    n = int(re.search(r"(\d+) accepted event\(s\) were not delivered", line).group(1))
    assert "left unacknowledged in the store" in line

    async def reopen() -> int:
        bus = EventBus(enable_persistence=True, persistence_path=path)
        c = Recorder("slow", ["work.**"])
        await bus.subscribe(c)
        await bus.start()
        try:
            await bus.join(timeout=30)
        finally:
            await bus.stop(timeout=5)
        return len(c.calls)

    assert asyncio.run(reopen()) >= n


def test_event_bus_fixture_on_a_wider_loop_scope_still_delivers(tmp_path):
    """pytest-asyncio's ``asyncio_default_fixture_loop_scope = "module"`` starts the
    plugin's ``event_bus`` fixture on another loop than the test's; ``join()`` in
    the test rebinds the bus to the running loop, so its consumers run."""
    import subprocess
    import sys

    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = module\n"
    )
    (tmp_path / "test_scope.py").write_text(
        "import pytest\n"
        "from mpm_events import ConsumerConfig, Event, IEventConsumer\n"
        "class C(IEventConsumer):\n"
        "    config = ConsumerConfig('c', topics=['**'])\n"
        "    is_healthy = True\n"
        "    def __init__(self): self.seen = []\n"
        "    async def initialize(self): return True\n"
        "    async def consume(self, e): self.seen.append(e.topic); return True\n"
        "    async def consume_batch(self, es): return len(es)\n"
        "    async def shutdown(self): pass\n"
        "    def get_metrics(self): return {}\n"
        "@pytest.mark.asyncio\n"
        "async def test_delivers(event_bus):\n"
        "    c = C()\n"
        "    await event_bus.subscribe(c)\n"
        "    await event_bus.publish(Event(topic='a.b', type='t', source='s', data={}))\n"
        "    await event_bus.join(timeout=5)\n"
        "    assert c.seen == ['a.b']\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_without_coroutine_consumers_publish_needs_no_loop(tmp_path):
    """A synchronous hook handler: started in one asyncio.run(), then publish_nowait
    with no loop at all. Worker-thread consumers and Rust sinks need no loop, so the
    events are accepted and delivered."""
    from mpm_events import LoggingConsumer

    bus = EventBus()
    sync = SyncRecorder("sync", ["**"])
    log = LoggingConsumer(topics=["**"])

    async def first() -> None:
        await bus.start()
        await bus.subscribe(sync)
        await bus.subscribe(log)

    asyncio.run(first())
    sent = [make_event("hook.x", {"i": i}) for i in range(5)]
    assert all(bus.publish_nowait(e) for e in sent)
    deadline = time.monotonic() + 10
    while len(sync.calls) < 5 or log.get_metrics()["events_logged"] < 5:
        assert time.monotonic() < deadline, (len(sync.calls), log.get_metrics())
        time.sleep(0.01)
    assert [c.id for c in sync.calls] == [e.id for e in sent]

    async def last() -> None:
        await bus.stop(timeout=5)

    asyncio.run(last())
    assert_metrics_add_up(bus)
