"""Content rules on consumers (issue 15): ``ConsumerConfig(rule=...)`` routes in
Rust before an event enters a consumer's queue, on the memory bus, the durable
store and the shared logs (SQLite and a private redis-server), and in
``bus.replay(rule=)``. What a rule leaves out counts ``filtered``; on a shared
log it is acknowledged (a later instance of the same name does not get it).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, make_event, wait_until
from mpm_events import ConsumerConfig, EventBus, EventPriority, InvalidRuleError, Rule

WAIT = 30.0

BASH = {"data": {"tool": ["Bash"]}}


def tools(rec: Recorder) -> list[Any]:
    return [c.event.data.get("tool") for c in rec.calls]


def stats(bus: EventBus, name: str) -> dict[str, Any]:
    return bus.get_metrics()["consumer_stats"][name]


async def test_a_rule_passes_only_the_events_it_matches() -> None:
    bus = EventBus()
    ruled = Recorder("ruled", topics=["hook.**"], rule=BASH)
    every = Recorder("every", topics=["hook.**"])
    for r in (ruled, every):
        await bus.subscribe(r)
    await bus.start()
    for tool in ["Bash", "Read", "Bash", None]:
        await bus.publish(make_event("hook.pre_tool", {"tool": tool} if tool else {}))
    await bus.join(WAIT)
    assert tools(ruled) == ["Bash", "Bash"]
    assert len(every.calls) == 4
    s = stats(bus, "ruled")
    assert (s["received"], s["processed"], s["filtered"]) == (4, 2, 2)
    assert stats(bus, "every")["filtered"] == 0
    await bus.stop(5)


async def test_rules_read_the_event_fields_as_to_dict_shows_them() -> None:
    bus = EventBus()
    high = Recorder("high", rule={"priority": ["HIGH", "CRITICAL"]})
    typed = Recorder("typed", rule={"type": [{"prefix": "Pre"}], "source": ["hooks"]})
    corr = Recorder("corr", rule={"correlation_id": [{"prefix": "c"}]})
    topic = Recorder("topic", rule={"topic": [{"wildcard": "hook.*.done"}]})
    for r in (high, typed, corr, topic):
        await bus.subscribe(r)
    await bus.start()
    await bus.publish(make_event("hook.a.done", {}, priority=EventPriority.HIGH, type="PreTool"))
    await bus.publish(make_event("hook.b", {}, type="PreTool", source="hooks", correlation_id="c1"))
    await bus.publish(make_event("hook.c.done", {}, priority=EventPriority.LOW, type="Post"))
    await bus.join(WAIT)
    assert [c.event.topic for c in high.calls] == ["hook.a.done"]
    assert [c.event.topic for c in typed.calls] == ["hook.b"]
    assert [c.event.topic for c in corr.calls] == ["hook.b"]
    assert [c.event.topic for c in topic.calls] == ["hook.a.done", "hook.c.done"]
    await bus.stop(5)


async def test_many_rules_on_one_route_each_get_what_their_rule_matches() -> None:
    rng = random.Random(15)
    rules = [
        {"data": {"tool": ["t4"]}},
        {"data": {"n": [{"numeric": [">", 3, "<=", 8]}]}},
        {"data": {"tool": [{"anything-but": ["t1", "t2"]}]}},
        {"data": {"tags": ["x"]}, "type": [{"equals-ignore-case": "edit"}]},
        {"$or": [{"data": {"tool": [{"suffix": "3"}]}}, {"data": {"n": [0]}}]},
        {"data": {"missing": [{"exists": False}]}},
    ]
    rules += [{"data": {"tool": [f"t{i}"], "n": [i]}} for i in range(20)]
    bus = EventBus()
    recs = [Recorder(f"r{i}", rule=r, topics=["w.**"]) for i, r in enumerate(rules)]
    for r in recs:
        await bus.subscribe(r)
    await bus.start()
    events = [
        make_event(
            "w.x",
            {
                "tool": f"t{rng.randrange(9)}",
                "n": rng.randrange(12),
                "tags": ["x", "y"][: rng.randrange(3)],
            },
            type=rng.choice(["Edit", "EDIT", "Read"]),
        )
        for _ in range(150)
    ]
    # Half one by one, half in a batch (the batch path routes on its own).
    for e in events[:75]:
        await bus.publish(e)
    assert await bus.publish_batch(events[75:]) == 75
    await bus.join(WAIT)
    for rule, rec in zip(rules, recs, strict=True):
        want = [e.id for e in events if Rule(rule).matches(e)]
        assert [c.event.id for c in rec.calls] == want, rule
        assert stats(bus, rec.name)["filtered"] == len(events) - len(want)
    await bus.stop(5)


async def test_an_invalid_rule_is_refused_naming_its_path() -> None:
    with pytest.raises(InvalidRuleError, match=r"\$\.data\.tool.*list"):
        ConsumerConfig("c", rule={"data": {"tool": "Bash"}})
    with pytest.raises(InvalidRuleError, match=r"\$\.n\[0\]\.numeric"):
        ConsumerConfig("c", rule='{"n": [{"numeric": [">"]}]}')

    class Config:  # a duck-typed config: checked at subscribe
        def __init__(self) -> None:
            ok = ConsumerConfig("duck")
            for k in dir(ok):
                if not k.startswith("_"):
                    setattr(self, k, getattr(ok, k))
            self.rule = {"data": {"x": [{"prefix": 5}]}}

    rec = Recorder("duck")
    rec._config = Config()  # type: ignore[assignment]
    bus = EventBus()
    with pytest.raises(InvalidRuleError, match=r'consumer "duck": rule: \$\.data\.x\[0\]\.prefix'):
        await bus.subscribe(rec)
    assert bus.get_metrics()["consumers_active"] == 0


async def test_a_rule_on_a_rust_sink_filters_before_the_sink(tmp_path: Path) -> None:
    from mpm_events import LoggingConsumer

    bus = EventBus()
    sink = LoggingConsumer(name="log", topics=["**"])
    sink.config.rule = BASH
    await bus.subscribe(sink)
    await bus.start()
    for tool in ["Bash", "Read", "Read"]:
        await bus.publish(make_event("a.b", {"tool": tool}))
    await bus.join(WAIT)
    s = stats(bus, "log")
    assert (s["received"], s["processed"], s["filtered"]) == (3, 1, 2)
    await bus.stop(5)


async def test_durable_store_acknowledges_what_a_rule_filters_and_replay_takes_a_rule(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ev.db")
    bus = EventBus(enable_persistence=True, persistence_path=path)
    ruled = Recorder("ruled", rule=BASH)
    await bus.subscribe(ruled)
    await bus.start()
    for tool in ["Bash", "Read", "Edit", "Bash"]:
        await bus.publish(make_event("d.x", {"tool": tool}))
    await bus.join(WAIT)
    assert tools(ruled) == ["Bash", "Bash"]
    bus.flush_persistence()
    assert bus.persistence_stats()["pending_deliveries"] == 0
    other = Recorder("other", topics=["nothing"])
    await bus.subscribe(other)
    assert await bus.replay(to="other", rule={"data": {"tool": ["Read", "Edit"]}}) == 2
    await bus.join(WAIT)
    assert tools(other) == ["Read", "Edit"]
    with pytest.raises(InvalidRuleError, match="replay"):
        await bus.replay(to="other", rule={"data": []})
    await bus.stop(5)
    # Nothing is redelivered after a restart: the filtered events were acknowledged.
    again = EventBus(enable_persistence=True, persistence_path=path)
    ruled2 = Recorder("ruled")
    await again.subscribe(ruled2)
    await again.start()
    await again.join(WAIT)
    assert ruled2.calls == []
    await again.stop(5)


@pytest.fixture(params=["sqlite", "redis"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    from helpers.redis_server import RedisServer

    server = RedisServer(tmp_path)
    try:
        yield server.url(prefix=f"t{uuid.uuid4().hex[:8]}")
    finally:
        server.kill()


async def test_rules_on_a_shared_log_filter_and_acknowledge(log_url: str) -> None:
    bus = EventBus(backend=log_url)
    ruled = Recorder("ruled", topics=["log.**"], rule=BASH)
    every = Recorder("every", topics=["log.**"])
    for r in (ruled, every):
        await bus.subscribe(r)
    await bus.start()
    sent = ["Bash", "Read", "Bash", "Edit", "Read"]
    assert await bus.publish_batch([make_event("log.t", {"tool": t}) for t in sent]) == 5
    await wait_until(lambda: len(every.calls) == 5 and len(ruled.calls) == 2, WAIT, "delivered")
    await wait_until(lambda: stats(bus, "ruled")["filtered"] == 3, WAIT, "filtered counted")
    assert tools(ruled) == ["Bash", "Bash"]
    # replay(rule=) reads the log's range through the rule.
    assert await bus.replay(to="every", rule={"data": {"tool": ["Edit"]}}) == 1
    await wait_until(lambda: len(every.calls) == 6, WAIT, "replayed")
    assert tools(every)[-1] == "Edit"
    await bus.stop(5)
    # A new instance of "ruled" (no rule now) starts after what was filtered: all of
    # it was acknowledged.
    again = EventBus(backend=log_url)
    ruled2 = Recorder("ruled", topics=["log.**"])
    await again.subscribe(ruled2)
    await again.start()
    await again.publish(make_event("log.t", {"tool": "Later"}))
    await wait_until(lambda: len(ruled2.calls) >= 1, WAIT, "the new event")
    await again.join(WAIT)
    assert tools(ruled2) == ["Later"]
    await again.stop(5)


class StrKey(str):
    """A ``str`` subclass: a payload holding one is never answered from memory."""


async def test_answers_remembered_for_repeated_values_stay_exact() -> None:
    """The bus remembers its rules' recent answers by the payload values they read
    (issue 15, W1r). Equal values in other objects (1 and 1.0 and True are not
    equal to a rule), other key orders, mutated nested dicts, lists, subclasses and
    a new subscription must all get exactly the answer the rule gives."""
    rng = random.Random(1515)
    rules = [
        {"data": {"tool": ["Bash"]}},
        {"data": {"n": [1]}},
        {"data": {"n": [{"numeric": [">=", 1]}], "tool": [{"prefix": "B"}]}},
        {"data": {"tool": [{"anything-but": ["Bash"]}]}, "priority": ["HIGH"]},
        {"data": {"inner": {"k": ["v"]}}},
        {"topic": [{"suffix": ".a"}], "data": {"n": [{"exists": False}]}},
    ]
    bus = EventBus()
    recs = [Recorder(f"m{i}", rule=r, topics=["mem.**"]) for i, r in enumerate(rules)]
    for r in recs:
        await bus.subscribe(r)
    await bus.start()
    inner = {"k": "v"}
    tools_pool: list[Any] = ["Bash", "".join(["Ba", "sh"]), "Read", StrKey("Bash"), None, 7]
    numbers: list[Any] = [1, 1.0, True, "1", 2, 0, -0.0, 2**70, float("nan")]
    events = []
    for i in range(400):
        data: dict[Any, Any] = {}
        keys = ["tool", "n", "inner"]
        rng.shuffle(keys)
        for k in keys:
            choice = rng.randrange(6)
            if k == "tool" and choice:
                data["tool"] = rng.choice(tools_pool)
            elif k == "n" and choice:
                data["n"] = rng.choice(numbers) if choice > 1 else [rng.choice(numbers)]
            elif k == "inner" and choice:
                data["inner"] = inner
        if rng.randrange(10) == 0:
            data[StrKey("n")] = 1
        if i % 50 == 25:
            # NOTE: the same dict object, changed: its answer must change with it.
            inner["k"] = "w" if inner["k"] == "v" else "v"
        topic = rng.choice(["mem.a", "mem.b"])
        prio = rng.choice([EventPriority.HIGH, EventPriority.NORMAL])
        e = make_event(topic, data, priority=prio)
        # NOTE: the reference answer is taken now, before `inner` changes again.
        events.append((e, [Rule(r).matches(e) for r in rules]))
        assert await bus.publish(e)
        if i == 200:
            late = Recorder("late", rule=rules[0], topics=["mem.**"])
            await bus.subscribe(late)
    await bus.join(WAIT)
    for j, rec in enumerate(recs):
        # NOTE: sets: a HIGH event may overtake a NORMAL one queued before it.
        want = {e.id for e, answers in events if answers[j]}
        got = [c.event.id for c in rec.calls]
        assert len(got) == len(set(got)) and set(got) == want, rules[j]
    assert 0 < len(want) < len(events)
    late_want = {e.id for e, answers in events[201:] if answers[0]}
    assert {c.event.id for c in late.calls} == late_want
    await bus.stop(5)


async def test_the_compiled_producer_is_answered_from_memory_exactly() -> None:
    """W1r's path: ``HookEventProducer`` into a consumer with a rule on the tool."""
    from mpm_events import HookEventProducer

    bus = EventBus()
    ruled = Recorder("ruled", topics=["hook.**"], rule=BASH)
    await bus.subscribe(ruled)
    await bus.start()
    producer = HookEventProducer(bus)
    names = ["Bash", "Bash", "Read", "Bash", "".join(["Ba", "sh"]), "bash", "Bash"]
    for i, name in enumerate(names):
        assert await producer.publish_tool_use(name, {"n": i})
    await bus.join(WAIT)
    assert [c.event.data["params"]["n"] for c in ruled.calls] == [0, 1, 3, 4, 6]
    s = stats(bus, "ruled")
    assert (s["received"], s["filtered"]) == (7, 2)
    await bus.stop(5)
