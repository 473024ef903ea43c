"""Failure tests of the bus on Redis Streams (issue 13), each on a private
``redis-server`` (``tests/helpers/redis_server.py``) and reporting lost / handled /
duplicate counts in its assertion messages:

- a poison event: delivered exactly the attempts allowed (1 + ``max_retries``), at
  the backoff intervals within 20 %, once in the dead letters; healthy events
  unaffected;
- a transient failure: retried, handled, no dead letter;
- 200 short-lived publisher processes (the compiled direct path,
  ``_core._log_append``, a few processes at a time): every event present once;
- a dropped reply to the append script (``tests/helpers/redis_proxy.py`` swallows
  it once): the retry on a fresh connection keeps one copy, under the first id;
- a lost reply to a blocking ``XREADGROUP`` (the server put the entry in the
  reader's pending list): re-read by the same reader before the claim timeout, once;
- a response timeout shorter than the BLOCK (``block_timeout=0.03`` against the
  reader's 100 ms): blocking reads the client gave up on still deliver on the server
  (the proxy's ``linger``), at least three such replies are lost, and every event is
  still handled once, before the claim timeout, with nothing left pending;
- trimming under a paused consumer name: nothing it has not handled is trimmed;
- replay across a window with several events in one millisecond at both edges.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, make_event, wait_until
from helpers.redis_proxy import RedisProxy
from helpers.redis_server import RedisServer
from mpm_events import EventBus
from mpm_events._core import _log_append, _log_range

WAIT = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    yield s
    s.kill()


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.url(prefix=f"t{uuid.uuid4().hex[:8]}")


def xpending_count(port: int, stream: str, group: str) -> int:
    """``XPENDING stream group`` (the summary form): how many entries are pending."""
    args = [b"XPENDING", stream.encode(), group.encode()]
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(cmd)
        reply = b""
        while b"\r\n" not in reply.partition(b"\r\n")[2]:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    # "*4\r\n:<count>\r\n..."
    head, _, rest = reply.partition(b"\r\n")
    assert head == b"*4" and rest.startswith(b":"), reply
    return int(rest[1:].partition(b"\r\n")[0])


def tally(got: list[Any], want: list[Any]) -> str:
    c = Counter(got)
    lost = [w for w in want if w not in c]
    dup = sum(n - 1 for n in c.values() if n > 1)
    return f"lost={len(lost)} {lost[:5]} handled={len(c)} duplicates={dup}"


async def test_a_poison_event_gets_exactly_its_attempts_at_the_backoff_intervals(url: str) -> None:
    delay, backoff, retries = 0.5, 2.0, 3
    attempts: dict[str, list[float]] = {}

    def behaviour(e: Any) -> bool:
        attempts.setdefault(e.data["k"], []).append(time.monotonic())
        if e.data["k"] == "poison":
            raise RuntimeError(f"poison attempt {len(attempts['poison'])}")
        return True

    bus = EventBus(backend=url)
    rec = Recorder(
        "poisoned",
        topics=["log.**"],
        behaviour=behaviour,
        max_retries=retries,
        retry_delay=delay,
        retry_backoff=backoff,
    )
    await bus.subscribe(rec)
    await bus.start()
    healthy = [f"h{i}" for i in range(20)]
    for k in healthy[:10]:
        assert await bus.publish(make_event("log.ev", {"k": k}))
    assert await bus.publish(make_event("log.ev", {"k": "poison"}))
    for k in healthy[10:]:
        assert await bus.publish(make_event("log.ev", {"k": k}))
    await wait_until(lambda: len(bus.get_dead_letters()) >= 1, WAIT, "the dead letter")
    await bus.join(WAIT)
    letters = bus.get_dead_letters()
    got = [k for k in attempts if k != "poison"]
    counts = tally(got, healthy)
    assert sorted(got) == sorted(healthy), counts
    assert all(len(attempts[k]) == 1 for k in healthy), counts + f" attempts={attempts}"
    times = attempts["poison"]
    assert len(times) == 1 + retries, f"{len(times)} attempts, wanted {1 + retries}; {counts}"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    want = [delay * backoff**n for n in range(retries)]
    for g, w in zip(gaps, want, strict=True):
        assert abs(g - w) <= 0.2 * w, f"retry gaps {gaps} not within 20% of {want}"
    assert len(letters) == 1 and letters[0]["event"].data["k"] == "poison", letters
    assert letters[0]["attempts"] == 1 + retries, letters
    assert letters[0]["errors"][-1].endswith(f"poison attempt {1 + retries}"), letters
    # Once in the log's dead letters, seen from another handle.
    await bus.stop(5)
    again = EventBus(backend=url)
    assert [d["event"].data["k"] for d in again.get_dead_letters()] == ["poison"]


async def test_a_transient_failure_is_retried_and_leaves_no_dead_letter(url: str) -> None:
    failed: list[str] = []

    def behaviour(e: Any) -> bool:
        if e.data["k"] == "flaky" and not failed:
            failed.append(e.id)
            raise ConnectionError("downstream blinked")
        return True

    bus = EventBus(backend=url)
    rec = Recorder("t", topics=["log.**"], behaviour=behaviour, max_retries=3, retry_delay=0.05)
    await bus.subscribe(rec)
    await bus.start()
    keys = ["a", "flaky", "b"]
    for k in keys:
        assert await bus.publish(make_event("log.ev", {"k": k}))
    await bus.join(WAIT)
    got = [c.event.data["k"] for c in rec.calls]
    assert Counter(got) == Counter({"a": 1, "flaky": 2, "b": 1}), tally(got, keys)
    assert bus.get_dead_letters() == [] and failed, bus.get_dead_letters()
    await bus.stop(5)


PUBLISH_ONE = (
    "import sys; from mpm_events._core import _log_append; "
    "_log_append(sys.argv[1], "
    "[{'topic': 'log.ev', 'source': 'p', 'data': {'i': int(sys.argv[2])}}])"
)


def test_two_hundred_short_lived_publishers_each_land_once(url: str) -> None:
    n, at_once = 200, 4
    running: list[tuple[int, subprocess.Popen[bytes]]] = []
    failed: list[tuple[int, bytes]] = []
    for i in range(n):
        running.append(
            (
                i,
                subprocess.Popen(
                    [sys.executable, "-c", PUBLISH_ONE, url, str(i)], stderr=subprocess.PIPE
                ),
            )
        )
        while len(running) >= at_once or (i == n - 1 and running):
            j, p = running.pop(0)
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                failed.append((j, err[-300:]))
    got = [e["data"]["i"] for e in _log_range(url, limit=1000)]
    assert not failed, f"{len(failed)} publishers failed: {failed[:3]}"
    assert sorted(got) == list(range(n)), tally(got, list(range(n)))


def test_a_dropped_reply_to_the_append_keeps_one_copy(server: RedisServer) -> None:
    proxy = RedisProxy(server.port)
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        via = proxy.url(prefix) + "&timeout=0.5"
        _log_append(via, [{"topic": "log.ev", "data": {"i": 0}}])  # loads the script
        proxy.drop_reply_to(b"EVALSHA")
        began = time.monotonic()
        ids = _log_append(via, [{"topic": "log.ev", "data": {"i": 1}}])
        took = time.monotonic() - began
        assert proxy.dropped == 1, "the proxy did not swallow a reply"
        rows = _log_range(server.url(prefix))
        got = [r["data"]["i"] for r in rows]
        assert got == [0, 1], tally(got, [0, 1]) + f" got={got}"
        assert ids == [rows[1]["entry_id"]], (ids, rows[1]["entry_id"])
        assert took < 5, f"the retry took {took:.1f} s"
    finally:
        proxy.close()


async def test_a_lost_blocking_read_reply_strands_nothing(server: RedisServer) -> None:
    """The server delivered an entry into the reader's pending list, the reply never
    arrived (as when a client's read timeout is shorter than its BLOCK): the reader
    re-reads its own pending entries after the failed read, well before the claim
    timeout, and handles the event once."""
    proxy = RedisProxy(server.port)
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        claim = 20.0
        bus = EventBus(backend=proxy.url(prefix))
        rec = Recorder("r", topics=["log.**"], claim_timeout=claim)
        await bus.subscribe(rec)
        await bus.start()
        assert await bus.publish(make_event("log.ev", {"k": "warm"}))
        await wait_until(lambda: len(rec.calls) == 1, WAIT, "the first event")
        proxy.drop_reply_containing(b"needle-7f3a")
        began = time.monotonic()
        _log_append(server.url(prefix), [{"topic": "log.ev", "data": {"k": "needle-7f3a"}}])
        await wait_until(lambda: len(rec.calls) >= 2, claim, "the event whose reply was lost")
        took = time.monotonic() - began
        await asyncio.sleep(0.3)
        got = [c.event.data["k"] for c in rec.calls]
        assert proxy.dropped == 1, "the proxy did not swallow the read's reply"
        assert got == ["warm", "needle-7f3a"], tally(got, ["warm", "needle-7f3a"])
        assert took < claim, f"recovered only after {took:.1f} s (claim timeout {claim} s)"
        assert rec.calls[1].event.metadata.retry_count == 0
        await bus.stop(5)
    finally:
        proxy.close()


async def test_a_response_timeout_shorter_than_the_block_strands_nothing(
    server: RedisServer,
) -> None:
    """``block_timeout=0.03`` is shorter than the reader's 100 ms BLOCK: a blocking read
    that finds nothing within 30 ms gives up and drops its connection, while the proxy
    (``linger``) keeps the server side open, so an event published in the rest of the
    BLOCK is delivered into the reader's pending list and its reply thrown away
    (``proxy.lost``). Published until at least three such replies are lost: every event
    is handled exactly once, by the same reader re-reading its pending entries, well
    before the claim timeout (no takeover: retry count 0), and none is left pending."""
    proxy = RedisProxy(server.port, linger=0.3)
    bus: EventBus | None = None
    try:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        claim = 20.0
        bus = EventBus(backend=proxy.url(prefix) + "&block_timeout=0.03")
        rec = Recorder("r", topics=["log.**"], claim_timeout=claim)
        await bus.subscribe(rec)
        await bus.start()
        sent: list[int] = []
        began = time.monotonic()
        while proxy.lost < 3:
            assert time.monotonic() - began < 60, (
                f"only {proxy.lost} lost replies after {len(sent)} events in 60 s"
            )
            assert await bus.publish(make_event("log.ev", {"k": len(sent)}))
            sent.append(len(sent))
            # NOTE: ~45 ms apart: many land after a read's 30 ms timeout and within
            # its 100 ms BLOCK, the window in which a delivery's reply is lost.
            await asyncio.sleep(0.045)
        published = time.monotonic()

        def handled() -> set[int]:
            return {c.event.data["k"] for c in rec.calls}

        await wait_until(lambda: handled() >= set(sent), claim, "every event handled")
        took = time.monotonic() - published
        stream = f"{{{prefix}}}:stream"
        await wait_until(
            lambda: xpending_count(server.port, stream, "r") == 0, 10, "every event acked"
        )
        await asyncio.sleep(0.3)  # a duplicate would show up by now
        got = [c.event.data["k"] for c in rec.calls]
        counts = f"lost_replies={proxy.lost} " + tally(got, sent)
        print(counts)
        assert Counter(got) == Counter(sent), counts
        assert took < claim, f"handled only {took:.1f} s after the last publish; {counts}"
        retried = [c.event.data["k"] for c in rec.calls if c.event.metadata.retry_count]
        assert not retried, f"redelivered by a claim takeover: {retried}; {counts}"
        assert xpending_count(server.port, stream, "r") == 0, counts
    finally:
        if bus is not None:
            await bus.stop(5)
        proxy.close()


async def test_trimming_under_a_paused_consumer_keeps_what_it_has_not_handled(url: str) -> None:
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
    old = [make_event("log.ev", {"i": i}, timestamp=an_hour_ago) for i in range(5)]
    assert await bus.publish_batch(old) == 5
    await wait_until(lambda: len(fast.calls) == 5 and len(paused.calls) == 1, WAIT, "delivered")
    runs = time.monotonic() + 0.5
    await wait_until(lambda: time.monotonic() > runs, 2.0, "retention runs")
    left = [e["data"]["i"] for e in _log_range(url)]
    assert left == list(range(5)), "trimmed under the paused name: " + tally(left, list(range(5)))
    gate.set()
    await bus.join(WAIT)
    got = [c.event.data["i"] for c in paused.calls]
    assert sorted(got) == list(range(5)), tally(got, list(range(5)))
    await wait_until(lambda: _log_range(url) == [], WAIT, "retention trimmed them once handled")
    await bus.stop(5)


async def test_replay_across_a_window_with_several_events_in_one_millisecond_at_both_edges(
    url: str,
) -> None:
    base = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    us = datetime.timedelta(microseconds=1)
    since, until = base + 1000 * us, base + 5000 * us  # the window [since, until)
    stamps = {
        "before": [since - 300 * us, since - 1 * us],  # same millisecond as since, before
        "at_since": [since, since, since + 1 * us, since + 999 * us],
        "inside": [base + 3000 * us],
        "before_until": [until - 999 * us, until - 1 * us, until - 1 * us],
        "at_until": [until, until, until + 1 * us, until + 999 * us],
    }
    events = [
        {"topic": "log.ev", "data": {"k": f"{name}{j}"}, "timestamp": t}
        for name, ts in stamps.items()
        for j, t in enumerate(ts)
    ]
    _log_append(url, events)
    want = [
        f"{n}{j}" for n in ("at_since", "inside", "before_until") for j in range(len(stamps[n]))
    ]
    got = [
        e["data"]["k"]
        for e in _log_range(
            url, since_us=int(since.timestamp() * 1e6), until_us=int(until.timestamp() * 1e6)
        )
    ]
    assert got == want, tally(got, want) + f" got={got}"
    bus = EventBus(backend=url)
    rec = Recorder("replayer", topics=["log.**"], start="latest")
    await bus.subscribe(rec)
    await bus.start()
    assert await bus.replay(since=since, until=until, to=rec) == len(want)
    await wait_until(lambda: len(rec.calls) >= len(want), WAIT, "the replayed events")
    replayed = [c.event.data["k"] for c in rec.calls]
    assert replayed == want, tally(replayed, want) + f" got={replayed}"
    await bus.stop(5)
