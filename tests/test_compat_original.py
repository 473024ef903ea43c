"""The real original (claude-mpm 5.9.10) against our bus: its events, consumers and producers."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime

import pytest
from conftest import Recorder, make_event
from helpers.original_loader import load_original, original_available
from mpm_events import ConsumerPriority, EventPriority, HookEventProducer, SystemEventProducer

pytestmark = pytest.mark.skipif(
    not original_available(), reason="claude-mpm 5.9.10 is not installed (make venv installs it)"
)


@pytest.fixture(scope="module")
def orig():
    return load_original()


def orig_event(orig, topic="a.b", priority=None, **kw):
    return orig.Event(
        id=kw.pop("id", ""),
        topic=topic,
        type=kw.pop("type", "OrigType"),
        timestamp=kw.pop("timestamp", datetime.now(UTC)),
        source=kw.pop("source", "orig"),
        data=kw.pop("data", {"k": "v"}),
        priority=priority or orig.EventPriority.NORMAL,
        **kw,
    )


async def test_original_event_dataclass_is_published(bus, orig):
    c = Recorder("c")
    await bus.subscribe(c)
    oe = orig_event(orig, "hook.tool", orig.EventPriority.CRITICAL, correlation_id="corr")
    assert await bus.publish(oe) is True
    await bus.join(timeout=5)
    (got,) = [call.event for call in c.calls]
    assert got.id == oe.id
    assert got.topic == "hook.tool"
    assert got.type == "OrigType"
    assert got.source == "orig"
    assert got.data == {"k": "v"}
    assert got.correlation_id == "corr"
    assert got.timestamp == oe.timestamp
    assert got.priority is EventPriority.CRITICAL


async def test_original_event_priorities_order_the_queue(bus, orig):
    gate = asyncio.Event()
    started = asyncio.Event()

    async def first_waits(event):
        if event.topic == "t.first":
            started.set()
            await gate.wait()
        return True

    c = Recorder("c", behaviour=first_waits)
    await bus.subscribe(c)
    await bus.publish(orig_event(orig, "t.first"))
    await asyncio.wait_for(started.wait(), 5)
    P = orig.EventPriority
    for name, p in [("low", P.LOW), ("normal", P.NORMAL), ("high", P.HIGH), ("crit", P.CRITICAL)]:
        assert await bus.publish(orig_event(orig, "t." + name, p))
    gate.set()
    await bus.join(timeout=5)
    assert c.topics_seen == ["t.first", "t.crit", "t.high", "t.normal", "t.low"]


async def test_original_metadata_is_carried(bus, orig):
    c = Recorder("c")
    await bus.subscribe(c)
    meta = orig.EventMetadata(retry_count=1, consumers_failed={"X"}, error_messages=["X: boom"])
    await bus.publish(orig_event(orig, metadata=meta))
    await bus.join(timeout=5)
    m = c.calls[0].event.metadata
    assert m.consumers_failed == {"X"}
    assert m.error_messages[0] == "X: boom"


class OrigStyleConsumer:
    """Built on the original's IEventConsumer and ConsumerConfig/ConsumerPriority."""

    def __init__(self, orig, name, priority, log):
        base = orig.IEventConsumer
        cfg = orig.interfaces.ConsumerConfig(name=name, topics=["**"], priority=priority)

        class Impl(base):
            async def initialize(self):
                return True

            async def consume(self, event):
                log.append(name)
                return True

            async def consume_batch(self, events):
                return len(events)

            async def shutdown(self):
                pass

            @property
            def config(self):
                return cfg

            @property
            def is_healthy(self):
                return True

            def get_metrics(self):
                return {}

        self.impl = Impl()


async def test_original_consumer_config_and_priority_are_honoured(bus, orig):
    log: list[str] = []
    CP = orig.interfaces.ConsumerPriority
    low = OrigStyleConsumer(orig, "orig-low", CP.DEFERRED, log).impl
    high = OrigStyleConsumer(orig, "orig-high", CP.CRITICAL, log).impl
    assert await bus.subscribe(low)
    assert await bus.subscribe(Recorder("ours-normal", priority=ConsumerPriority.NORMAL, log=log))
    assert await bus.subscribe(high)
    await bus.publish(make_event())
    await bus.join(timeout=5)
    assert [x if isinstance(x, str) else x[0] for x in log] == [
        "orig-high",
        "ours-normal",
        "orig-low",
    ]


async def run_original_producers(orig, bus):
    hook = orig.HookEventProducer(bus)
    system = orig.SystemEventProducer(bus)
    results = [
        await hook.publish_response({"content": "hi", "model": "claude-3"}),
        await hook.publish_response({"content": "again"}),
        await hook.publish_tool_use("Read", {"file_path": "/x"}, "contents"),
        await hook.publish_error("ToolError", "it broke", {"code": 2}),
        await hook.publish_subagent_event("researcher", "Start", {"task": "t"}),
        await system.publish_startup("svc", "1.0"),
        await system.publish_health_status("svc", "healthy", {"db": True}),
    ]
    return results


async def test_original_producers_publish_into_our_bus(bus, orig):
    c = Recorder("c")
    await bus.subscribe(c)
    results = await run_original_producers(orig, bus)
    assert all(r is True for r in results), results
    await bus.join(timeout=5)
    by_topic = {call.topic: call.event for call in c.calls}
    assert sorted(c.topics_seen) == sorted(
        [
            "hook.response",
            "hook.response",
            "hook.tool",
            "hook.error",
            "hook.subagent.start",
            "system.lifecycle.startup",
            "system.health",
        ]
    )
    assert by_topic["hook.response"].type == "AssistantResponse"
    assert by_topic["hook.response"].priority is EventPriority.HIGH
    assert by_topic["hook.response"].source == "hook_handler"
    assert by_topic["hook.tool"].data == {
        "tool": "Read",
        "params": {"file_path": "/x"},
        "result": "contents",
    }
    assert by_topic["hook.error"].priority is EventPriority.CRITICAL
    assert by_topic["hook.error"].data["message"] == "it broke"
    assert by_topic["hook.subagent.start"].type == "SubagentStart"
    assert by_topic["hook.subagent.start"].data["subagent"] == "researcher"
    assert by_topic["system.lifecycle.startup"].priority is EventPriority.HIGH


async def test_our_producers_match_the_originals(orig, make_bus):
    def shape(calls):
        return sorted(
            (
                c.event.topic,
                c.event.type,
                c.event.source,
                c.event.priority.name,
                json.dumps(c.event.data, sort_keys=True, default=str),
            )
            for c in calls
        )

    async def run(hook_cls, system_cls):
        b = await make_bus()
        c = Recorder("c")
        await b.subscribe(c)
        hook, system = hook_cls(b), system_cls(b)
        await hook.publish_response({"content": "hi"})
        await hook.publish_tool_use("Read", {"p": 1}, None, "corr")
        await hook.publish_error("E", "m", {"d": 1})
        await hook.publish_subagent_event("agent", "Stop", {"x": 1})
        await hook.publish_raw_hook_event("PreToolUse", {"a": 1})
        await hook.publish_raw_hook_event("critical_failure", {"a": 1})
        await system.publish_warning("svc", "w", "careful", {"x": 1})
        await system.publish_performance_metrics("svc", {"cpu": 1})
        await system.publish_health_status("svc", "degraded", {"db": False})
        await system.publish_config_change("svc", "k", 1, 2)
        await system.publish_error("svc", "E", "m")
        await system.publish_shutdown("svc", "done")
        await b.join(timeout=5)
        return shape(c.calls)

    ours = await run(HookEventProducer, SystemEventProducer)
    theirs = await run(orig.HookEventProducer, orig.SystemEventProducer)
    assert ours == theirs


async def test_original_metrics_consumer_counts_by_topic(bus, orig):
    mc = orig.MetricsConsumer()

    def fails(event):
        return False

    flaky = Recorder(
        "Flaky", ["hook.error"], behaviour=fails, priority=ConsumerPriority.CRITICAL, max_retries=0
    )
    assert await bus.subscribe(flaky)
    assert await bus.subscribe(mc)
    await run_original_producers(orig, bus)
    await bus.join(timeout=5)
    m = mc.get_metrics()
    assert m["total_events"] == 7
    assert m["top_topics"] == {
        "hook.response": 2,
        "hook.tool": 1,
        "hook.error": 1,
        "hook.subagent.start": 1,
        "system.lifecycle.startup": 1,
        "system.health": 1,
    }
    assert m["top_events"]["hook.response:AssistantResponse"] == 2
    assert m["error_counts"] == {"Flaky": 1}
    assert m["average_latency_ms"] >= 0
    assert bus.get_metrics()["consumers"]["MetricsConsumer"]["total_events"] == 7


async def test_original_logging_consumer_logs_our_events(bus, orig, caplog):
    lc = orig.LoggingConsumer(topics=["hook.**"])
    assert await bus.subscribe(lc)
    with caplog.at_level(logging.DEBUG, logger="claude_mpm"):
        await run_original_producers(orig, bus)
        await bus.join(timeout=5)
    assert lc.get_metrics()["events_logged"] == 5
    msgs = [r.getMessage() for r in caplog.records if r.name.endswith("EventLogger")]
    assert any("[hook.response] AssistantResponse" in m for m in msgs)
    assert any("[hook.tool] ToolUse" in m for m in msgs)
    assert not any("system." in m for m in msgs)


async def test_original_dead_letter_consumer_writes_failed_events(bus, orig, tmp_path):
    dlc = orig.DeadLetterConsumer(output_dir=tmp_path)
    assert await bus.subscribe(dlc)
    failed_meta = orig.EventMetadata(consumers_failed={"Upstream"}, error_messages=["boom"])
    failed = orig_event(orig, "failed.hook.tool", metadata=failed_meta, data={"n": 1})
    clean = orig_event(orig, "error.disk", data={"n": 2})
    elsewhere = orig_event(orig, "hook.tool", metadata=failed_meta)
    for e in (failed, clean, elsewhere):
        assert await bus.publish(e)
    await bus.join(timeout=5)
    lines = [
        json.loads(line)
        for f in sorted(tmp_path.glob("dead-letter-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert [d["id"] for d in lines] == [failed.id]
    assert lines[0]["topic"] == "failed.hook.tool"
    assert lines[0]["data"] == {"n": 1}
    assert lines[0]["metadata"]["consumers_failed"] == ["Upstream"]
    assert lines[0]["metadata"]["error_messages"] == ["boom"]
    assert dlc.get_metrics()["events_stored"] == 1
    replayed = await dlc.replay_events()
    assert [e.id for e in replayed] == [failed.id]


async def test_original_dead_letter_consumer_sees_failures_from_our_bus(bus, orig, tmp_path):
    # A consumer that fails on the bus marks the event; the original
    # DeadLetterConsumer (filtering on consumers_failed) then stores it.
    dlc = orig.DeadLetterConsumer(output_dir=tmp_path, topics=["error.**"])
    dlc._config.priority = orig.interfaces.ConsumerPriority.LOW
    broken = Recorder(
        "Broken",
        ["error.**"],
        behaviour=lambda e: False,
        priority=ConsumerPriority.CRITICAL,
        max_retries=0,
    )
    assert await bus.subscribe(broken)
    assert await bus.subscribe(dlc)
    e = make_event("error.disk", data={"n": 1})
    await bus.publish(e)
    await bus.join(timeout=5)
    lines = [
        json.loads(line)
        for f in tmp_path.glob("dead-letter-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert [d["id"] for d in lines] == [e.id]
    assert lines[0]["metadata"]["consumers_failed"] == ["Broken"]
