"""Durability promises of the README and the stub, measured on real files and real
processes (issue 9):

- ``"sync"``: concurrent publishes share one fsync (group commit): the fsyncs of a
  child process are counted with strace;
- ``"async"``: ``publish`` returns before the disk, and the events are fsynced within
  ``flush_interval`` (strace timestamps) and visible to another process (sqlite3);
- retention by size runs in the background;
- a store with a newer schema is refused, naming the path, and left untouched.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Recorder, make_event, wait_until
from mpm_events import PersistenceError

HERE = Path(__file__).parent
CHILD = HERE / "helpers" / "durability_child.py"
FLUSH_INTERVAL = 0.2  # as in durability_child.py
SYNC = re.compile(r"\b(fsync|fdatasync)\(")


def _strace_usable() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "true"], check=False)
    return probe.returncode == 0


needs_strace = pytest.mark.skipif(
    not _strace_usable(), reason="needs strace (and ptrace permission) to count fsyncs"
)


def traced_child(tmp_path: Path, how: str, n: int) -> list[tuple[float, str]]:
    """Run the child under strace; return (time, what) for each fsync and mark."""
    trace = tmp_path / f"strace-{how}.txt"
    db = tmp_path / f"{how}.db"
    proc = subprocess.run(
        [
            "strace",
            *("-f", "-qq", "-ttt", "-o", str(trace)),
            *("-e", "trace=fsync,fdatasync,stat,newfstatat,statx"),
            *(sys.executable, str(CHILD), str(db), how, str(n)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(n + 1)], "the child stored every event"
    out: list[tuple[float, str]] = []
    for line in trace.read_text().splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        at, call = float(parts[1]), parts[2]
        if m := re.search(r"/nonexistent-mpm-mark/(\w+)", call):
            out.append((at, m.group(1)))
        elif SYNC.match(call):
            out.append((at, "sync"))
    return out


def syncs_between(trace: list[tuple[float, str]], start: str, end: str) -> list[float]:
    names = [w for _, w in trace]
    assert start in names and end in names, names
    i, j = names.index(start), names.index(end)
    return [t for t, w in trace[i:j] if w == "sync"]


@needs_strace
def test_concurrent_sync_publishes_share_fsyncs(tmp_path: Path) -> None:
    n = 200
    concurrent = syncs_between(traced_child(tmp_path, "concurrent", n), "BEGIN", "END")
    # The counting sees every commit: one task awaiting each publish in turn pays
    # one fsync per event.
    sequential = syncs_between(traced_child(tmp_path, "sequential", n), "BEGIN", "END")
    assert len(sequential) >= n, f"{len(sequential)} fsyncs for {n} sequential publishes"
    assert 1 <= len(concurrent) <= n // 20, (
        f"{len(concurrent)} fsyncs for {n} concurrent publishes: no group commit"
    )


@needs_strace
def test_async_publish_returns_before_the_disk_and_syncs_within_flush_interval(
    tmp_path: Path,
) -> None:
    trace = traced_child(tmp_path, "async", 50)
    assert syncs_between(trace, "BEGIN", "RETURNED") == [], "publish waited for an fsync"
    returned = next(t for t, w in trace if w == "RETURNED")
    after = syncs_between(trace, "RETURNED", "END")
    assert after, "nothing was fsynced after the async publishes"
    # The flush timer fires every flush_interval; strace slows the child, so allow
    # a generous margin on a loaded machine (the timer, not a linger, is checked).
    assert after[0] - returned <= FLUSH_INTERVAL + 0.5, after[0] - returned


async def test_async_publish_is_complete_at_once_and_seen_by_another_process(
    started_bus, tmp_path: Path
) -> None:
    path = tmp_path / "async.db"
    bus = await started_bus(
        "durable", persistence_path=str(path), durability="async", flush_interval=0.05
    )
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    e = make_event("hook.async", {"k": "v"})
    aw = bus.publish(e)
    with pytest.raises(StopIteration) as done:  # an already-complete awaitable
        aw.send(None)
    assert done.value.value is True

    def stored_elsewhere() -> bool:
        out = subprocess.run(
            [sys.executable, "-c", READER, str(path), e.id],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip() == "1"

    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(stored_elsewhere):
        assert time.monotonic() < deadline, "another process never saw the async event"
    assert await bus.join(timeout=10)
    assert rec.ids == [e.id]


READER = """
import sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(con.execute("SELECT count(*) FROM events WHERE id = ?", (sys.argv[2],)).fetchone()[0])
"""


async def test_retention_by_size_runs_in_the_background(started_bus, tmp_path: Path) -> None:
    bus = await started_bus("durable", retention_max_bytes=20_000, retention_interval=0.1)
    sent = [make_event("hook.big", {"i": i, "pad": "y" * 900}) for i in range(60)]
    for e in sent:
        assert await bus.publish(e)
    assert await bus.join(timeout=10)

    def trimmed() -> bool:
        s = bus.persistence_stats()
        return s["stored_bytes"] <= 20_000 and 0 < s["stored_events"] < 60

    await wait_until(trimmed, 10, "background retention by size")
    kept = bus.persistence_stats()["stored_events"]
    target = Recorder("target", topics=["nothing.matches"])
    assert await bus.subscribe(target)
    assert await bus.replay(to=target) == kept
    assert await bus.join(timeout=10)
    assert target.ids == [e.id for e in sent[60 - kept :]], "the newest are kept"


def store_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


async def test_a_store_with_a_newer_schema_is_refused_and_left_untouched(
    started_bus, tmp_path: Path
) -> None:
    path = tmp_path / "newer.db"
    bus = await started_bus("durable", persistence_path=str(path))
    assert await bus.publish(make_event())
    await bus.stop(timeout=5)
    del bus
    # src/storage/schema.rs: PRAGMA user_version holds the schema version (2 today).
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    before = store_files(path)
    with pytest.raises(PersistenceError) as info:
        await started_bus("durable", persistence_path=str(path))
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "schema version 3" in msg and "2" in msg, msg
    after = store_files(path)
    assert after.pop(path.name) == before.pop(path.name), "the newer store was modified"
    # Opening it may leave SQLite's empty -wal/-shm companions, nothing more.
    assert {k: v for k, v in after.items() if k.endswith("-wal") and v} == {}
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    con.close()
