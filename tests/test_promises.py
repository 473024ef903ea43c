"""Promises of the README and the stub that had no test (issue 9), each on the
in-memory and the durable bus where it applies to both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import statistics
import threading
import time

import pytest
from conftest import BUS_KINDS, Recorder, SyncRecorder, make_event, wait_until
from mpm_events import DeadLetterConsumer, EventBus, LoggingConsumer
from mpm_events.errors import InvalidTopicError

kinds = pytest.mark.parametrize("kind", BUS_KINDS)


# -- dead_letter_capacity ------------------------------------------------------


@kinds
async def test_dead_letter_capacity_evicts_the_oldest_and_counts_it(started_bus, kind):
    bus = await started_bus(kind, dead_letter_capacity=3)
    bad = Recorder("bad", behaviour=lambda e: False, max_retries=0)
    assert await bus.subscribe(bad)
    sent = [make_event(data={"i": i}) for i in range(5)]
    for e in sent:
        assert await bus.publish(e)
    assert await bus.join(timeout=10)
    letters = bus.get_dead_letters()
    assert [d["event"].id for d in letters] == [e.id for e in sent[2:]], "the newest three"
    assert all(d["consumer"] == "bad" and d["attempts"] == 1 for d in letters)
    m = bus.get_metrics()
    assert m["dead_letter_queue_size"] == 3
    assert m["dead_letters_evicted"] == 2
    assert m["events_failed"] == 5, "an evicted dead letter was still produced"


def test_dead_letter_capacity_below_one_is_refused():
    with pytest.raises(ValueError):
        EventBus(dead_letter_capacity=0)


# -- error_handler as a plain function ------------------------------------------


@kinds
@pytest.mark.parametrize("consumer_cls", [Recorder, SyncRecorder], ids=["async", "sync"])
async def test_a_plain_def_error_handler_gets_the_event_and_the_exception(
    started_bus, kind, consumer_cls
):
    bus = await started_bus(kind)
    seen: list[tuple[str, BaseException, threading.Thread]] = []

    def on_error(event, exc):  # a plain function, not a coroutine
        seen.append((event.id, exc, threading.current_thread()))

    def boom(event):
        raise KeyError(f"boom {event.data['i']}")

    c = consumer_cls("c", behaviour=boom, max_retries=1, retry_delay=0.01, error_handler=on_error)
    assert await bus.subscribe(c)
    sent = [make_event(data={"i": i}) for i in range(2)]
    for e in sent:
        assert await bus.publish(e)
    assert await bus.join(timeout=10)
    # once per failed attempt: the first attempt and its one retry, for each event
    assert sorted(i for i, _, _ in seen) == sorted([e.id for e in sent] * 2)
    assert all(isinstance(exc, KeyError) and "boom" in str(exc) for _, exc, _ in seen)
    assert len(bus.get_dead_letters()) == 2


# -- unsubscribe while events still wait --------------------------------------


@kinds
async def test_unsubscribe_accounts_for_what_still_waits_and_starts_no_call(started_bus, kind):
    # Every accepted event ends in one place (issue 9): what still waits for an
    # unsubscribed consumer goes to the dead letters naming the unsubscribe; on a
    # durable bus it stays pending in the store and is redelivered when a consumer
    # of that name subscribes again.
    bus = await started_bus(kind)
    gate = asyncio.Event()

    async def held(event):
        await gate.wait()
        return True

    c = Recorder("c", behaviour=held)
    other = Recorder("other")
    assert await bus.subscribe(c)
    assert await bus.subscribe(other)
    sent = [make_event(data={"i": i}) for i in range(5)]
    for e in sent:
        assert await bus.publish(e)
    await wait_until(lambda: len(c.calls) == 1, what="the first call in progress")
    unsub = asyncio.ensure_future(bus.unsubscribe("c"))
    await wait_until(lambda: "c" not in [x.config.name for x in bus.get_consumers()])
    gate.set()  # the call in progress finishes
    assert await asyncio.wait_for(unsub, 10) is True
    assert await bus.join(timeout=10)
    assert c.ids == [sent[0].id], "a consume call started after unsubscribe"
    assert c.shut_down == 1
    assert sorted(other.ids) == sorted(e.id for e in sent), "the others are not affected"
    letters = [d for d in bus.get_dead_letters() if d["consumer"] == "c"]
    waiting = [e.id for e in sent[1:]]
    if kind == "memory":
        assert [d["event"].id for d in letters] == waiting
        assert all("unsubscri" in d["errors"][-1] for d in letters), letters[0]["errors"]
    else:
        assert letters == []
        bus.flush_persistence()
        assert bus.persistence_stats()["pending_deliveries"] == len(waiting)
        again = Recorder("c")
        assert await bus.subscribe(again)  # queues what "c" did not acknowledge
        assert await bus.join(timeout=10)
        assert again.ids == waiting, "the waiting events were not kept for redelivery"


# -- error paths the stub promises --------------------------------------------


@kinds
def test_start_outside_a_running_loop_raises(kind, tmp_path):
    kw = {}
    if kind == "durable":
        kw = {"enable_persistence": True, "persistence_path": str(tmp_path / "e.db")}
    bus = EventBus(**kw)
    with pytest.raises(RuntimeError, match="event loop"):
        bus.start()
    assert not bus.is_running


async def test_replay_and_persistence_stats_with_persistence_off(started_bus):
    bus = await started_bus("memory")
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    with pytest.raises(RuntimeError, match="persistence"):
        await bus.replay(to="rec")
    with pytest.raises(RuntimeError, match="persistence"):
        bus.persistence_stats()


async def test_replay_to_a_consumer_not_subscribed_raises_value_error(started_bus):
    bus = await started_bus("durable")
    assert await bus.publish(make_event())
    with pytest.raises(ValueError, match="ghost"):
        await bus.replay(to="ghost")
    rec = Recorder("rec")  # an object, never subscribed
    with pytest.raises(ValueError, match="rec"):
        await bus.replay(to=rec)


@pytest.mark.parametrize("pattern", ["a..b", "hook.**x", ""])
async def test_replay_with_a_malformed_topic_pattern_raises(started_bus, pattern):
    bus = await started_bus("durable")
    rec = Recorder("rec", topics=["nothing.matches"])
    assert await bus.subscribe(rec)
    assert await bus.publish(make_event())
    with pytest.raises(InvalidTopicError):
        await bus.replay(topics=[pattern], to=rec)
    assert await bus.join(timeout=10)
    assert rec.calls == []


async def test_replay_on_a_stopped_durable_bus_raises(started_bus):
    bus = await started_bus("durable")
    rec = Recorder("rec")
    assert await bus.subscribe(rec)
    await bus.stop(timeout=5)
    with pytest.raises(RuntimeError):
        await bus.replay(to="rec")


@kinds
async def test_replay_dead_letters_on_a_stopped_bus_raises(started_bus, kind):
    bus = await started_bus(kind)
    assert await bus.subscribe(Recorder("bad", behaviour=lambda e: False, max_retries=0))
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    assert len(bus.get_dead_letters()) == 1
    await bus.stop(timeout=5)
    with pytest.raises(RuntimeError, match="running"):
        bus.replay_dead_letters()
    assert len(bus.get_dead_letters()) == 1, "nothing was taken off the queue"


@kinds
async def test_replay_dead_letters_on_a_bus_never_started_raises(started_bus, kind):
    bus = await started_bus(kind, start=False)
    with pytest.raises(RuntimeError, match="running"):
        bus.replay_dead_letters()


# -- retry jitter ---------------------------------------------------------------


@kinds
async def test_retry_delay_jitter_stays_within_ten_percent(started_bus, kind):
    # 40 events fail once; each retry waits retry_delay = 1 s times a factor in
    # [0.9, 1.1]. A timer never fires early, so every gap is >= 0.9 s; scheduling
    # only adds to a gap, so the spread and the 90th percentile tell the jitter.
    bus = await started_bus(kind)
    first: dict[str, float] = {}
    gaps: list[float] = []

    def once(event):
        now = time.monotonic()
        if event.id not in first:
            first[event.id] = now
            return False
        gaps.append(now - first[event.id])
        return True

    c = Recorder("c", behaviour=once, max_retries=1, retry_delay=1.0, retry_backoff=2.0)
    assert await bus.subscribe(c)
    assert await bus.publish_batch([make_event() for _ in range(40)]) == 40
    assert await bus.join(timeout=30)
    assert len(gaps) == 40
    gaps.sort()
    assert gaps[0] >= 0.9 - 0.002, f"a retry came more than 10 % early: {gaps[0]:.3f} s"
    p90 = gaps[int(len(gaps) * 0.9)]
    assert p90 <= 1.1 + 0.05, f"retries come more than 10 % late: p90 {p90:.3f} s"
    assert gaps[-1] - gaps[0] >= 0.02, f"no jitter: every delay within {gaps[-1] - gaps[0]:.4f} s"
    assert 0.95 <= statistics.median(gaps) <= 1.06


# -- topic_pattern is matched from the start of the topic ------------------------


@kinds
@pytest.mark.parametrize("compiled", [True, False], ids=["re.Pattern", "str"])
async def test_topic_pattern_is_anchored_at_the_start_of_the_topic(started_bus, kind, compiled):
    bus = await started_bus(kind)
    pattern = re.compile(r"tool") if compiled else r"tool"
    c = Recorder("rx", None, topic_pattern=pattern)
    assert await bus.subscribe(c)
    topics = ["tool", "tool.use", "toolbox.x", "hook.tool", "my.tool.use", "xtool"]
    for t in topics:
        assert await bus.publish(make_event(t))
    assert await bus.join(timeout=10)
    assert sorted(c.topics_seen) == ["tool", "tool.use", "toolbox.x"], "re.match, not re.search"


# -- LoggingConsumer(include_data=False) -----------------------------------------


@kinds
async def test_logging_without_data_logs_only_the_head_line(started_bus, kind, caplog):
    caplog.set_level(logging.DEBUG, logger="mpm_events.events")
    bus = await started_bus(kind)
    c = LoggingConsumer(include_data=False)
    assert c.include_data is False
    assert await bus.subscribe(c)
    e = make_event("hook.tool", {"tool": "Bash", "secret": "do-not-log"}, type="ToolUse")
    assert await bus.publish(e)
    assert await bus.join(timeout=10)
    (rec,) = [r for r in caplog.records if r.name == "mpm_events.events"]
    assert rec.getMessage() == f"[hook.tool] ToolUse (id={e.id[:8]}, source=tests)"
    assert rec.levelno == logging.INFO


# -- DeadLetterConsumer.cleanup() -----------------------------------------------


async def test_dead_letter_cleanup_deletes_only_files_past_retention(tmp_path):
    c = DeadLetterConsumer(output_dir=tmp_path, retention_days=1)
    assert await c.initialize()
    (fresh,) = c.files()  # started at initialize()
    day = 86_400
    now = time.time()
    old = [tmp_path / f"dead-letter-2020010{i}-000000.jsonl" for i in range(1, 4)]
    recent = tmp_path / "dead-letter-20200201-000000.jsonl"
    foreign = tmp_path / "notes.txt"
    for p in [*old, recent, foreign]:
        p.write_text(json.dumps({"id": p.name}) + "\n")
    for p in [*old, foreign]:
        os.utime(p, (now - 3 * day, now - 3 * day))
    os.utime(recent, (now - day / 2, now - day / 2))
    assert c.cleanup() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fresh.name, recent.name, foreign.name]
    ), "only dead-letter files past retention are deleted"
    assert c.cleanup() == 0
    await c.shutdown()
