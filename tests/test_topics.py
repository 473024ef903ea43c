"""Topic routing (``*`` one segment, ``**`` zero or more), regexes and validation."""

from __future__ import annotations

import re

import pytest
from conftest import Recorder, make_event
from mpm_events.errors import InvalidTopicError

TOPICS = [
    "hook",
    "hook.response",
    "hook.tool",
    "hook.tool.usage",
    "hook.subagent.start",
    "system.health",
    "a.b",
    "a.x.b",
    "a.x.y.b",
    "a.x.c",
    "x.a.b",
]

ROUTES = {
    "hook.*": {"hook.response", "hook.tool"},
    "hook.**": {"hook", "hook.response", "hook.tool", "hook.tool.usage", "hook.subagent.start"},
    "**": set(TOPICS),
    "hook.response": {"hook.response"},
    "a.**.b": {"a.b", "a.x.b", "a.x.y.b"},
    "a.*.b": {"a.x.b"},
    "*.b": {"a.b"},
    "**.b": {"a.b", "a.x.b", "a.x.y.b", "x.a.b"},
    "hook.*.*": {"hook.tool.usage", "hook.subagent.start"},
}


async def test_patterns_route_exactly_the_documented_topics(bus):
    consumers = {}
    for i, pattern in enumerate(ROUTES):
        c = Recorder(f"c{i}", [pattern])
        assert await bus.subscribe(c)
        consumers[pattern] = c
    for t in TOPICS:
        assert await bus.publish(make_event(t))
    await bus.join(timeout=5)
    for pattern, expected in ROUTES.items():
        got = consumers[pattern].topics_seen
        assert sorted(got) == sorted(expected), pattern


async def test_consumer_with_several_patterns_gets_each_event_once(bus):
    c = Recorder("multi", ["hook.**", "hook.*", "hook.tool"])
    assert await bus.subscribe(c)
    await bus.publish(make_event("hook.tool"))
    await bus.join(timeout=5)
    assert c.topics_seen == ["hook.tool"]


async def test_topics_none_means_every_topic(bus):
    c = Recorder("all", None)
    assert await bus.subscribe(c)
    for t in ("a", "b.c", "d.e.f"):
        await bus.publish(make_event(t))
    await bus.join(timeout=5)
    assert sorted(c.topics_seen) == ["a", "b.c", "d.e.f"]


async def test_topic_pattern_regex_is_honoured(bus):
    c = Recorder("rx", None, topic_pattern=re.compile(r"hook\.(tool|error)$"))
    assert await bus.subscribe(c)
    for t in ("hook.tool", "hook.error", "hook.response", "system.error"):
        await bus.publish(make_event(t))
    await bus.join(timeout=5)
    assert sorted(c.topics_seen) == ["hook.error", "hook.tool"]


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("", "empty"),
        ("a..b", "empty segment"),
        (".a", "empty segment"),
        ("a.", "empty segment"),
        ("a.*", "wildcard"),
        ("a.**", "wildcard"),
        ("**", "wildcard"),
        ("a.b*", "wildcard"),
    ],
)
async def test_publish_rejects_malformed_topics(bus, topic, words):
    c = Recorder("all")
    await bus.subscribe(c)
    with pytest.raises(ValueError, match=words) as info:
        await bus.publish(make_event(topic))
    assert isinstance(info.value, InvalidTopicError)
    assert repr(topic) in str(info.value) or f'"{topic}"' in str(info.value)
    assert bus.is_running
    assert bus.get_metrics()["events_published"] == 0
    # the bus still works
    assert await bus.publish(make_event("ok.topic"))
    await bus.join(timeout=5)
    assert c.topics_seen == ["ok.topic"]


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("", "empty"),
        ("a..b", "empty segment"),
        ("a.**b", "wildcard mixed"),
        ("a*", "wildcard mixed"),
        ("a.b**.c", "wildcard mixed"),
        ("hook.", "empty segment"),
    ],
)
async def test_subscribe_rejects_malformed_patterns(bus, pattern, words):
    c = Recorder("bad", ["ok.topic", pattern])
    with pytest.raises(ValueError, match=words) as info:
        await bus.subscribe(c)
    assert isinstance(info.value, InvalidTopicError)
    assert bus.get_consumers() == []
    assert c.initialized == 0
    assert bus.is_running


@pytest.mark.parametrize("pattern", ["a..b", "a.**b", ""])
def test_matches_topic_rejects_malformed_patterns(pattern):
    with pytest.raises(ValueError):
        make_event("a.b").matches_topic(pattern)


async def test_many_subscriptions_still_route_correctly(bus):
    consumers = [Recorder(f"n{i}", [f"svc{i}.*"]) for i in range(200)]
    for c in consumers:
        assert await bus.subscribe(c)
    catch_all = Recorder("all", ["**"])
    await bus.subscribe(catch_all)
    for i in range(0, 200, 7):
        await bus.publish(make_event(f"svc{i}.ping"))
    await bus.join(timeout=5)
    for i, c in enumerate(consumers):
        assert c.topics_seen == ([f"svc{i}.ping"] if i % 7 == 0 else [])
    assert len(catch_all.calls) == len(range(0, 200, 7))
    assert bus.get_metrics()["subscriptions"] >= 201
