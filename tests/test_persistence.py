"""enable_persistence=True: durability, restart redelivery, replay, retention, failures.

Real files in tmp_path and real child processes; every wait is on a condition with a
timeout.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.persist_helpers import Recorder, wait_for
from mpm_events import Event, EventBus, HookEventProducer, PersistenceError

HERE = Path(__file__).parent
UTC = dt.UTC


def ev(topic: str = "hook.test", ts: dt.datetime | None = None, **data: object) -> Event:
    kw: dict[str, object] = {}
    if ts is not None:
        kw["timestamp"] = ts
    return Event(topic=topic, type="t", source="test", data=dict(data), **kw)


_made: list[EventBus] = []


def durable_bus(path: Path, **kw: object) -> EventBus:
    bus = EventBus(enable_persistence=True, persistence_path=str(path), **kw)
    _made.append(bus)
    return bus


@pytest.fixture(autouse=True)
async def _stop_every_bus():
    """Every bus a test made is stopped after it, also when the test fails (a leaked
    bus would hold its store and threads into later tests)."""
    try:
        yield
    finally:
        while _made:
            await _made.pop().stop(timeout=5)


# ----- crash: nothing acknowledged is lost -----


def _run_child_and_kill(path: Path, kill_after: int) -> tuple[list[str], list[str]]:
    """Start the publishing child, SIGKILL it once it printed ``kill_after`` lines
    (plus a random few ms); return the ids publish acknowledged and those the child's
    consumer handled."""
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "helpers" / "persist_crash_child.py"), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    acked: list[str] = []
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if len(lines) > kill_after:
                done.set()
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert done.wait(60), "child did not acknowledge enough events in time"
    time.sleep(random.uniform(0, 0.02))  # a random moment, mid group commit
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert lines and lines[0] == "READY", lines[:3]
    acked = [x[2:] for x in lines[1:] if x.startswith("P ")]
    handled = [x[2:] for x in lines[1:] if x.startswith("D ")]
    return acked, handled


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_sigkill_loses_no_acknowledged_event(tmp_path: Path, seed: int) -> None:
    random.seed(seed)
    path = tmp_path / "events.db"
    acked, handled = _run_child_and_kill(path, kill_after=random.randint(50, 3000))
    assert len(acked) > 0
    bus = durable_bus(path)
    rec = Recorder("crash-consumer")
    await bus.subscribe(rec)
    await bus.start()  # redelivers what crash-consumer did not acknowledge
    # Every id publish acknowledged reaches the consumer: in the child, or after restart.
    want = set(acked) - set(handled)
    await wait_for(lambda: want <= set(rec.ids), 30, "every acknowledged id delivered")
    await bus.join(30)  # waits for the start-time redelivery too
    assert set(acked) <= set(handled) | set(rec.ids), "an acknowledged event was lost"
    assert max(rec.counts().values(), default=1) == 1, "the new bus delivered an event twice"
    dups = len(set(handled) & set(rec.ids))  # handled, ack not yet on disk: allowed
    extra = len(set(rec.ids) - set(acked))  # stored, killed before publish returned
    print(
        f"seed={seed}: acked={len(acked)} handled_in_child={len(handled)} "
        f"redelivered={len(rec.ids)} duplicates={dups} stored_unacknowledged={extra}"
    )
    await bus.stop()
    # The redelivered events were acknowledged: a third start delivers nothing.
    bus2 = durable_bus(path)
    rec2 = Recorder("crash-consumer")
    await bus2.subscribe(rec2)
    await bus2.start()  # a redelivery would start here...
    assert await bus2.join(30)  # ...and join() waits for it to be handled
    assert rec2.ids == []
    stats = bus2.persistence_stats()
    assert (stats["redelivered"], stats["pending_deliveries"]) == (0, 0)
    await bus2.stop()


# ----- acknowledgements and redelivery across restarts -----


async def test_acks_survive_restart_and_unacked_are_redelivered(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = durable_bus(path)
    fast = Recorder("fast")
    gate = asyncio.Event()

    class Stuck(Recorder):
        async def consume(self, event: Event) -> bool:
            await gate.wait()
            return await super().consume(event)

    stuck = Stuck("stuck")
    await bus.subscribe(fast)
    await bus.subscribe(stuck)
    await bus.start()
    sent = [ev(i=i) for i in range(20)]
    assert all(await asyncio.gather(*[bus.publish(e) for e in sent]))
    await wait_for(lambda: len(fast.ids) == 20, 10, "fast consumer")
    bus.flush_persistence()
    # Simulate a crash: a second bus opens the same file while "stuck" never finished.
    bus2 = durable_bus(path)
    await bus2.start()
    fast2, stuck2 = Recorder("fast"), Recorder("stuck")
    await bus2.subscribe(fast2)  # subscribing to a running bus redelivers before returning
    await bus2.subscribe(stuck2)
    await bus2.join(10)
    assert fast2.ids == [], "what was acknowledged came back"
    assert sorted(stuck2.ids) == sorted(e.id for e in sent), "original ids redelivered"
    gate.set()
    await bus.stop(5)
    await bus2.stop(5)


async def test_filtered_counts_as_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = durable_bus(path)
    from mpm_events import ConsumerConfig

    r = Recorder("picky")
    r._config = ConsumerConfig(name="picky", topics=["**"], filter_func=lambda e: False)
    await bus.subscribe(r)
    await bus.start()
    assert await bus.publish(ev())
    await bus.join(5)
    await bus.stop()
    assert bus.persistence_stats()["pending_deliveries"] == 0


async def test_start_redelivers_to_consumers_subscribed_before(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = durable_bus(path)
    gate = asyncio.Event()

    class Stuck(Recorder):
        async def consume(self, event: Event) -> bool:
            await gate.wait()
            return True

    await bus.subscribe(Stuck("c"))
    await bus.start()
    sent = [ev(i=i) for i in range(5)]
    for e in sent:
        assert await bus.publish(e)
    bus2 = durable_bus(path)
    rec = Recorder("c")
    await bus2.subscribe(rec)
    await bus2.start()
    await wait_for(lambda: len(rec.ids) == 5, 10, "redelivery at start")
    assert rec.ids == [e.id for e in sent], "in store order, original ids"
    assert bus2.persistence_stats()["redelivered"] == 5
    gate.set()
    await bus.stop(5)
    await bus2.stop(5)


async def test_dead_letters_are_stored_and_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = durable_bus(path)
    await bus.subscribe(Recorder("bad", fail=True))
    await bus.start()
    sent = [ev(i=i) for i in range(3)]
    for e in sent:
        assert await bus.publish(e)
    await bus.join(10)
    await wait_for(lambda: len(bus.get_stored_dead_letters()) == 3, 10, "stored dead letters")
    await bus.stop()
    bus2 = durable_bus(path)
    letters = bus2.get_stored_dead_letters()
    assert sorted(d["event"].id for d in letters) == sorted(e.id for e in sent)
    assert {d["consumer"] for d in letters} == {"bad"}
    assert all("refused on purpose" in d["errors"][0] for d in letters)
    await bus2.start()
    rec = Recorder("bad")
    await bus2.subscribe(rec)  # queues what "bad" did not acknowledge...
    assert await bus2.join(10)  # ...and join() waits until it was handled
    assert rec.ids == [], "a dead-lettered event is not redelivered"
    assert bus2.persistence_stats()["redelivered"] == 0
    await bus2.stop()


# ----- replay -----


async def test_replay_by_time_window_and_topic(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = durable_bus(path)
    live = Recorder("live")
    target = Recorder("target", topics=["nothing.matches"])
    await bus.subscribe(live)
    await bus.subscribe(target)
    await bus.start()
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i in range(40):
        topic = ["hook.tool.use", "hook.session", "system.health", "hook.tool.done"][i % 4]
        events.append(ev(topic, ts=t0 + dt.timedelta(seconds=i), i=i))
    random.Random(7).shuffle(events)  # store order differs from time order
    for e in events:
        assert await bus.publish(e)
    await bus.join(10)
    since, until = t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=30)
    want = sorted(
        (e for e in events if since <= e.timestamp < until and e.topic.startswith("hook.")),
        key=lambda e: e.timestamp,
    )
    n = await bus.replay(since=since, until=until, topics=["hook.**"], to=target)
    assert n == len(want) == 15
    await bus.join(10)
    assert target.ids == [e.id for e in want], "exactly the stored events, in time order"
    assert [e.data for e in target.events] == [e.data for e in want]
    assert len(live.ids) == 40, "live consumers see nothing of the replay"
    # By name, open-ended, one topic.
    n = await bus.replay(since=since, topics=["system.health"], to="target")
    assert n == len([e for e in events if e.timestamp >= since and e.topic == "system.health"])
    await bus.stop()


async def test_stored_timestamps_are_exact_to_the_microsecond(tmp_path: Path) -> None:
    """UTC, other-offset and naive datetimes are stored exactly (the UTC ones take a
    fast path through datetime.timestamp())."""
    bus = durable_bus(tmp_path / "events.db")
    target = Recorder("target", topics=["nothing.matches"])
    await bus.subscribe(target)
    await bus.start()
    rng = random.Random(11)
    stamps = [
        dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        dt.datetime(2026, 11, 27, 8, 0, 0, 999_999, tzinfo=UTC),
        dt.datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        dt.datetime(2026, 6, 1, 12, 0, 0, 500_001, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
    ]
    stamps += [
        dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=rng.randrange(10**14))
        for _ in range(300)
    ]
    for ts in stamps:
        assert await bus.publish(ev("hook.ts", ts=ts))
    await bus.join(10)
    assert await bus.replay(since=dt.datetime(1969, 1, 1, tzinfo=UTC), to=target) == len(stamps)
    await bus.join(10)
    assert sorted(e.timestamp for e in target.events) == sorted(stamps)
    await bus.stop()


# ----- retention -----


async def test_retention_by_age_and_size(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = durable_bus(path, retention_max_age=dt.timedelta(hours=1), retention_interval=3600.0)
    await bus.start()
    now = dt.datetime.now(UTC)
    old = [ev(ts=now - dt.timedelta(days=2, seconds=i), i=i) for i in range(10)]
    new = [ev(ts=now - dt.timedelta(seconds=60 - i), i=i) for i in range(10)]
    for e in old + new:
        assert await bus.publish(e)
    report = bus.apply_retention()
    assert report["deleted_by_age"] == 10 and report["deleted_by_size"] == 0
    target = Recorder("t")
    await bus.subscribe(target)
    await bus.replay(since=None, to="t")
    await bus.join(5)
    assert sorted(target.ids) == sorted(e.id for e in new), "removed the old, kept the rest"
    await bus.stop()

    path2 = tmp_path / "size.db"
    bus = durable_bus(path2, retention_max_bytes=20_000, retention_interval=3600.0)
    await bus.start()
    sent = [ev(ts=now + dt.timedelta(seconds=i), i=i, pad="y" * 900) for i in range(60)]
    for e in sent:
        assert await bus.publish(e)
    report = bus.apply_retention()
    assert report["bytes_after"] <= 20_000 < report["bytes_before"]
    kept = bus.persistence_stats()["stored_events"]
    assert 0 < kept < 60 and report["deleted_by_size"] == 60 - kept
    target = Recorder("t")
    await bus.subscribe(target)
    await bus.replay(to="t")
    await bus.join(5)
    assert target.ids == [e.id for e in sent[60 - kept :]], "the newest are kept"
    await bus.stop()


async def test_retention_runs_in_the_background(tmp_path: Path) -> None:
    bus = durable_bus(tmp_path / "bg.db", retention_max_age=60.0, retention_interval=0.1)
    await bus.start()
    old = dt.datetime.now(UTC) - dt.timedelta(hours=5)
    for i in range(5):
        assert await bus.publish(ev(ts=old, i=i))
    assert await bus.publish(ev(i=99))
    await wait_for(lambda: bus.persistence_stats()["stored_events"] == 1, 10, "retention")
    await bus.stop()


# ----- failures -----


async def test_full_store_fails_publish_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "full.db"
    bus = durable_bus(path, persistence_hard_limit_bytes=400_000)
    rec = Recorder("r")
    await bus.subscribe(rec)
    await bus.start()
    rnd = random.Random(3)
    accepted: list[str] = []
    refused = 0
    with caplog.at_level(logging.ERROR, logger="mpm_events"):
        for i in range(400):
            blob = base64.b64encode(rnd.randbytes(3000)).decode()  # barely compressible
            e = ev(i=i, blob=blob)
            if await bus.publish(e):
                accepted.append(e.id)
            else:
                refused += 1
                if refused >= 5:
                    break
    assert accepted and refused >= 5, (len(accepted), refused)
    assert any("full" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    await bus.join(10)
    assert rec.ids == accepted, "refused events were not dispatched"
    assert bus.persistence_stats()["write_failures"] >= 5
    await bus.stop()
    del bus
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = [r[0] for r in con.execute("SELECT id FROM events ORDER BY seq")]
    con.close()
    assert stored == accepted, "earlier data intact, nothing half-written"


def test_corrupt_store_raises_persistence_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PersistenceError) as info:
        durable_bus(path)
    msg = str(info.value)
    assert str(path) in msg and "Move the file aside" in msg
    assert path.read_bytes() == b"this is not a database" * 100, "left untouched"


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        durable_bus(tmp_path / "x.db", durability="sometimes")
    with pytest.raises(ValueError):
        durable_bus(tmp_path / "x.db", flush_interval=0)


def test_default_path_is_under_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    bus = EventBus(enable_persistence=True)
    assert bus.persistence_path == str(tmp_path / "data" / "mpm-events" / "events.db")
    assert (tmp_path / "data" / "mpm-events" / "events.db").exists()


# ----- durability modes -----


async def test_async_durability_and_publish_nowait(tmp_path: Path) -> None:
    path = tmp_path / "async.db"
    bus = durable_bus(path, durability="async", flush_interval=0.02)
    rec = Recorder("r")
    await bus.subscribe(rec)
    await bus.start()
    sent = [ev(i=i) for i in range(200)]
    assert all([await bus.publish(e) for e in sent[:100]])
    assert all([bus.publish_nowait(e) for e in sent[100:]])  # returns at once too
    await bus.join(10)
    assert sorted(rec.ids) == sorted(e.id for e in sent)
    assert bus.persistence_stats()["stored_events"] == 200
    await bus.stop()
    con = sqlite3.connect(path)
    stored = {r[0] for r in con.execute("SELECT id FROM events")}
    con.close()
    assert stored == {e.id for e in sent}, "publish_nowait's events are in the store too"


@pytest.mark.parametrize("durability", ["async", "sync"])
async def test_compiled_producer_into_a_durable_bus_stores_its_events(
    tmp_path: Path, durability: str
) -> None:
    # The producer keeps events as Rust fields only on in-memory buses: a durable
    # bus must store every event, with its fields, before delivering it.
    path = tmp_path / "producer.db"
    bus = durable_bus(path, durability=durability, flush_interval=0.02)
    rec = Recorder("r")
    await bus.subscribe(rec)
    await bus.start()
    producer = HookEventProducer(bus)
    for i in range(20):
        assert await producer.publish_tool_use("Bash", {"n": i}, None, f"c{i}")
    await bus.join(10)
    assert bus.persistence_stats()["stored_events"] == 20
    target = Recorder("target", topics=["nothing.matches"])
    await bus.subscribe(target)
    assert await bus.replay(topics=["hook.tool"], to=target) == 20
    await bus.join(10)
    assert sorted(target.ids) == sorted(rec.ids)
    got = {e.id: (e.source, e.type, e.correlation_id, e.data["params"]) for e in target.events}
    want = {e.id: (e.source, e.type, e.correlation_id, e.data["params"]) for e in rec.events}
    assert got == want and want[rec.ids[0]][0] == "hook_handler"
    await bus.stop()


async def test_sync_publish_nowait_from_threads(tmp_path: Path) -> None:
    bus = durable_bus(tmp_path / "t.db")
    rec = Recorder("r")
    await bus.subscribe(rec)
    await bus.start()
    results: list[bool] = []

    def worker() -> None:
        for i in range(50):
            results.append(bus.publish_nowait(ev(i=i)))

    await asyncio.gather(*[asyncio.to_thread(worker) for _ in range(4)])
    assert results.count(True) == 200
    assert bus.persistence_stats()["stored_events"] == 200
    await bus.join(10)
    assert len(rec.ids) == 200
    # create_task accepts the sync-mode awaitable, like the in-memory one.
    assert await asyncio.create_task(bus.publish(ev()))
    await bus.stop()
