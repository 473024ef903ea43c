"""Behaviour of the fast paths: packed payloads, lazy ids, the compiled producer."""

from __future__ import annotations

import asyncio
import copy
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Recorder, SyncRecorder, make_event
from hypothesis import given, settings
from hypothesis import strategies as st
from mpm_events import (
    ConsumerPriority,
    Event,
    EventBus,
    HookEventProducer,
    IEventProducer,
    MetricsConsumer,
)
from mpm_events.testing import RecordingBus


async def test_plain_payload_is_a_snapshot_taken_at_publish(bus: EventBus) -> None:
    data: dict[str, Any] = {
        "text": 'héllo "quoted" \n',
        "ints": [0, -1, 2**62],
        "floats": [2.0, -0.0, 1e-300, 0.1],
        "flags": [True, False, None],
        "nested": {"a": {"b": [1, {"c": "d"}]}},
    }
    expected = {k: (v.copy() if isinstance(v, (list, dict)) else v) for k, v in data.items()}
    rec = Recorder("rec", ["test.**"])
    assert await bus.subscribe(rec)
    event = make_event(data=data)
    assert await bus.publish(event)
    data["text"] = "changed after publish"
    data["ints"].append(99)
    await bus.join(timeout=5)
    seen = rec.calls[0].event.data
    assert seen == expected
    # The same types come back: 2.0 stays a float, True stays a bool, 0 an int.
    assert [type(x) for x in seen["floats"]] == [float] * 4
    assert [type(x) for x in seen["flags"]] == [bool, bool, type(None)]
    assert type(seen["ints"][0]) is int
    assert list(seen) == list(expected)  # key order kept
    assert event.data is seen  # unpacked once, then the same dict


async def test_other_payloads_stay_the_callers_object(bus: EventBus) -> None:
    rec = Recorder("rec", ["test.**"])
    assert await bus.subscribe(rec)
    payloads: list[dict[str, Any]] = [
        {"when": datetime.now(UTC)},
        {"pair": (1, 2)},
        {"big": 2**70},
        {"nan": float("nan")},
        {1: "int key"},
        {"deep": _nested(40)},
    ]
    events = [make_event(data=p) for p in payloads]
    for e in events:
        assert await bus.publish(e)
    await bus.join(timeout=5)
    assert [c.event.data for c in rec.calls] == [e.data for e in events]
    for e, p in zip(events, payloads, strict=True):
        assert e.data is p


def _nested(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(depth):
        d = {"x": d}
    return d


async def test_a_consumers_change_to_data_is_seen_by_later_consumers(bus: EventBus) -> None:
    def mark(event: Any) -> bool:
        event.data["marked"] = True
        return True

    first = Recorder("first", ["test.**"], behaviour=mark, priority=ConsumerPriority.CRITICAL)
    later = Recorder("later", ["test.**"], priority=ConsumerPriority.LOW)
    assert await bus.subscribe(first)
    assert await bus.subscribe(later)
    assert await bus.publish(make_event(data={"n": 1}))
    await bus.join(timeout=5)
    assert later.calls[0].event.data == {"n": 1, "marked": True}


def test_generated_id_is_stable_and_a_uuid() -> None:
    e = Event("", "a.b", "T")
    first = e.id
    assert e.id == first and isinstance(first, str) and len(first) == 36
    assert hash(e) == hash(e) == hash(first)
    assert e.to_dict()["id"] == first
    assert Event(first, "a.b", "T") == e
    assert Event("", "a.b", "T").id != first


async def test_compiled_producer_publishes_into_our_bus(bus: EventBus) -> None:
    rec = Recorder("rec", ["hook.**"])
    assert await bus.subscribe(rec)
    producer = HookEventProducer(bus)
    assert isinstance(producer, IEventProducer)
    assert producer.source_name == "hook_handler" and producer.event_bus is bus
    assert await producer.publish_tool_use("Read", {"file_path": "/x"}, "ok", "corr-1")
    assert await producer.publish_subagent_event("planner", "Start", {"task": "t"})
    await bus.join(timeout=5)
    tool, sub = (c.event for c in rec.calls)
    assert (tool.topic, tool.type, tool.source, tool.correlation_id) == (
        "hook.tool",
        "ToolUse",
        "hook_handler",
        "corr-1",
    )
    assert tool.data == {"tool": "Read", "params": {"file_path": "/x"}, "result": "ok"}
    assert (sub.topic, sub.type, sub.data) == (
        "hook.subagent.start",
        "SubagentStart",
        {"subagent": "planner", "task": "t"},
    )
    assert producer.get_metrics()["events_published"] == 2


async def test_a_finished_publish_answers_every_await_without_growing(bus: EventBus) -> None:
    # An in-memory publish answers with an already finished awaitable shared by
    # every publish (issue 16). Stepped by hand from Python, it raises
    # StopIteration(True) through this frame each time: the traceback must be this
    # one pass, never a chain of earlier ones (as a reused exception instance would
    # carry).
    producer = HookEventProducer(bus)
    first = producer.publish_tool_use("Bash", {"n": 0})
    for n in range(200):
        it = producer.publish_tool_use("Bash", {"n": n}).__await__()
        try:
            next(it)
        except StopIteration as stop:
            assert stop.value is True
            tb, depth = stop.__traceback__, 0
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            assert depth == 1, depth
        else:
            raise AssertionError("a finished publish did not stop")
    assert await first is True
    assert (
        await asyncio.gather(*(producer.publish_tool_use("Read", {}) for _ in range(3)))
        == [True] * 3
    )
    await bus.join(timeout=5)
    assert producer.get_metrics()["events_published"] == 204


async def test_a_finished_publish_is_a_whole_coroutine(bus: EventBus) -> None:
    # The finished awaitable is a C-API type (its `am_send` slot answers `await`);
    # everything asyncio and hand-written code do with a coroutine must still work.
    import collections.abc

    from mpm_events._core import _Ready

    producer = HookEventProducer(bus)
    done = producer.publish_tool_use("Bash", {})
    assert type(done) is _Ready and asyncio.iscoroutine(done)
    assert isinstance(done, collections.abc.Coroutine)
    assert await done is True and await done is True  # awaited again: same answer
    assert await asyncio.create_task(producer.publish_tool_use("Bash", {})) is True
    assert await asyncio.ensure_future(bus.publish_batch([])) == 0
    assert await asyncio.wait_for(producer.publish_tool_use("Bash", {}), 1) is True
    for step in (lambda: done.send(None), lambda: done.__await__().__next__()):
        try:
            step()
        except StopIteration as stop:
            assert stop.value is True
        else:
            raise AssertionError("a finished awaitable did not stop")
    with pytest.raises(ValueError, match="boom"):
        done.throw(ValueError("boom"))
    with pytest.raises(KeyError):
        done.throw(KeyError)
    with pytest.raises(KeyError):
        done.throw(KeyError, KeyError("k"), None)
    with pytest.raises(TypeError, match="exception"):
        done.throw(3)
    assert done.close() is None
    with pytest.raises(TypeError):
        _Ready()
    await bus.join(timeout=5)
    assert producer.get_metrics()["events_published"] == 3


async def test_unpacked_keys_are_shared_and_any_number_of_keys_unpacks(bus: EventBus) -> None:
    # Keys read back from packed payloads come from a bounded cache (issue 16): the
    # same key is one str object in every event; past the cache's 1,024 keys, and
    # for long keys, payloads still come back equal.
    rec = Recorder("rec", ["test.**"])
    assert await bus.subscribe(rec)
    many = {f"key-{i}-" + "x" * (i % 70): i for i in range(3000)}
    payloads = [{"tool": "Bash", "n": 1}, many, {"tool": "Read", "n": 2}, dict(many)]
    for p in payloads:
        assert await bus.publish(make_event(data=p))
    assert await bus.join(timeout=5)
    got = [c.event.data for c in rec.calls]
    assert got == payloads
    first, second = (next(k for k in d if k == "tool") for d in (got[0], got[2]))
    assert first is second


async def test_tool_use_payload_packed_without_a_dict_is_the_same(bus: EventBus) -> None:
    # publish_tool_use packs its three fields without making the dict (issue 16):
    # the payload must read back as the dict would, a snapshot of plain params,
    # and the caller's own object when the params are not plain JSON.
    rec = Recorder("rec", ["hook.**"])
    assert await bus.subscribe(rec)
    producer = HookEventProducer(bus)
    params = {"command": "ls -la", "n": 1, "nested": [1, 2.5, None, True, "é\n"]}
    odd = {"when": datetime(2026, 1, 1, tzinfo=UTC)}
    assert await producer.publish_tool_use("Bash", params)
    params["n"] = 2  # after publish: not seen
    assert await producer.publish_tool_use("Read", odd, {"ok": True}, "c-1")
    await bus.join(timeout=5)
    first, second = (c.event.data for c in rec.calls)
    assert list(first) == ["tool", "params", "result"]
    assert first == {
        "tool": "Bash",
        "params": {"command": "ls -la", "n": 1, "nested": [1, 2.5, None, True, "é\n"]},
        "result": None,
    }
    assert second == {"tool": "Read", "params": odd, "result": {"ok": True}}
    assert second["params"] is odd


async def test_compiled_producer_events_are_made_once_and_shared(bus: EventBus) -> None:
    # The bus keeps a producer-made event as fields and makes its Event for the
    # first Python consumer: every consumer, the dead letters and the metadata
    # must still see one and the same event.
    metrics = MetricsConsumer()
    first = Recorder("first", ["hook.**"], priority=ConsumerPriority.HIGH)
    second = SyncRecorder("second", ["hook.tool"])
    failing = Recorder("failing", ["hook.tool"], behaviour=lambda e: False, max_retries=0)
    for c in (metrics, first, second, failing):
        assert await bus.subscribe(c)
    producer = HookEventProducer(bus)
    assert await producer.publish_tool_use("Bash", {"command": "ls"}, None, "corr-9")
    await bus.join(timeout=5)
    (a,), (b,), (f,) = ([c.event for c in r.calls] for r in (first, second, failing))
    assert a is b is f
    assert a.source == "hook_handler" and a.correlation_id == "corr-9"
    assert a.timestamp <= a.metadata.published_at
    assert sorted(a.metadata.consumers_processed) == ["MetricsConsumer", "first", "second"]
    assert a.metadata.consumers_failed == {"failing"}
    (letter,) = bus.get_dead_letters()
    assert letter["event"] is a
    m = metrics.get_metrics()
    assert (m["source_counts"], m["type_counts"]) == ({"hook_handler": 1}, {"ToolUse": 1})


async def test_compiled_producer_events_for_rust_consumers_only(bus: EventBus) -> None:
    # No Python consumer: the Rust consumer reads the fields the bus kept.
    metrics = MetricsConsumer()
    assert await bus.subscribe(metrics)
    producer = HookEventProducer(bus)
    assert await producer.publish_error("E", "boom", {"k": [1, 2]}, "c")
    assert await producer.publish_raw_hook_event("PreToolUse", [1]) is False  # type: ignore[arg-type]
    await bus.join(timeout=5)
    m = metrics.get_metrics()
    assert (m["total_events"], m["topic_counts"]) == (1, {"hook.error": 1})
    assert producer.get_metrics()["events_failed"] == 1


async def test_compiled_producer_with_other_buses_never_raises() -> None:
    class Broken:
        async def publish(self, event: Event) -> bool:
            raise RuntimeError("bus exploded")

    producer = HookEventProducer(Broken())  # type: ignore[arg-type]
    assert await producer.publish_error("E", "boom") is False
    assert producer.get_metrics() == {
        "events_published": 0,
        "events_failed": 1,
        "batch_published": 0,
    }

    recording = RecordingBus()
    producer = HookEventProducer(recording)
    assert await producer.publish_response({"content": "hi"}) is True
    assert [e.topic for e in recording.events] == ["hook.response"]
    assert await producer.publish_batch([make_event("hook.x"), make_event("hook.y")]) == 2
    assert producer.get_metrics()["batch_published"] == 1


async def test_a_subclass_overriding_publish_is_used_by_every_helper(bus: EventBus) -> None:
    seen: list[str] = []

    class Audited(HookEventProducer):
        async def publish(self, event: Event) -> bool:  # type: ignore[override]
            seen.append(event.topic)
            return await super().publish(event)

    producer = Audited(bus)
    assert await producer.publish_tool_use("Read", {})
    assert await producer.publish_raw_hook_event("CriticalError", {"x": 1})
    assert seen == ["hook.tool", "hook.error"]


async def test_compiled_classes_can_be_subclassed_with_their_own_init() -> None:
    class TaggedProducer(HookEventProducer):
        def __init__(self, event_bus: Any, tag: str) -> None:
            super().__init__(event_bus)
            self.tag = tag

    class MyBus(EventBus):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.label = "mine"

    class MyEvent(Event):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.extra = 1

    recording = RecordingBus()
    producer = TaggedProducer(recording, "t")
    assert producer.tag == "t" and producer.event_bus is recording
    assert await producer.publish_tool_use("Read", {})
    bus = MyBus(max_queue_size=5)
    assert (bus.label, bus.max_queue_size) == ("mine", 5)
    event = MyEvent("", "a.b", "T", data={"k": 1})
    assert (event.extra, event.topic, event.data) == (1, "a.b", {"k": 1})


async def test_compiled_producer_rejects_bad_arguments_clearly(bus: EventBus) -> None:
    import pytest
    from mpm_events import InvalidEventError

    producer = HookEventProducer(bus)
    with pytest.raises(InvalidEventError, match="event_data must be a mapping"):
        await producer.publish_subagent_event("planner", "Start", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="correlation_id must be a str or None, got int"):
        await producer.publish_tool_use("Read", {}, None, 5)  # type: ignore[arg-type]
    assert bus.is_running
    assert await producer.publish_tool_use("Read", {}, None, "c-1")


def _same_json(a: Any, b: Any) -> bool:
    """Equal values of the same types (a float stays a float, -0.0 keeps its sign)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(st.text(), _plain, max_size=5), min_size=1, max_size=8))
def test_packed_payloads_come_back_equal_and_of_the_same_types(payloads: list) -> None:
    # Packed at publish, unpacked on the first read of event.data: every JSON-plain
    # payload (escapes, control characters, astral characters, 64-bit ints, floats)
    # comes back equal, with the same types and key order.
    async def run() -> list[Any]:
        bus = EventBus()
        await bus.start()
        rec = Recorder("rec", ["test.**"])
        assert await bus.subscribe(rec)
        for p in payloads:
            assert await bus.publish(make_event(data=copy.deepcopy(p)))
        assert await bus.join(timeout=5)
        await bus.stop()
        return [c.event.data for c in rec.calls]

    seen = asyncio.run(run())
    assert len(seen) == len(payloads)
    for got, want in zip(seen, payloads, strict=True):
        assert _same_json(got, want), (got, want)
