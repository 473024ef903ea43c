"""mpm_events.testing.RecordingBus and the pytest plugin's fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mpm_events import (
    ConsumerConfig,
    ConsumerPriority,
    Event,
    EventBus,
    EventPriority,
    HookEventProducer,
    IEventBus,
    IEventConsumer,
    InvalidEventError,
    InvalidTopicError,
    SystemEventProducer,
)
from mpm_events.testing import RecordingBus


class Recorder(IEventConsumer):
    def __init__(self, name: str, order: list[str] | None = None, **config: Any) -> None:
        self._config = ConsumerConfig(name, **config)
        self.order = order if order is not None else []
        self.seen: list[Event] = []
        self.fail_topics: set[str] = set()
        self.shut = False

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Event) -> bool:
        self.order.append(self._config.name)
        self.seen.append(event)
        return event.topic not in self.fail_topics

    async def consume_batch(self, events: list[Event]) -> int:
        return sum([await self.consume(e) for e in events])

    async def shutdown(self) -> None:
        self.shut = True

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return True

    def get_metrics(self) -> dict[str, Any]:
        return {"seen": len(self.seen)}


# ----- RecordingBus with the package's producers -----


async def test_records_hook_producer_events_with_topics_types_and_priorities() -> None:
    bus = RecordingBus()
    assert isinstance(bus, IEventBus)
    hook = HookEventProducer(bus)
    assert await hook.publish_response({"content": "hi"}, correlation_id="c1")
    assert await hook.publish_tool_use("Read", {"file_path": "/x"}, "text")
    assert await hook.publish_subagent_event("research", "Start", {"task": "t"})
    assert await hook.publish_error("Boom", "it broke")

    assert bus.published_topics() == [
        "hook.response",
        "hook.tool",
        "hook.subagent.start",
        "hook.error",
    ]
    response, tool, sub, err = bus.events
    assert (response.type, response.priority, response.correlation_id) == (
        "AssistantResponse",
        EventPriority.HIGH,
        "c1",
    )
    assert tool.data == {"tool": "Read", "params": {"file_path": "/x"}, "result": "text"}
    assert sub.type == "SubagentStart" and sub.data == {"subagent": "research", "task": "t"}
    assert err.priority == EventPriority.CRITICAL
    assert all(e.source == "hook_handler" for e in bus.events)
    assert all(e.metadata.published_at is not None for e in bus.events)

    assert [e.topic for e in bus.find("hook.*")] == ["hook.response", "hook.tool", "hook.error"]
    assert [e.topic for e in bus.find("hook.**")] == bus.published_topics()
    assert bus.find("hook.subagent.*", type="SubagentStart") == [sub]
    assert bus.find("system.**") == []


async def test_records_system_producer_and_batches() -> None:
    bus = RecordingBus()
    system = SystemEventProducer(bus, source_name="svc")
    assert await system.publish_startup("api", "1.0")
    assert await system.publish_health_status("api", "degraded", {"db": False})
    events = [system._event("system.custom", "X", {"i": i}, EventPriority.LOW) for i in range(3)]
    assert await system.publish_batch(events) == 3
    assert bus.published_topics()[:2] == ["system.lifecycle.startup", "system.health"]
    assert bus.find("system.health")[0].priority == EventPriority.HIGH
    assert len(bus.find("system.custom")) == 3
    assert bus.get_metrics()["events_published"] == 5
    bus.clear()
    assert bus.events == [] and bus.published_topics() == []


async def test_refusing_bus_exercises_the_producer_failure_path() -> None:
    bus = RecordingBus(accept=False)
    hook = HookEventProducer(bus)
    assert await hook.publish_response({"content": "x"}) is False
    assert hook.get_metrics()["events_failed"] == 1
    assert bus.events == [] and [e.topic for e in bus.refused] == ["hook.response"]
    assert bus.get_metrics()["events_dropped"] == 1

    picky = RecordingBus(accept=lambda e: e.topic != "hook.error")
    hook = HookEventProducer(picky)
    assert await hook.publish_tool_use("Bash", {})
    assert not await hook.publish_error("E", "m")
    assert picky.published_topics() == ["hook.tool"]


async def test_not_running_refuses_like_the_real_bus() -> None:
    bus = RecordingBus(running=False)
    assert not bus.is_running
    assert await bus.publish(Event("", "a.b", "T")) is False
    await bus.start()
    assert await bus.publish(Event("", "a.b", "T")) is True
    await bus.stop()
    assert not bus.is_running
    assert bus.publish_nowait(Event("", "a.b", "T")) is False


# NOTE: control characters are where testing.py's former copy of the validator
# quoted the topic differently from the engine (\u0000 for \0, \x7f for \u{7f}).
BAD_TOPICS = ["", "a..b", ".a", "a.", "a.*", "hook.**", "a b", "a.\tb"]
BAD_TOPICS += ["a.\x00", "a.\x7f", "a.\u2028"]


@pytest.mark.parametrize("topic", BAD_TOPICS)
async def test_topic_validation_matches_the_real_bus(topic: str) -> None:
    real = EventBus()  # not started: validation still runs before the running check
    with pytest.raises(InvalidTopicError) as expected:
        real.publish_nowait(Event("", topic, "T"))
    bus = RecordingBus()
    with pytest.raises(InvalidTopicError) as got:
        await bus.publish(Event("", topic, "T"))
    assert str(got.value) == str(expected.value)
    assert bus.events == [] and bus.refused == []


async def test_bad_events_raise_like_the_real_bus() -> None:
    bus = RecordingBus()
    with pytest.raises(InvalidEventError, match="None"):
        await bus.publish(None)

    class NoData:
        id, topic, type, timestamp, source = "", "a", "T", None, "s"

    with pytest.raises(InvalidEventError, match="'data'"):
        await bus.publish(NoData())
    with pytest.raises(TypeError):
        bus.publish_nowait(Event("", "a", "T", None, "s", ["not", "a", "dict"]))  # type: ignore[arg-type]
    with pytest.raises(InvalidTopicError, match="event #1"):
        await bus.publish_batch([Event("", "ok", "T"), Event("", "bad..topic", "T")])
    assert bus.events == []
    with pytest.raises(InvalidTopicError):
        bus.find("a.**b")


async def test_foreign_events_are_converted_keeping_their_id() -> None:
    @dataclass
    class ForeignEvent:
        id: str
        topic: str
        type: str
        timestamp: datetime
        source: str
        data: dict[str, Any] = field(default_factory=dict)
        priority: str = "CRITICAL"

    bus = RecordingBus()
    foreign = ForeignEvent("abc", "hook.tool", "ToolUse", datetime.now(UTC), "x", {"k": 1})
    assert await bus.publish(foreign)
    [event] = bus.events
    assert isinstance(event, Event)
    assert (event.id, event.data, event.priority) == ("abc", {"k": 1}, EventPriority.CRITICAL)


async def test_delivery_in_priority_order_with_filter_and_failures() -> None:
    bus = RecordingBus(deliver=True)
    order: list[str] = []
    low = Recorder("low", order, topics=["hook.**"], priority=ConsumerPriority.LOW)
    crit = Recorder("crit", order, topics=["hook.*"], priority=ConsumerPriority.CRITICAL)
    picky = Recorder("picky", order, filter_func=lambda e: e.type == "Error")
    other = Recorder("other", order, topics=["system.**"])
    for c in (low, crit, picky, other):
        assert await bus.subscribe(c)
    assert not await bus.subscribe(Recorder("low"))  # duplicate name
    with pytest.raises(InvalidTopicError):
        await bus.subscribe(Recorder("bad", topics=["a.**b"]))

    crit.fail_topics.add("hook.error")
    hook = HookEventProducer(bus)
    await hook.publish_tool_use("Read", {})
    assert order == ["crit", "low"]
    order.clear()
    await hook.publish_error("E", "m")
    assert order == ["crit", "picky", "low"]
    assert other.seen == []

    err = bus.events[1]
    assert err.metadata.consumers_failed == {"crit"}
    assert err.metadata.consumers_processed == {"picky", "low"}
    assert err.metadata.error_messages == ["crit: consume() returned a false value"]
    assert [d.ok for d in bus.deliveries] == [True, True, False, True, True]
    assert bus.get_metrics()["events_failed"] == 1

    assert await bus.unsubscribe("low") and low.shut
    assert not await bus.unsubscribe("low")
    await bus.stop()
    assert crit.shut and picky.shut and other.shut


async def test_publish_nowait_from_threads_is_recorded_and_delivered_on_join() -> None:
    bus = RecordingBus(deliver=True)
    consumer = Recorder("all")
    await bus.subscribe(consumer)

    def worker(n: int) -> None:
        for i in range(50):
            assert bus.publish_nowait(Event("", f"t.w{n}", "T", None, "s", {"i": i}))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bus.events) == 400
    assert consumer.seen == []  # deferred until the next await
    assert bus.get_metrics()["queue_size"] == 400
    assert await bus.join()
    assert len(consumer.seen) == 400
    assert bus.get_metrics()["queue_size"] == 0


# ----- the pytest plugin's fixtures -----


def test_recording_bus_fixture(recording_bus: RecordingBus) -> None:
    assert isinstance(recording_bus, RecordingBus)
    assert recording_bus.is_running and recording_bus.events == []


async def test_event_bus_fixture_is_a_started_real_bus(event_bus: EventBus) -> None:
    assert isinstance(event_bus, EventBus) and event_bus.is_running
    consumer = Recorder("c", topics=["hook.**"])
    assert await event_bus.subscribe(consumer)
    assert await HookEventProducer(event_bus).publish_response({"content": "x"})
    await event_bus.join(timeout=5)
    assert [e.topic for e in consumer.seen] == ["hook.response"]


@pytest.mark.parametrize("event_bus", [{"max_queue_size": 1}], indirect=True)
async def test_event_bus_fixture_takes_parameters(event_bus: EventBus) -> None:
    assert event_bus.max_queue_size == 1


PLUGIN_TEST = """
import pytest
from mpm_events import EventBus

seen = {}

class C:
    def __init__(self):
        from mpm_events import ConsumerConfig
        self.config = ConsumerConfig("c")
        self.shut = False
    async def initialize(self): return True
    async def consume(self, e): return True
    async def shutdown(self): self.shut = True
    def get_metrics(self): return {}

@pytest.mark.asyncio
async def test_uses_bus(event_bus):
    assert event_bus.is_running
    seen["bus"] = event_bus
    seen["consumer"] = c = C()
    assert await event_bus.subscribe(c)

def test_bus_was_stopped_after_the_test():
    assert not seen["bus"].is_running
    assert seen["consumer"].shut

def test_recording(recording_bus):
    assert recording_bus.events == []
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_plugin_is_registered_and_stops_the_bus(tmp_path: Path, mode: str) -> None:
    (tmp_path / "test_plugin_use.py").write_text(textwrap.dedent(PLUGIN_TEST))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            f"asyncio_mode={mode}",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
