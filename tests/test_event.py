"""Event and EventMetadata keep the original dataclasses' constructor, defaults and methods."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from mpm_events import Event, EventMetadata, EventPriority

TS = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def test_positional_constructor_in_field_order():
    meta = EventMetadata(retry_count=1)
    e = Event("id-1", "hook.tool", "ToolUse", TS, "src", {"k": 1}, meta, "corr", EventPriority.HIGH)
    assert e.id == "id-1"
    assert e.topic == "hook.tool"
    assert e.type == "ToolUse"
    assert e.timestamp == TS
    assert e.source == "src"
    assert e.data == {"k": 1}
    assert e.metadata.retry_count == 1
    assert e.correlation_id == "corr"
    assert e.priority is EventPriority.HIGH


def test_keyword_constructor():
    e = Event(
        id="id-2",
        topic="system.health",
        type="Health",
        timestamp=TS,
        source="system",
        data={"ok": True},
        correlation_id="c",
        priority=EventPriority.LOW,
    )
    assert (e.id, e.topic, e.type, e.source) == ("id-2", "system.health", "Health", "system")
    assert e.data == {"ok": True}
    assert e.priority is EventPriority.LOW
    assert e.correlation_id == "c"


def test_defaults():
    e = Event("x", "a.b", "T", TS, "s", {})
    assert e.correlation_id is None
    assert e.priority is EventPriority.NORMAL
    m = e.metadata
    assert isinstance(m, EventMetadata)
    assert m.retry_count == 0
    assert m.max_retries == 3
    assert m.published_at is None
    assert m.consumed_at is None
    assert m.consumers_processed == set()
    assert m.consumers_failed == set()
    assert m.error_messages == []


def test_empty_id_becomes_a_uuid4():
    a = Event("", "a.b", "T", TS, "s", {})
    b = Event("", "a.b", "T", TS, "s", {})
    assert uuid.UUID(a.id).version == 4
    assert a.id != b.id


def test_iso_string_timestamp_is_parsed():
    e = Event("x", "a.b", "T", "2024-05-06T07:08:09.123456+00:00", "s", {})
    assert isinstance(e.timestamp, datetime)
    assert e.timestamp == TS


def test_bad_iso_string_timestamp_is_refused():
    with pytest.raises(ValueError, match="timestamp"):
        Event("x", "a.b", "T", "not a date", "s", {})


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("hook.*", "hook.response", True),
        ("hook.*", "hook.tool.usage", False),
        ("hook.**", "hook.tool.usage", True),
        ("hook.**", "hook.a", True),
        ("hook.**", "hook", True),
        ("**", "anything.at.all", True),
        ("hook.response", "hook.response", True),
        ("hook.response", "hook.responses", False),
        ("a.**.b", "a.b", True),
        ("a.**.b", "a.x.y.b", True),
        ("a.**.b", "a.x.c", False),
        ("*.tool", "hook.tool", True),
        ("*.tool", "tool", False),
    ],
)
def test_matches_topic(pattern, topic, expected):
    assert Event("x", topic, "T", TS, "s", {}).matches_topic(pattern) is expected


def test_equality_and_hash_by_id():
    a = Event("same", "a.b", "T", TS, "s", {"v": 1})
    b = Event("same", "c.d", "U", TS, "t", {"v": 2})
    c = Event("other", "a.b", "T", TS, "s", {"v": 1})
    assert a == b
    assert a != c
    assert hash(a) == hash(b)
    assert len({a, b, c}) == 2


def test_repr_is_readable():
    e = Event("id-9", "hook.tool", "ToolUse", TS, "src", {}, priority=EventPriority.CRITICAL)
    r = repr(e)
    assert r.startswith("Event(")
    for part in ("id-9", "hook.tool", "ToolUse", "CRITICAL"):
        assert part in r


def test_to_dict_from_dict_round_trip():
    meta = EventMetadata(
        retry_count=2,
        consumers_processed={"a"},
        consumers_failed={"b"},
        error_messages=["b: boom"],
        published_at=TS,
    )
    e = Event("id-3", "hook.error", "Error", TS, "src", {"n": [1, 2]}, meta, "corr", "HIGH")
    d = e.to_dict()
    assert d["timestamp"] == TS.isoformat()
    assert isinstance(d["timestamp"], str)
    assert d["priority"] == "HIGH"
    assert d["data"] == {"n": [1, 2]}
    assert d["metadata"]["published_at"] == TS.isoformat()
    back = Event.from_dict(d)
    assert isinstance(back, Event)
    assert back == e
    assert (back.topic, back.type, back.source, back.correlation_id) == (
        "hook.error",
        "Error",
        "src",
        "corr",
    )
    assert back.timestamp == TS
    assert back.priority is EventPriority.HIGH
    assert back.data == {"n": [1, 2]}
    assert back.metadata.retry_count == 2
    assert back.metadata.consumers_processed == {"a"}
    assert back.metadata.consumers_failed == {"b"}
    assert back.metadata.error_messages == ["b: boom"]
    assert back.metadata.published_at == TS


def test_metadata_holds_real_sets_lists_and_ints():
    e = Event("x", "a.b", "T", TS, "s", {})
    m = e.metadata
    assert type(m.consumers_processed) is set
    assert type(m.consumers_failed) is set
    assert type(m.error_messages) is list
    assert type(m.retry_count) is int


def test_metadata_mutations_persist_like_the_dataclass():
    # The original's metadata is a dataclass: code does
    # ``event.metadata.consumers_failed.add(name)`` and the event keeps it.
    e = Event("x", "a.b", "T", TS, "s", {})
    e.metadata.consumers_failed.add("c1")
    e.metadata.consumers_processed.add("c2")
    e.metadata.error_messages.append("c1: boom")
    assert e.metadata.consumers_failed == {"c1"}
    assert e.metadata.consumers_processed == {"c2"}
    assert e.metadata.error_messages == ["c1: boom"]


def test_metadata_attribute_assignment():
    e = Event("x", "a.b", "T", TS, "s", {})
    e.metadata.retry_count += 1
    e.metadata.consumers_failed = {"z"}
    assert e.metadata.retry_count == 1
    assert e.metadata.consumers_failed == {"z"}


def test_priority_accepts_name_and_int():
    assert Event("x", "a", "T", TS, "s", {}, priority="critical").priority is EventPriority.CRITICAL
    assert Event("x", "a", "T", TS, "s", {}, priority=4).priority is EventPriority.LOW
    with pytest.raises(TypeError, match="priority"):
        Event("x", "a", "T", TS, "s", {}, priority=9)


@pytest.mark.parametrize("bad", [[1, 2], "text", 3, (1,)])
def test_data_must_be_a_dict(bad):
    with pytest.raises(TypeError, match="data"):
        Event("x", "a.b", "T", TS, "s", bad)


def test_data_setter_checks_dict():
    e = Event("x", "a.b", "T", TS, "s", {})
    with pytest.raises(TypeError, match="data"):
        e.data = ["nope"]
