"""``mpm_events.Rule``: content rules with EventBridge event-pattern semantics,
matched in Rust; checked against a plain Python reference on random rules and
documents (Hypothesis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Recorder
from helpers.rule_reference import matches as reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpm_events import Event, EventBus, HookEventProducer, InvalidRuleError, Rule

WORDS = ["", "x", "xy", "Xy", "yx", "a*b", "10.0.0.7", "10.0.1.2", "::1"]
KEYS = ["a", "b", "c"]

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0]),
    st.booleans(),
    st.none(),
)
docs = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.sampled_from(["", "x", "X", "y", "xy"])
globs = st.sampled_from(["*", "x*", "*y", "x*y", "*x*", "a\\*b", "xy"])
numbers = st.sampled_from([-2, 0, 0.5, 1, 2, 3])


@st.composite
def ranges(draw: st.DrawFn) -> list[Any]:
    if draw(st.booleans()):
        return ["=", draw(numbers)]
    lo, hi = sorted([draw(numbers), draw(numbers)])
    parts: list[Any] = []
    if draw(st.booleans()):
        parts += [draw(st.sampled_from([">", ">="])), lo]
    if not parts or draw(st.booleans()):
        parts += [draw(st.sampled_from(["<", "<="])), hi]
    return parts


matchers = st.one_of(
    scalars,
    st.builds(lambda t: {"prefix": t}, texts),
    st.builds(lambda t: {"suffix": t}, texts),
    st.builds(lambda t: {"prefix": {"equals-ignore-case": t}}, texts),
    st.builds(lambda t: {"suffix": {"equals-ignore-case": t}}, texts),
    st.builds(lambda t: {"equals-ignore-case": t}, texts),
    st.builds(lambda g: {"wildcard": g}, globs),
    st.builds(lambda t: {"anything-but": t}, texts),
    st.builds(lambda ts: {"anything-but": ts}, st.lists(texts, min_size=1, max_size=3)),
    st.builds(lambda n: {"anything-but": n}, st.integers(-2, 2)),
    st.builds(lambda t: {"anything-but": {"prefix": t}}, texts),
    st.builds(lambda t: {"anything-but": {"suffix": t}}, texts),
    st.builds(lambda t: {"anything-but": {"equals-ignore-case": t}}, texts),
    st.builds(lambda g: {"anything-but": {"wildcard": g}}, globs),
    st.builds(lambda r: {"numeric": r}, ranges()),
    st.builds(lambda b: {"exists": b}, st.booleans()),
    st.builds(lambda c: {"cidr": c}, st.sampled_from(["10.0.0.0/24", "10.0.0.0/8", "::/0"])),
)


def rules(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.lists(matchers, min_size=1, max_size=3)
    value = leaf if depth == 0 else st.one_of(leaf, leaf, st.deferred(lambda: rules(depth - 1)))
    body = st.dictionaries(st.sampled_from(KEYS), value, min_size=1, max_size=3)
    if depth == 0:
        return body
    ors = st.lists(st.deferred(lambda: rules(depth - 1)), min_size=2, max_size=3)
    return st.one_of(
        body,
        st.builds(lambda b, o: {**b, "$or": o}, body, ors),
        st.builds(lambda o: {"$or": o}, ors),
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=rules(), doc=st.dictionaries(st.sampled_from(KEYS), docs, max_size=3))
def test_the_rust_matcher_equals_the_reference(rule: dict[str, Any], doc: dict[str, Any]) -> None:
    assert Rule(rule).matches(doc) == reference(rule, doc), (rule, doc)


async def _routed(
    rule_list: list[dict[str, Any]], payloads: list[dict[str, Any]]
) -> list[list[int]]:
    """Which payloads (by index) each consumer with one of ``rule_list`` (on ``data``)
    gets, half published as events and half through the compiled producer."""
    bus = EventBus()
    recs = [
        Recorder(f"r{i}", topics=["hook.**"], rule={"data": r}) for i, r in enumerate(rule_list)
    ]
    for rec in recs:
        await bus.subscribe(rec)
    await bus.start()
    producer = HookEventProducer(bus)
    for i, data in enumerate(payloads):
        data = {**data, "i": i}
        if i % 2:
            assert await producer.publish_response(data)
        else:
            assert await bus.publish(Event(topic="hook.response", type="T", source="s", data=data))
    await bus.join(30)
    await bus.stop(5)
    return [[c.event.data["i"] for c in rec.calls] for rec in recs]


# NOTE: routing copies only the parts of a payload the route's rules read (issue 15,
# W1r); the consumers must still get exactly what each rule alone matches.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule_list=st.lists(rules(), min_size=1, max_size=4),
    payloads=st.lists(
        st.dictionaries(st.sampled_from(KEYS), docs, max_size=3), min_size=1, max_size=6
    ),
)
def test_the_bus_routes_payloads_as_the_reference_matches(
    rule_list: list[dict[str, Any]], payloads: list[dict[str, Any]]
) -> None:
    got = asyncio.run(_routed(rule_list, payloads))
    # NOTE: membership, not order: the producer's events and plain events may carry
    # different priorities, so a consumer's queue can reorder them.
    for rule, seen in zip(rule_list, map(sorted, got), strict=True):
        want = [i for i, d in enumerate(payloads) if reference({"data": rule}, {"data": d})]
        assert seen == want, (rule, payloads)


def test_an_event_is_matched_as_its_to_dict_document() -> None:
    e = Event(
        topic="hook.pre_tool",
        type="PreToolUse",
        source="hook_handler",
        data={"tool": "Bash", "size": 300, "tags": ["a", "b"]},
        correlation_id="c-1",
    )
    assert Rule({"topic": [{"prefix": "hook."}], "data": {"tool": ["Bash"]}}).matches(e)
    assert Rule({"priority": ["NORMAL"], "data": {"size": [{"numeric": [">", 100]}]}}).matches(e)
    assert Rule({"data": {"tags": ["b"]}, "correlation_id": [{"exists": True}]}).matches(e)
    assert not Rule({"data": {"tool": [{"anything-but": ["Bash", "Read"]}]}}).matches(e)
    assert Rule('{"source": [{"wildcard": "hook_*"}]}').matches(e)  # JSON text works too
    assert repr(Rule({"a": [1]})) == 'Rule({"a":[1]})'


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"topic": "hook.x"}, "$.topic: a field's matchers go in a list"),
        ({"data": {"n": [{"numeric": [">", "x"]}]}}, "$.data.n[0].numeric[1]: expected a number"),
        ({"t": [{"contains": "x"}]}, '$.t[0]: unknown operator "contains"'),
        ({"$or": [{"a": ["x"]}]}, '$["$or"]: "$or" needs at least two rules'),
        ("{not json", "$: not JSON"),
        ([1, 2], "$: a rule must be a JSON object"),
        ({"a": [object()]}, "$.a[0]: a object is not JSON"),
    ],
)
def test_invalid_rules_name_the_path(rule: Any, message: str) -> None:
    with pytest.raises(InvalidRuleError) as info:
        Rule(rule)
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, ValueError)


def test_matching_something_that_is_no_document_says_so() -> None:
    from mpm_events import InvalidEventError

    with pytest.raises(InvalidEventError, match="takes an Event or a dict, got list"):
        Rule({"a": [1]}).matches([1])  # type: ignore[arg-type]
    # A payload value that is not JSON is seen as its str(), as Rust consumers see it.
    assert Rule({"a": [{"prefix": "<object"}]}).matches({"a": object()})


async def _matched(rule: dict[str, Any], payloads: list[Any], via_producer: bool) -> list[int]:
    bus = EventBus()
    rec = Recorder("r", topics=["hook.**"], rule=rule)
    await bus.subscribe(rec)
    await bus.start()
    producer = HookEventProducer(bus)
    try:
        for i, data in enumerate(payloads):
            data["i"] = i
            if via_producer:
                assert await producer.publish_response(data)
            else:
                assert await bus.publish(Event(topic="hook.r", type="T", source="s", data=data))
        await bus.join(10)
    finally:
        await bus.stop(5)
    return sorted(c.event.data["i"] for c in rec.calls)


@pytest.mark.parametrize("via_producer", [False, True])
async def test_rules_see_a_payload_that_is_not_plain_json_as_its_json(via_producer: bool) -> None:
    """Rules read the publisher's dict before it is packed; one that is not plain JSON
    (int keys, tuples, a dict subclass, nesting deeper than anything packs) is matched
    as its JSON form, as a Rust sink would see it."""
    from collections import OrderedDict

    deep: Any = "end"
    for _ in range(40):
        deep = [deep]
    rule = {"data": {"1": ["x"], "t": [2], "o": {"k": ["v"]}}}
    payloads = [
        {1: "x", "t": (1, 2), "o": {"k": "v"}},  # 0: int key as "1", tuple as array
        OrderedDict([("1", "x"), ("t", [2]), ("o", OrderedDict(k="v"))]),  # 1
        {"1": "x", "t": [2], "o": {"k": "v"}, "deep": deep},  # 2: not packed (too deep)
        {"1": "y", "t": [2], "o": {"k": "v"}},  # 3: no
        {"1": "x", "t": [3], "o": {"k": "v"}},  # 4: no
        {"1": "x", "t": [2], "o": {"k": ["w", "v"]}},  # 5: an element matches
        {"1": "x", "t": [2]},  # 6: no "o"
    ]
    assert await _matched(rule, payloads, via_producer) == [0, 1, 2, 5]
