"""One bus across processes: ``EventBus(backend="sqlite:///...")`` (issue 12).

Real processes (``tests/helpers/shared_log_child.py``) on a real SQLite file: a
publisher in one process reaches a consumer in another; two consumer names x three
instances share exactly and fan out exactly; a consumer SIGKILLed mid-stream and
restarted loses nothing (its duplicates are counted and bounded by what it had in
flight); a publisher SIGKILLed right after ``publish`` returned has its events in the
log; dead letters are seen and replayed across processes. In-process: ``start``,
positions across restarts, ``join``, metrics, bad inputs.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, make_event, wait_until
from helpers.sio_helpers import Server, free_port
from mpm_events import ConsumerConfig, ConsumerConfigError, EventBus, PersistenceError

CHILD = Path(__file__).parent / "helpers" / "shared_log_child.py"
WAIT = 30.0  # generous: a loaded 2-core machine starts Python processes slowly


class Child:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, *args: str, command: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command or [sys.executable, str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_line(self, want: Callable[[str], bool], within: float = WAIT) -> str:
        end = time.monotonic() + within
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"child never printed the line wanted; stderr: {self.stderr()}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    pytest.fail(f"child exited {self.proc.returncode}; stderr: {self.stderr()}")
                continue
            self.seen.append(line)
            if want(line):
                return line

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-3000:]

    def terminate(self, within: float = WAIT) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(within)
        assert rc == 0, self.stderr()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait_exit(self, within: float = WAIT) -> int:
        rc = self.proc.wait(within)
        assert rc == 0, self.stderr()
        return rc


def consumer(url: str, name: str, out: Path, **opts: Any) -> Child:
    c = Child("consume", url, name, str(out), *(f"{k}={v}" for k, v in opts.items()))
    c.wait_line(lambda line: line == "READY")
    return c


def handled(out: Path) -> list[tuple[str, int, int]]:
    """(publisher, i, pid) of every line a consumer child wrote."""
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        pub, i, pid = line.split()
        rows.append((pub, int(i), int(pid)))
    return rows


def wait_for(cond: Callable[[], bool], within: float = WAIT, what: str = "") -> None:
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {within}s: {what}")
        time.sleep(0.02)


def log_entries(url: str) -> int:
    """Entries in the log, counted by another process.

    NOTE: never with Python's sqlite3 in a process whose bus has the file open: that
    is a second SQLite library in the process, and closing its connection drops the
    POSIX locks the bus's SQLite holds on the file.
    """
    count = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
        "print(db.execute('SELECT count(*) FROM log_entries').fetchone()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", count, url.removeprefix("sqlite:///")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(out.stdout)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


def ev(i: int, pub: str = "parent", topic: str = "log.ev") -> Any:
    return make_event(topic, {"pub": pub, "i": i})


# ----- across processes -----


def test_a_publisher_process_reaches_a_consumer_process(any_url: str, tmp_path: Path) -> None:
    url = any_url
    out = tmp_path / "a.txt"
    c = consumer(url, "a", out)
    pub = Child("publish", url, "p1", "120", "40")
    pub.wait_line(lambda line: line == "DONE")
    pub.wait_exit()
    single = Child("publish", url, "p2", "30")
    single.wait_exit()
    want = {("p1", i) for i in range(120)} | {("p2", i) for i in range(30)}
    wait_for(lambda: {(p, i) for p, i, _ in handled(out)} >= want, what="all 150 handled")
    c.terminate()
    rows = handled(out)
    assert {(p, i) for p, i, _ in rows} == want
    # One publisher's events keep their order for a consumer name with one instance.
    for p in ("p1", "p2"):
        seq = [i for q, i, _ in rows if q == p]
        assert seq == sorted(seq)


def test_two_names_by_three_instances_fan_out_and_share_exactly(
    any_url: str, tmp_path: Path
) -> None:
    url = any_url
    children = {
        (name, k): consumer(url, name, tmp_path / f"{name}{k}.txt", batch=10)
        for name in ("x", "y")
        for k in range(3)
    }
    pubs = [Child("publish", url, f"p{j}", "150", "25") for j in range(2)]
    for p in pubs:
        p.wait_exit()
    want = [(f"p{j}", i) for j in range(2) for i in range(150)]

    def rows_of(name: str) -> list[tuple[str, int]]:
        return [(p, i) for k in range(3) for p, i, _ in handled(tmp_path / f"{name}{k}.txt")]

    for name in ("x", "y"):
        wait_for(lambda n=name: len(rows_of(n)) >= len(want), what=f"{name} handled all")
    for c in children.values():
        c.terminate()
    for name in ("x", "y"):
        rows = rows_of(name)
        # Fan-out: each name got every event; sharing: exactly one instance each.
        assert sorted(rows) == sorted(want), name
        per_instance = [len(handled(tmp_path / f"{name}{k}.txt")) for k in range(3)]
        assert sum(per_instance) == 300


def test_a_consumer_killed_mid_stream_loses_nothing_and_duplicates_are_bounded(
    any_url: str, tmp_path: Path
) -> None:
    url = any_url
    n = 3000
    out = tmp_path / "k.txt"
    pub = Child("publish", url, "p", str(n), "500")
    pub.wait_exit()
    c = consumer(url, "k", out, batch=20, slow_after=0.01, claim=1.0)
    wait_for(lambda: len(handled(out)) >= 400, what="the consumer is mid-stream")
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait(10)
    before = len(handled(out))
    assert before < n, "killed before the end of the stream"
    again = consumer(url, "k", out, batch=20, claim=1.0)
    wait_for(
        lambda: {i for _, i, _ in handled(out)} == set(range(n)),
        within=60,
        what="every event handled after the restart",
    )
    again.terminate()
    rows = handled(out)
    counts = collections.Counter(i for _, i, _ in rows)
    duplicates = sum(k - 1 for k in counts.values())
    print(f"killed after {before} lines; {duplicates} duplicate(s) after the restart")
    assert set(counts) == set(range(n)), "0 accepted events lost"
    # Only what the killed instance had in flight (claimed, not acknowledged) comes
    # again: at most the reader's in-flight bound (1024).
    assert duplicates <= 1024
    assert max(counts.values()) <= 2


def test_a_publisher_killed_right_after_publish_returned_has_its_events(
    url: str, tmp_path: Path
) -> None:
    pub = Child("publish", url, "victim", "100000")
    pub.wait_line(lambda line: line == "ok 60")
    pub.proc.send_signal(signal.SIGKILL)
    pub.proc.wait(10)
    # Every "ok i" printed was a publish that had returned True.
    while not pub.lines.empty():
        pub.seen.append(pub.lines.get())
    acked = {int(line.split()[1]) for line in pub.seen if line.startswith("ok ")}
    assert len(acked) >= 61
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    stored = {
        int(x)
        for (x,) in db.execute(
            "SELECT json_extract(CAST(payload AS TEXT), '$.i') FROM log_entries "
            "WHERE json_extract(CAST(payload AS TEXT), '$.pub') = 'victim'"
        )
    }
    db.close()
    assert acked <= stored
    # The log holds a gap-free prefix of the publisher's events.
    assert stored == set(range(len(stored)))


def test_dead_letters_are_seen_and_replayed_across_processes(any_url: str, tmp_path: Path) -> None:
    url = any_url
    out = tmp_path / "d.txt"
    flag = tmp_path / "failing"
    flag.touch()
    c = consumer(url, "dl", out, fail_while=str(flag))

    async def main() -> None:
        bus = EventBus(backend=url)
        await bus.start()
        assert await bus.publish_batch([ev(i) for i in range(5)]) == 5
        await wait_until(lambda: len(bus.get_dead_letters()) == 5, WAIT, "5 dead letters")
        letters = bus.get_dead_letters()
        assert {d["consumer"] for d in letters} == {"dl"}
        assert sorted(d["event"].data["i"] for d in letters) == list(range(5))
        assert all(d["errors"] and d["attempts"] == 1 for d in letters)
        flag.unlink()
        # Replayed in the log: the consumer in the other process gets them again.
        first = letters[0]["event"].id
        assert bus.replay_dead_letters(consumer="dl", event_ids=[first]) == 1
        await wait_until(lambda: len(handled(out)) == 1, WAIT, "one replayed")
        assert bus.replay_dead_letters() == 4
        await wait_until(lambda: len(handled(out)) == 5, WAIT, "all replayed")
        assert bus.get_dead_letters() == []
        await bus.stop(5)

    asyncio.run(main())
    c.terminate()
    assert sorted(i for _, i, _ in handled(out)) == list(range(5))


def test_join_waits_for_events_other_processes_published(url: str, tmp_path: Path) -> None:
    pub = Child("publish", url, "other", "200", "50")
    pub.wait_exit()

    async def main() -> None:
        bus = EventBus(backend=url)
        rec = Recorder("j", topics=["log.**"])
        await bus.subscribe(rec)
        await bus.start()
        await bus.join(WAIT)
        # Everything in the log when join() was called is handled.
        assert sorted(c.event.data["i"] for c in rec.calls) == list(range(200))
        m = bus.get_metrics()
        assert m["shared_log"]["consumers"]["j"]["lag"] == 0
        assert m["shared_log"]["consumers"]["j"]["pending"] == 0
        await bus.stop(5)

    asyncio.run(main())


# ----- in one process -----


async def test_start_latest_and_earliest_and_datetime(url: str) -> None:
    bus = EventBus(backend=url)
    await bus.start()
    an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    old = [make_event("log.ev", {"pub": "p", "i": i}, timestamp=an_hour_ago) for i in range(10)]
    assert await bus.publish_batch(old) == 10
    cut = an_hour_ago + datetime.timedelta(minutes=30)
    assert await bus.publish_batch([ev(i) for i in range(10, 13)]) == 3
    early = Recorder("early", topics=["log.**"])
    late = Recorder("late", topics=["log.**"], start="latest")
    since = Recorder("since", topics=["log.**"], start=cut.replace(tzinfo=None))
    for r in (early, late, since):
        assert await bus.subscribe(r)
    assert await bus.publish_batch([ev(i) for i in range(13, 15)]) == 2
    await bus.join(WAIT)
    got = {r.name: sorted(c.event.data["i"] for c in r.calls) for r in (early, late, since)}
    assert got["early"] == list(range(15))
    assert got["late"] == [13, 14]
    assert got["since"] == list(range(10, 15))
    await bus.stop(5)


async def test_a_consumer_name_keeps_its_position_across_restarts(url: str) -> None:
    bus = EventBus(backend=url)
    rec = Recorder("pos", topics=["log.**"])
    await bus.subscribe(rec)
    await bus.start()
    assert await bus.publish_batch([ev(i) for i in range(10)]) == 10
    await bus.join(WAIT)
    await bus.stop(5)
    assert len(rec.calls) == 10

    other = EventBus(backend=url)
    await other.start()
    assert await other.publish_batch([ev(i) for i in range(10, 15)]) == 5
    again = Recorder("pos", topics=["log.**"], start="latest")
    await other.subscribe(again)
    await other.join(WAIT)
    # A known name ignores start= and resumes where it was.
    assert sorted(c.event.data["i"] for c in again.calls) == list(range(10, 15))
    await other.stop(5)


async def test_topics_filter_at_the_consumer_and_metrics_add_up(url: str) -> None:
    bus = EventBus(backend=url)
    only_a = Recorder("only-a", topics=["a.*"])
    flaky = Recorder(
        "flaky",
        topics=["**"],
        behaviour=lambda e: e.data["i"] % 5 != 0,
        max_retries=1,
        retry_delay=0.01,
    )
    for r in (only_a, flaky):
        await bus.subscribe(r)
    await bus.start()
    events = [make_event("a.x" if i % 2 else "b.x", {"i": i}) for i in range(20)]
    assert await bus.publish_batch(events) == 20
    await bus.join(WAIT)
    assert sorted(c.event.data["i"] for c in only_a.calls) == list(range(1, 20, 2))
    m = bus.get_metrics()
    s = m["consumer_stats"]
    # Entries whose topic a consumer does not match are acknowledged without a call
    # and not counted as received for it.
    assert s["only-a"]["received"] == 10
    assert m["shared_log"]["consumers"]["only-a"]["skipped_by_topic"] == 10
    assert s["flaky"]["dead_lettered"] == 4
    assert m["events_published"] == (
        m["events_processed"]
        + m["events_dead_lettered"]
        + m["events_pending_in_store"]
        + m["events_in_flight"]
    )
    for st in s.values():
        assert st["received"] == (
            st["processed"]
            + st["filtered"]
            + st["dead_lettered"]
            + st["pending_in_store"]
            + st["pending"]
            + st["in_flight"]
            + st["retrying"]
        )
    assert m["shared_log"]["events_appended"] == 20
    assert len(bus.get_dead_letters()) == 4
    await bus.stop(5)


async def test_join_times_out_while_a_consumer_holds_an_event(url: str) -> None:
    gate = asyncio.Event()

    async def wait_gate(e: Any) -> bool:
        await gate.wait()
        return True

    bus = EventBus(backend=url)
    rec = Recorder("held", topics=["log.**"], behaviour=wait_gate)
    await bus.subscribe(rec)
    await bus.start()
    assert await bus.publish(ev(0)) is True
    with pytest.raises(TimeoutError, match="join"):
        await bus.join(0.5)
    gate.set()
    await bus.join(WAIT)
    assert len(rec.calls) == 1
    await bus.stop(5)


async def test_stop_leaves_what_it_gives_up_on_in_the_log(url: str) -> None:
    gate = asyncio.Event()

    async def wait_gate(e: Any) -> bool:
        await gate.wait()
        return True

    bus = EventBus(backend=url)
    # NOTE: the call still running when stop() gives up is abandoned, a failed
    # attempt as on every bus; with retries left it stays in the log too.
    await bus.subscribe(
        Recorder("slow", topics=["log.**"], behaviour=wait_gate, timeout=5, max_retries=3)
    )
    await bus.start()
    assert await bus.publish_batch([ev(i) for i in range(5)]) == 5
    await wait_until(lambda: bus.get_metrics()["events_in_flight"] > 0, WAIT, "delivered")
    await bus.stop(0.1)
    assert bus.get_dead_letters() == []  # not dead-lettered: still in the log

    again = EventBus(backend=url)
    rec = Recorder("slow", topics=["log.**"])
    await again.subscribe(rec)
    await again.start()
    await again.join(WAIT)
    # The released claims come back at once (no claim timeout to wait for).
    assert sorted(c.event.data["i"] for c in rec.calls) == list(range(5))
    await again.stop(5)


async def test_unsubscribe_hands_the_claims_to_another_instance_at_once(url: str) -> None:
    gate = asyncio.Event()

    async def wait_gate(e: Any) -> bool:
        await gate.wait()
        return True

    # Two instances of one name (two buses, two handles on the file).
    first, second = EventBus(backend=url), EventBus(backend=url)
    # NOTE: the same claim_timeout for both (a group's instances should agree on it).
    holder = Recorder("shared", topics=["log.**"], behaviour=wait_gate, claim_timeout=60.0)
    await first.subscribe(holder)
    await first.start()
    assert await first.publish_batch([ev(i) for i in range(5)]) == 5
    await wait_until(lambda: len(holder.calls) == 1, WAIT, "the first instance holds them")
    other = Recorder("shared", topics=["log.**"], claim_timeout=60.0)
    await second.subscribe(other)
    await second.start()
    # The first instance claimed all five and renews its claims: the second gets none.
    assert other.calls == []
    gate.set()  # its call in flight ends; the rest were never started
    assert await first.unsubscribe("shared")
    # Released at unsubscribe: the other instance takes what the first did not handle
    # without waiting for the claims to expire.
    await second.join(WAIT)
    held = {c.event.data["i"] for c in holder.calls}
    got = {c.event.data["i"] for c in other.calls}
    assert held | got == set(range(5))
    assert not held & got, "what the first instance handled is not redelivered"
    await first.stop(5)
    await second.stop(5)


async def test_events_appended_while_a_consumer_leaves_wait_for_its_name(url: str) -> None:
    gate = asyncio.Event()

    async def wait_gate(e: Any) -> bool:
        await gate.wait()
        return True

    bus = EventBus(backend=url)
    leaving = Recorder("u", topics=["log.**"], behaviour=wait_gate, timeout=30)
    await bus.subscribe(leaving)
    await bus.start()
    assert await bus.publish_batch([ev(i) for i in range(5)]) == 5
    await wait_until(lambda: len(leaving.calls) == 1, WAIT, "a call in flight")
    # unsubscribe waits for the call in flight; meanwhile more events are appended.
    task = asyncio.create_task(bus.unsubscribe("u"))
    await wait_until(lambda: bus._topics("u") is None, WAIT, "unregistered")
    assert await bus.publish_batch([ev(i) for i in range(5, 25)]) == 20
    gate.set()
    assert await task
    back = Recorder("u", topics=["log.**"])
    await bus.subscribe(back)
    await bus.join(WAIT)
    # None was acknowledged for the consumer that was leaving without reaching it.
    got = {c.event.data["i"] for c in back.calls} | {leaving.calls[0].event.data["i"]}
    assert got == set(range(25))
    await bus.stop(5)


async def test_replay_reads_the_shared_log(url: str) -> None:
    bus = EventBus(backend=url)
    rec = Recorder("r", topics=["nothing.here"])
    await bus.subscribe(rec)
    await bus.start()
    assert (
        await bus.publish_batch([ev(i, topic="log.a" if i % 2 else "log.b") for i in range(10)])
        == 10
    )
    assert await bus.replay(topics=["log.a"], to="r") == 5
    await bus.join(WAIT)
    assert [c.event.data["i"] for c in rec.calls] == [1, 3, 5, 7, 9]
    await bus.stop(5)


def test_publish_nowait_commits_before_returning(url: str) -> None:
    async def main() -> None:
        bus = EventBus(backend=url)
        await bus.start()
        assert bus.publish_nowait(ev(1)) is True
        assert log_entries(url) == 1
        await bus.stop(5)

    asyncio.run(main())


async def test_retention_keeps_what_a_paused_consumer_has_not_handled(url: str) -> None:
    gate = asyncio.Event()

    async def wait_gate(e: Any) -> bool:
        await gate.wait()
        return True

    bus = EventBus(backend=url, retention_max_age=60.0, retention_interval=0.05)
    fast = Recorder("fast", topics=["log.**"])
    paused = Recorder("paused", topics=["log.**"], behaviour=wait_gate, timeout=60)
    for r in (fast, paused):
        await bus.subscribe(r)
    await bus.start()
    an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    old = [make_event("log.ev", {"pub": "p", "i": i}, timestamp=an_hour_ago) for i in range(5)]
    assert await bus.publish_batch(old) == 5
    await wait_until(lambda: len(fast.calls) == 5 and len(paused.calls) == 1, WAIT, "delivered")
    # Several retention runs later, nothing is gone: "paused" has not handled them.
    runs = time.monotonic() + 0.5
    await wait_until(lambda: time.monotonic() > runs, 2.0, "retention runs")
    assert log_entries(url) == 5
    gate.set()
    await bus.join(WAIT)
    # Handled by every consumer name and older than the maximum age: deleted.
    await wait_until(lambda: log_entries(url) == 0, WAIT, "retention deleted them")
    await bus.stop(5)


# ----- bad input -----


def test_backend_arguments_are_checked(tmp_path: Path) -> None:
    assert EventBus(backend=None).backend is None
    assert EventBus(backend="memory").backend is None
    # redis:// opens a RedisLog now (tests/test_redis_backend.py); its options are checked.
    with pytest.raises(ValueError, match="bad option"):
        EventBus(backend="redis://localhost:6379/0?fast=yes")
    with pytest.raises(ValueError, match='unknown scheme "ftp"'):
        EventBus(backend="ftp://x/y")
    with pytest.raises(ValueError, match="cannot be combined"):
        EventBus(backend=f"sqlite:///{tmp_path}/x.db", enable_persistence=True)
    with pytest.raises(ValueError, match="unknown option"):
        EventBus(backend=f"sqlite:///{tmp_path}/x.db?fast=yes")
    # A plain path (str or PathLike) is a SQLite log.
    assert EventBus(backend=tmp_path / "p.db").backend == str(tmp_path / "p.db")
    assert (tmp_path / "p.db").exists()
    with pytest.raises(ConsumerConfigError, match="claim_timeout"):
        ConsumerConfig("c", claim_timeout=0)
    with pytest.raises(ConsumerConfigError, match="start must be"):
        ConsumerConfig("c", start="newest")
    with pytest.raises(ConsumerConfigError, match="start must be"):
        ConsumerConfig("c", start=5)
    cfg = ConsumerConfig("c")
    assert (cfg.claim_timeout, cfg.start) == (30.0, "earliest")


def test_unusable_log_files_raise_persistence_error_naming_the_path(tmp_path: Path) -> None:
    directory = tmp_path / "adir"
    directory.mkdir()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    newer = tmp_path / "newer.db"
    EventBus(backend=str(newer))  # creates a valid log
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    blocked = tmp_path / "file"
    blocked.write_text("")
    for path, what in [
        (directory, "cannot open"),
        (garbage, "corrupt"),
        (newer, "newer version"),
        (other, "not an mpm-events log"),
        (blocked / "sub" / "x.db", "cannot open"),
    ]:
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(PersistenceError, match=what) as err:
            EventBus(backend=f"sqlite:///{path}")
        assert str(path) in str(err.value)
        if before is not None:
            assert path.read_bytes() == before, f"{path} left unchanged"


def test_memory_bus_is_unchanged(tmp_path: Path) -> None:
    bus = EventBus()
    assert bus.backend is None
    assert "shared_log" not in bus.get_metrics()
    assert not os.listdir(tmp_path)


# ----- mpm-events relay -----


def pending_of(url: str, group: str) -> int:
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return db.execute("SELECT count(*) FROM log_pending WHERE grp = ?", (group,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


async def test_relay_forwards_in_order_across_a_dashboard_restart(url: str) -> None:
    port = free_port()
    server = await Server(port=port).start()
    relay = Child(
        command=[sys.executable, "-m", "mpm_events", "relay", "--backend", url, "--to", server.url]
    )
    try:
        await asyncio.to_thread(relay.wait_line, lambda line: "forwarding" in line)
        first = Child("publish", url, "p1", "20", "10")
        await asyncio.to_thread(first.wait_exit)
        await server.wait_for(lambda: len(server.events()) >= 20, WAIT)
        await server.stop()
        # The dashboard is away: events published now wait in the log, the relay retries.
        second = Child("publish", url, "p2", "20")
        await asyncio.to_thread(second.wait_exit)
        await wait_until(lambda: pending_of(url, "dashboard-relay") > 0, WAIT, "relay retrying")
        server2 = await Server(port=port).start()
        try:
            await server2.wait_for(lambda: len(server2.events()) >= 20, WAIT)
            await asyncio.to_thread(relay.terminate)
            got1 = [(e["data"]["data"]["pub"], e["data"]["data"]["i"]) for e in server.events()]
            got2 = [(e["data"]["data"]["pub"], e["data"]["data"]["i"]) for e in server2.events()]
        finally:
            await server2.stop()
    finally:
        relay.kill()
        await server.stop()
    # Once each and in order: the first stream before the outage, the second after.
    assert got1 == [("p1", i) for i in range(20)]
    assert got2 == [("p2", i) for i in range(20)]
    assert relay.proc.returncode == 0


def test_relay_over_http_keeps_order_through_failed_answers(url: str) -> None:
    from helpers.http_server import Answer, RecordingServer

    with RecordingServer() as server:
        # The dashboard answers 503 four times: the first event is retried, nothing
        # after it is sent before it (ordered), and each is delivered once.
        server.answer(*[Answer(503)] * 4)
        relay = Child(
            command=[
                sys.executable,
                "-m",
                "mpm_events",
                "relay",
                "--backend",
                url,
                "--to",
                server.url,
            ]
        )
        try:
            relay.wait_line(lambda line: "forwarding" in line)
            Child("publish", url, "h", "8").wait_exit()
            server.wait_for(4 + 8, timeout=WAIT)
            relay.terminate()
            requests = list(server.requests)
        finally:
            relay.kill()
    sent = [(r.json()["data"]["data"]["pub"], r.json()["data"]["data"]["i"]) for r in requests]
    assert sent[:4] == [("h", 0)] * 4
    assert sent[4:] == [("h", i) for i in range(8)], "once each, in order"


def test_relay_refuses_bad_arguments(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mpm_events", "relay", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    bad_url = run("--backend", f"sqlite:///{tmp_path}/x.db", "--to", "ftp://dash")
    assert bad_url.returncode == 2 and "ftp://dash" in bad_url.stderr
    bad_log = run("--backend", f"sqlite:///{tmp_path}", "--to", "http://127.0.0.1:1")
    assert bad_log.returncode == 2 and str(tmp_path) in bad_log.stderr
    no_to = run("--backend", f"sqlite:///{tmp_path}/x.db")
    assert no_to.returncode == 2 and "--to" in no_to.stderr
