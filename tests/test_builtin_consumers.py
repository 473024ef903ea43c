"""The Rust built-in consumers against real components: logging, files, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from mpm_events import (
    ConsumerConfig,
    DeadLetterConsumer,
    Event,
    EventBus,
    EventMetadata,
    IEventConsumer,
    LoggingConsumer,
    MetricsConsumer,
)


class AlwaysFails:
    def __init__(self, name: str = "Flaky", topics: list[str] | None = None) -> None:
        self.config = ConsumerConfig(
            name,
            topics=topics or ["**"],
            max_retries=2,
            retry_backoff=1.0,
            retry_delay=0.01,
        )
        self.is_healthy = True

    async def initialize(self) -> bool:
        return True

    async def consume(self, event) -> bool:
        raise RuntimeError(f"boom on {event.topic}")

    async def consume_batch(self, events) -> int:
        return 0

    async def shutdown(self) -> None:
        pass

    def get_metrics(self) -> dict:
        return {}


def failed_event(topic, data, by="C", source="s", **kw):
    """An event some consumer already failed (e.g. replayed from a dead-letter file)."""
    meta = EventMetadata(retry_count=3, consumers_failed={by}, error_messages=[f"{by}: x"])
    return Event(topic=topic, type="T", source=source, data=data, metadata=meta, **kw)


async def pub(bus, topic, type_, data, **kw):
    assert await bus.publish(Event(topic=topic, type=type_, data=data, **kw))


@pytest.fixture
async def bus():
    b = EventBus()
    await b.start()
    yield b
    await b.stop(timeout=10)


# -- LoggingConsumer ---------------------------------------------------------


async def test_logging_formats_like_the_original(bus, caplog):
    caplog.set_level(logging.DEBUG, logger="mpm_events.events")
    c = LoggingConsumer()
    assert isinstance(c, IEventConsumer)
    assert c.config.priority.name == "LOW"
    assert await bus.subscribe(c)
    e = Event(topic="hook.tool", type="ToolUse", source="hook", data={"tool": "Bash", "n": 1})
    await bus.publish(e)
    await pub(bus, "debug.trace", "T", {}, source="s")
    await pub(bus, "error.x", "E", {}, source="s")
    await pub(bus, "warning.x", "W", {"k": "v"}, source="s")
    assert await bus.join(timeout=10)
    recs = [r for r in caplog.records if r.name == "mpm_events.events"]
    assert len(recs) == 4
    by_topic = {r.getMessage().split("]")[0][1:]: r for r in recs}
    first = by_topic["hook.tool"].getMessage()
    head, body = first.split("\n", 1)
    assert head.startswith("[hook.tool] ToolUse (id=") and head.endswith(", source=hook)")
    assert len(head.split("id=")[1].split(",")[0]) == 8
    assert body == json.dumps({"tool": "Bash", "n": 1}, indent=2)
    assert by_topic["hook.tool"].levelno == logging.INFO
    assert by_topic["debug.trace"].levelno == logging.DEBUG
    assert "\n" not in by_topic["debug.trace"].getMessage()  # empty data is not logged
    assert by_topic["error.x"].levelno == logging.ERROR
    assert by_topic["warning.x"].levelno == logging.WARNING
    assert by_topic["warning.x"].getMessage().endswith('\n{\n  "k": "v"\n}')
    assert c.get_metrics()["events_logged"] == 4


async def test_logging_truncates_str_format_and_custom_logger(bus, caplog):
    caplog.set_level(logging.DEBUG, logger="custom.log")
    c = LoggingConsumer(
        log_level="WARNING", format_json=False, max_data_length=12, logger_name="custom.log"
    )
    await bus.subscribe(c)
    await pub(bus, "a.b", "T", {"key": "a long value", "x": None}, source="s")
    assert await bus.join(timeout=10)
    (rec,) = [r for r in caplog.records if r.name == "custom.log"]
    assert rec.levelno == logging.WARNING
    assert rec.getMessage().split("\n", 1)[1] == str({"key": "a long value"})[:12] + "..."


async def test_logging_failed_and_retried_events_are_errors(bus, caplog):
    caplog.set_level(logging.DEBUG, logger="mpm_events.events")
    await bus.subscribe(LoggingConsumer(topics=["job.*"]))
    await bus.publish(failed_event("job.run", {"a": 1}, by="Flaky"))
    retried = Event(
        topic="job.retry", type="T", source="s", data={}, metadata=EventMetadata(retry_count=2)
    )
    await bus.publish(retried)
    assert await bus.join(timeout=10)
    recs = {
        r.getMessage().split("]")[0][1:]: r for r in caplog.records if r.name == "mpm_events.events"
    }
    assert recs["job.run"].levelno == logging.ERROR
    assert recs["job.run"].getMessage().endswith(" [retries=3, failed={'Flaky'}]")
    assert recs["job.retry"].levelno == logging.WARNING
    assert recs["job.retry"].getMessage().endswith(" [retries=2]")


def test_logging_rejects_unknown_level():
    with pytest.raises(ValueError):
        LoggingConsumer(log_level="LOUD")


# -- MetricsConsumer ---------------------------------------------------------


async def test_metrics_counts_latency_rate_and_report(bus, caplog):
    caplog.set_level(logging.INFO, logger="mpm_events.metrics")
    before = time.monotonic()
    m = MetricsConsumer(top_n=2, report_interval=0.005)
    after = time.monotonic()
    await bus.subscribe(m)
    await asyncio.sleep(0.01)  # the report interval has passed: the next batch reports
    for i in range(5):
        await pub(bus, "hook.tool", "ToolUse", {"i": i}, source="hook")
    for _ in range(3):
        await pub(bus, "hook.response", "Resp", {}, source="cli")
    e = failed_event("hook.fail", {}, by="Flaky", source="cli")
    await bus.publish(e)
    assert await bus.join(timeout=10)
    t0 = time.monotonic()
    got = m.get_metrics()
    t1 = time.monotonic()
    assert got["total_events"] == 9
    assert got["topic_counts"] == {"hook.tool": 5, "hook.response": 3, "hook.fail": 1}
    assert got["type_counts"] == {"ToolUse": 5, "Resp": 3, "T": 1}
    assert got["source_counts"] == {"hook": 5, "cli": 4}
    assert got["top_events"] == {"hook.tool:ToolUse": 5, "hook.response:Resp": 3}
    assert got["top_topics"] == {"hook.tool": 5, "hook.response": 3}
    assert got["unique_topics"] == 3 and got["unique_types"] == 3
    # 9 events over the time since the consumer was made (shorter than the window),
    # but at least 0.1 s, as documented; the window and the peak in detail:
    # test_metrics_window.py and test_metrics_exact.py
    assert 9 / max(t1 - before, 0.1) <= got["events_per_second"] <= 9 / max(t0 - after, 0.1)
    assert 0 < got["latency_p50_ms"] <= got["latency_p95_ms"] <= got["latency_p99_ms"]
    assert got["average_latency_ms"] > 0
    assert got["window_size_seconds"] == 300
    assert got["error_counts"] == {"Flaky": 1}
    reports = [r.getMessage() for r in caplog.records if r.name == "mpm_events.metrics"]
    assert reports and reports[0].startswith("=== Event Metrics Report ===")
    assert any("Total Events:" in r for r in reports)


# -- DeadLetterConsumer ------------------------------------------------------


def read_lines(dlc: DeadLetterConsumer) -> list[dict]:
    out = []
    for f in dlc.files():
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


async def test_dead_letters_from_any_consumer_with_history(bus, tmp_path):
    dlc = DeadLetterConsumer(output_dir=tmp_path)
    assert dlc.config.priority.name == "CRITICAL"
    assert dlc.config.topics == ["error.**", "failed.**"]
    assert await bus.subscribe(dlc)
    await bus.subscribe(AlwaysFails(topics=["hook.**"]))
    await pub(bus, "hook.tool", "ToolUse", {"tool": "Bash"}, source="hook", correlation_id="c1")
    await pub(bus, "other.ok", "Fine", {}, source="hook")
    assert await bus.join(timeout=10)
    (rec,) = read_lines(dlc)
    assert rec["topic"] == "hook.tool" and rec["type"] == "ToolUse"
    assert rec["data"] == {"tool": "Bash"} and rec["correlation_id"] == "c1"
    assert rec["priority"] == "NORMAL"
    datetime.fromisoformat(rec["timestamp"])
    dl = rec["dead_letter"]
    assert dl["consumer"] == "Flaky" and dl["attempts"] == 3
    assert len(dl["errors"]) == 3 and all("boom on hook.tool" in e for e in dl["errors"])
    assert "Flaky" in rec["metadata"]["consumers_failed"]
    assert dlc.get_metrics()["events_stored"] == 1
    assert all(p.name.startswith("dead-letter-") for p in tmp_path.iterdir())

    # replay re-injects: the event comes back with its id and payload
    (ev,) = await dlc.replay_events()
    assert ev.topic == "hook.tool" and ev.data == {"tool": "Bash"} and ev.id == rec["id"]
    assert "Flaky" in ev.metadata.consumers_failed
    seen = []

    class Sink:
        config = ConsumerConfig("Sink", topics=["hook.tool"])
        is_healthy = True

        async def initialize(self):
            return True

        async def consume(self, event):
            seen.append(event.id)
            return True

        async def consume_batch(self, events):
            return 0

        async def shutdown(self):
            pass

        def get_metrics(self):
            return {}

    await bus.subscribe(Sink())
    await bus.publish(ev)
    assert await bus.join(timeout=10)
    assert seen == [rec["id"]]


async def test_dead_letter_own_topics_store_only_failed_events(bus, tmp_path):
    dlc = DeadLetterConsumer(output_dir=tmp_path)
    await bus.subscribe(dlc)
    await pub(bus, "error.plain", "E", {}, source="s")  # not failed: not stored
    await bus.publish(failed_event("error.hook", {"x": 1}, by="Other"))
    assert await bus.join(timeout=10)
    recs = read_lines(dlc)
    assert [r["topic"] for r in recs] == ["error.hook"]
    assert recs[0]["dead_letter"]["consumer"] is None


async def test_dead_letter_rotation_unique_names(tmp_path):
    dlc = DeadLetterConsumer(output_dir=tmp_path, max_file_size=600)
    assert await dlc.initialize()
    events = []
    for i in range(10):
        events.append(failed_event("failed.job", {"i": i, "pad": "x" * 100}))
    assert await dlc.consume_batch(events) == 10
    files = dlc.files()
    assert len(files) >= 4 and len({f.name for f in files}) == len(files)
    assert all(f.stat().st_size <= 600 for f in files)
    assert [r["data"]["i"] for r in read_lines(dlc)] == list(range(10))
    assert [e.data["i"] for e in await dlc.replay_events()] == list(range(10))


async def test_dead_letter_retention_and_torn_line(tmp_path, caplog):
    old = tmp_path / "dead-letter-20200101-000000.jsonl"
    old.write_text('{"id": "old"}\n')
    ten_days = time.time() - 10 * 86400
    os.utime(old, (ten_days, ten_days))
    recent = tmp_path / "dead-letter-20200102-000000.jsonl"
    good = {
        "id": "e1",
        "topic": "failed.a",
        "type": "T",
        "timestamp": "2024-05-01T12:00:00.000001+00:00",
        "source": "s",
        "data": {"k": 1},
        "correlation_id": None,
        "priority": "HIGH",
        "metadata": {"retry_count": 3, "consumers_failed": ["C"], "error_messages": ["C: x"]},
    }
    recent.write_text(json.dumps(good) + "\n" + json.dumps(good)[:40])  # crash mid-write
    dlc = DeadLetterConsumer(output_dir=tmp_path, retention_days=7)
    assert await dlc.initialize()
    assert not old.exists() and recent.exists()
    (ev,) = await dlc.replay_events()
    assert ev.id == "e1" and ev.priority.name == "HIGH" and ev.metadata.retry_count == 3
    assert dlc.get_metrics()["lines_skipped"] == 1
    # the next record goes to a new file, not glued to the torn line
    e = failed_event("failed.b", {})
    assert await dlc.consume(e)
    assert [x.id for x in await dlc.replay_events()] == ["e1", e.id]


async def test_dead_letter_replay_by_time_window_and_topic(tmp_path):
    dlc = DeadLetterConsumer(output_dir=tmp_path)
    assert await dlc.initialize()
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    events = []
    for i, topic in enumerate(["hook.a", "hook.b.c", "system.x", "hook.a"]):
        events.append(failed_event(topic, {"i": i}, timestamp=base + timedelta(minutes=i)))
    assert await dlc.consume_batch(events) == 4

    async def ids(**kw):
        return [e.data["i"] for e in await dlc.replay_events(**kw)]

    assert await ids() == [0, 1, 2, 3]
    assert await ids(start_time=base + timedelta(minutes=1)) == [1, 2, 3]
    assert await ids(end_time=base + timedelta(minutes=1)) == [0, 1]
    assert await ids(
        start_time=base + timedelta(minutes=1), end_time=base + timedelta(minutes=2)
    ) == [1, 2]
    assert await ids(start_time=(base + timedelta(minutes=3)).replace(tzinfo=None)) == [3]
    assert await ids(topic_filter="hook.") == [0, 1, 3]
    assert await ids(topic_filter="hook.*") == [0, 3]
    assert await ids(topic_filter="hook.**") == [0, 1, 3]
    assert dlc.get_metrics()["events_replayed"] == 4 + 3 + 2 + 2 + 1 + 3 + 2 + 3


async def test_replay_events_window_must_be_datetimes(tmp_path) -> None:
    dlc = DeadLetterConsumer(output_dir=tmp_path)
    with pytest.raises(
        TypeError, match="start_time and end_time must be datetimes or None, got str"
    ):
        await dlc.replay_events(start_time="yesterday")
    # A naive datetime is taken as UTC; an empty store replays nothing.
    assert await dlc.replay_events(start_time=datetime(2026, 1, 1)) == []
