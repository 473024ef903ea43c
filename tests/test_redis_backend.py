"""One bus across processes on Redis Streams: ``EventBus(backend="redis://...")``
(issue 13).

Each test starts its own ``redis-server`` (``tests/helpers/redis_server.py``: a free
port, ``--appendfsync always``, a temporary directory) and real processes
(``tests/helpers/shared_log_child.py``, the same children as the SQLite tests): a
publisher in one process reaches a consumer in another; two names x three instances
fan out and share exactly; a consumer SIGKILLed mid-stream loses nothing after its
claims expire (duplicates bounded by what it had in flight); dead letters of a
consumer in one process are seen and replayed from another; Redis killed under a
running bus: ``publish`` returns False within the connect timeout, and True again
once the server is back, with both committed events in the log; bad URLs and an
unreachable server raise clear errors.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from helpers.redis_server import RedisServer
from mpm_events import EventBus, PersistenceError
from test_shared_log import WAIT, Child, consumer, ev, handled, wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    yield s
    s.kill()


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.url(prefix=f"t{uuid.uuid4().hex[:8]}")


def test_a_publisher_process_reaches_a_consumer_process(url: str, tmp_path: Path) -> None:
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
    for p in ("p1", "p2"):
        seq = [i for q, i, _ in rows if q == p]
        assert seq == sorted(seq), f"{p} out of order"


def test_two_names_by_three_instances_fan_out_and_share_exactly(url: str, tmp_path: Path) -> None:
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
        # Fan-out: each name got every event; sharing: exactly one instance each.
        assert sorted(rows_of(name)) == sorted(want), name


def test_a_consumer_killed_mid_stream_loses_nothing_and_duplicates_are_bounded(
    url: str, tmp_path: Path
) -> None:
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
    counts = collections.Counter(i for _, i, _ in handled(out))
    duplicates = sum(k - 1 for k in counts.values())
    print(f"killed after {before} lines; {duplicates} duplicate(s) after the restart")
    assert set(counts) == set(range(n)), "0 accepted events lost"
    # Only what the killed instance had in flight comes again (reader bound 1024).
    assert duplicates <= 1024
    assert max(counts.values()) <= 2


def test_dead_letters_are_seen_and_replayed_across_processes(url: str, tmp_path: Path) -> None:
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


def test_bad_redis_urls_and_an_unreachable_server_are_clear(server: RedisServer) -> None:
    with pytest.raises(ValueError, match="colour"):
        EventBus(backend=f"redis://127.0.0.1:{server.port}/0?colour=red")
    with pytest.raises(ValueError, match="hard_limit"):
        EventBus(backend=server.url(), persistence_hard_limit_bytes=1 << 20)
    server.kill()
    with pytest.raises(PersistenceError, match=f"127.0.0.1:{server.port}"):
        EventBus(backend=server.url())


async def test_redis_down_at_publish_returns_false_quickly_then_recovers(
    server: RedisServer, url: str, tmp_path: Path
) -> None:
    bus = EventBus(backend=url)
    await bus.start()
    assert await bus.publish(ev(0)) is True
    server.kill()
    began = time.monotonic()
    assert await bus.publish(ev(1)) is False
    took = time.monotonic() - began
    # Bounded by the connect timeout (5 s) of at most two attempts, not a hang.
    assert took < 11, took
    assert server.start(), "redis-server did not come back"
    # The next publish reconnects; nothing was dropped silently.
    assert await bus.publish(ev(2)) is True
    stats = bus.get_metrics()["shared_log"]
    assert (stats["events_appended"], stats["append_failures"]) == (2, 1)
    await bus.stop(5)
    # Both committed events are in the log (appendfsync always), read by a consumer
    # process that starts only now.
    out = tmp_path / "late.txt"
    c = consumer(url, "late", out, start="earliest")
    wait_for(lambda: len(handled(out)) >= 2, what="both committed events")
    c.terminate()
    assert sorted(i for _, i, _ in handled(out)) == [0, 2]
