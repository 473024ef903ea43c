"""Payload schemas (issue 15): ``bus.register_schema(pattern, schema, on_invalid=)``
checked in Rust at publish, on every publish path; the built-in schemas of
``mpm_events.schemas`` against what the built-in producers really publish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, make_event
from mpm_events import (
    ConsumerConfigError,
    EventBus,
    EventBusError,
    HookEventProducer,
    InvalidTopicError,
    SchemaValidationError,
    schemas,
)
from mpm_events.producers import SystemEventProducer

WAIT = 30.0

TOOL = {
    "type": "object",
    "required": ["tool", "params"],
    "properties": {
        "tool": {"type": "string"},
        "params": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
    },
}


async def started(**kw: Any) -> tuple[EventBus, Recorder]:
    bus = EventBus(**kw)
    rec = Recorder("rec", topics=["**"])
    await bus.subscribe(rec)
    await bus.start()
    return bus, rec


async def test_raise_refuses_the_event_naming_path_and_keyword() -> None:
    bus, rec = await started()
    bus.register_schema("hook.*", TOOL)
    assert await bus.publish(make_event("hook.tool", {"tool": "Bash", "params": {"n": 1}}))
    with pytest.raises(SchemaValidationError, match=r"\$\.params\.n.*minimum") as info:
        await bus.publish(make_event("hook.tool", {"tool": "Bash", "params": {"n": -1}}))
    assert isinstance(info.value, EventBusError) and isinstance(info.value, ValueError)
    assert info.value.errors[0]["path"] == "$.params.n"
    assert info.value.errors[0]["keyword"] == "minimum"
    with pytest.raises(SchemaValidationError, match=r"\$: .*required"):
        bus.publish_nowait(make_event("hook.tool", {"tool": "Bash"}))
    # Other topics are not checked.
    assert await bus.publish(make_event("system.x", {"anything": 1}))
    await bus.join(WAIT)
    assert [c.event.topic for c in rec.calls] == ["hook.tool", "system.x"]
    m = bus.get_metrics()
    assert m["schema_invalid"] == {"hook.tool": 2}
    assert m["events_published"] == 2
    await bus.stop(5)


async def test_dead_letter_accepts_into_the_dead_letters_and_never_delivers() -> None:
    bus, rec = await started()
    bus.register_schema("hook.tool", TOOL, on_invalid="dead_letter")
    assert await bus.publish(make_event("hook.tool", {"tool": 5, "params": {}}))
    assert await bus.publish(make_event("hook.tool", {"tool": "ok", "params": {}}))
    await bus.join(WAIT)
    assert [c.event.data["tool"] for c in rec.calls] == ["ok"]
    letters = bus.get_dead_letters()
    assert len(letters) == 1
    text = str(letters[0])
    assert "$.tool" in text and "type" in text, text
    m = bus.get_metrics()
    assert m["schema_invalid"] == {"hook.tool": 1}
    assert m["events_dead_lettered"] == 1
    await bus.stop(5)


async def test_publish_batch_names_every_failing_event_and_accepts_none() -> None:
    bus, rec = await started()
    bus.register_schema("hook.tool", TOOL)
    events = [make_event("hook.tool", {"tool": "t", "params": {"n": n}}) for n in [1, -1, 2, -3]]
    with pytest.raises(SchemaValidationError, match=r"event #1 .*\[1, 3\]") as info:
        await bus.publish_batch(events)
    assert info.value.failed == [1, 3]
    assert bus.get_metrics()["events_published"] == 0
    # With dead letters: the valid ones are delivered, the invalid ones dead-lettered.
    bus.register_schema("hook.tool", TOOL, on_invalid="dead_letter")
    assert await bus.publish_batch(events) == 4
    await bus.join(WAIT)
    assert [c.event.data["params"]["n"] for c in rec.calls] == [1, 2]
    assert len(bus.get_dead_letters()) == 2
    await bus.stop(5)


async def test_the_compiled_producer_is_checked_too(caplog: pytest.LogCaptureFixture) -> None:
    bus, rec = await started()
    schemas.register_builtin(bus)
    producer = HookEventProducer(bus)
    assert await producer.publish_tool_use("Bash", {"command": "ls"})
    assert await producer.publish_error("E", "boom", {"x": 1})
    assert await producer.publish_subagent_event("research", "Start", {"task": "t"})
    # NOTE: the hook producer never raises (as the original): it logs and says False.
    with caplog.at_level(logging.ERROR, logger="mpm_events"):
        assert not await producer.publish_tool_use(5, {"command": "ls"})
        assert not await producer.publish_tool_use("Bash", ["not", "an", "object"])
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "$.tool: 5 is not of type" in logged and "$.params" in logged, logged
    system = SystemEventProducer(bus)
    assert await system.publish_startup("svc", "1.0")
    assert await system.publish_shutdown("svc", "bye")
    assert await system.publish_health_status("svc", "healthy", {"db": True})
    assert await system.publish_config_change("svc", "k", 1, 2)
    assert await system.publish_performance_metrics("svc", {"cpu": 0.5})
    assert await system.publish_error("svc", "E", "boom")
    assert await system.publish_warning("svc", "W", "careful")
    await bus.join(WAIT)
    assert len(rec.calls) == 10
    assert bus.get_metrics()["schema_invalid"] == {"hook.tool": 2}
    await bus.stop(5)


async def test_a_pydantic_model_class_gives_its_json_schema() -> None:
    from pydantic import BaseModel, Field

    class ToolUse(BaseModel):
        tool: str
        params: dict[str, Any]
        retries: int = Field(default=0, ge=0)

    bus, _rec = await started()
    bus.register_schema("hook.tool", ToolUse)
    assert await bus.publish(make_event("hook.tool", {"tool": "a", "params": {}, "retries": 2}))
    with pytest.raises(SchemaValidationError, match=r"\$\.retries.*minimum"):
        await bus.publish(make_event("hook.tool", {"tool": "a", "params": {}, "retries": -1}))
    await bus.stop(5)


def test_import_does_not_load_pydantic() -> None:
    code = (
        "import sys, mpm_events\n"
        "from mpm_events import EventBus, schemas\n"
        "b = EventBus(); schemas.register_builtin(b)\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_bad_schemas_and_options_are_refused() -> None:
    bus = EventBus()
    with pytest.raises(ConsumerConfigError, match="not a valid JSON Schema"):
        bus.register_schema("hook.*", {"type": 5})
    with pytest.raises(InvalidTopicError):
        bus.register_schema("hook..x", TOOL)
    with pytest.raises(ConsumerConfigError, match="on_invalid"):
        bus.register_schema("hook.*", TOOL, on_invalid="drop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pydantic model class"):
        bus.register_schema("hook.*", 42)  # type: ignore[arg-type]


async def test_shared_log_and_durable_buses_raise_before_storing(tmp_path: Path) -> None:
    for kw in (
        {"backend": f"sqlite:///{tmp_path / 'log.db'}"},
        {"enable_persistence": True, "persistence_path": str(tmp_path / "ev.db")},
    ):
        bus, rec = await started(**kw)
        bus.register_schema("hook.tool", TOOL)
        with pytest.raises(SchemaValidationError, match=r"\$\.tool"):
            await bus.publish(make_event("hook.tool", {"tool": 1, "params": {}}))
        with pytest.raises(SchemaValidationError) as info:
            await bus.publish_batch(
                [make_event("hook.tool", {"tool": "a", "params": {}}), make_event("hook.tool", {})]
            )
        assert info.value.failed == [1]
        assert await bus.publish(make_event("hook.tool", {"tool": "a", "params": {}}))
        await bus.join(WAIT)
        assert [c.event.data["tool"] for c in rec.calls] == ["a"], kw
        await bus.stop(5)


# ----- on_invalid="dead_letter" on every backend -----

SCHEMA = "<schema>"
LOGS = ("sqlite", "redis")


@pytest.fixture(params=["memory", "durable", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The bus's keyword arguments on each backend: in memory, the durable store, a
    SQLite log, a log on a private redis-server (tests/helpers/redis_server.py)."""
    kind = request.param
    if kind == "memory":
        yield kind, {}
    elif kind == "durable":
        yield kind, {"enable_persistence": True, "persistence_path": str(tmp_path / "ev.db")}
    elif kind == "sqlite":
        yield kind, {"backend": f"sqlite:///{tmp_path / 'log.db'}"}
    else:
        from helpers.redis_server import RedisServer

        server = RedisServer(tmp_path)
        try:
            yield kind, {"backend": server.url(prefix=f"t{uuid.uuid4().hex[:8]}")}
        finally:
            server.kill()


def schema_letters(bus: EventBus) -> list[dict[str, Any]]:
    return [d for d in bus.get_dead_letters() if d["consumer"] == SCHEMA]


async def test_an_invalid_event_is_dead_lettered_and_never_delivered(
    backend: tuple[str, dict[str, Any]],
) -> None:
    kind, kw = backend
    bus, rec = await started(**kw)
    bus.register_schema("hook.tool", TOOL, on_invalid="dead_letter")
    one = make_event("hook.tool", {"tool": 5, "params": {}})
    two = make_event("hook.tool", {"tool": 6, "params": {"n": -1}})
    good = make_event("hook.tool", {"tool": "ok", "params": {}})
    assert await bus.publish(one) is True
    assert bus.publish_nowait(two) is True
    assert await bus.publish(good) is True
    await bus.join(WAIT)
    assert [c.event.id for c in rec.calls] == [good.id], kind
    letters = schema_letters(bus)
    assert [d["event"].id for d in letters] == [one.id, two.id], letters
    assert letters[0]["event"].data == {"tool": 5, "params": {}}
    assert len(letters[0]["errors"]) == 1
    assert letters[0]["errors"][0].startswith("schema validation failed: $.tool: ")
    assert "(type)" in letters[0]["errors"][0]
    # Every violation is one error, on every backend.
    assert sorted(e.split(": ")[1] for e in letters[1]["errors"]) == ["$.params.n", "$.tool"]
    assert all(d["attempts"] == 0 for d in letters)
    m = bus.get_metrics()
    assert m["schema_invalid"] == {"hook.tool": 2}
    assert m["events_dead_lettered"] == 2
    if kind in LOGS:
        assert all(d["entry_id"] == "0-0" for d in letters)
        # Not in the log: a consumer name that starts later, at the earliest entry,
        # gets the valid event only.
        late = Recorder("late", topics=["**"], start="earliest")
        await bus.subscribe(late)
        await bus.join(WAIT)
        assert [c.event.id for c in late.calls] == [good.id]
        assert m["shared_log"]["events_appended"] == 1
    if kind == "durable":
        stored = [d for d in bus.get_stored_dead_letters() if d["consumer"] == SCHEMA]
        assert [d["event"].id for d in stored] == [one.id, two.id]
        assert stored[1]["errors"] == letters[1]["errors"]
        assert bus.persistence_stats()["stored_events"] == 1
    await bus.stop(5)


async def test_publish_batch_publishes_the_valid_and_dead_letters_the_invalid(
    backend: tuple[str, dict[str, Any]],
) -> None:
    kind, kw = backend
    bus, rec = await started(**kw)
    bus.register_schema("hook.tool", TOOL, on_invalid="dead_letter")
    events = [make_event("hook.tool", {"tool": "t", "params": {"n": n}}) for n in [1, -1, 2, -3]]
    assert await bus.publish_batch(events) == 4
    await bus.join(WAIT)
    assert sorted(c.event.data["params"]["n"] for c in rec.calls) == [1, 2], kind
    letters = schema_letters(bus)
    assert sorted(d["event"].data["params"]["n"] for d in letters) == [-3, -1]
    assert all("$.params.n" in d["errors"][0] for d in letters)
    assert bus.get_metrics()["schema_invalid"] == {"hook.tool": 2}
    # All invalid: all dead-lettered, still counted as accepted.
    assert await bus.publish_batch(events[1::2]) == 2
    await bus.join(WAIT)
    assert len(schema_letters(bus)) == 4
    assert len(rec.calls) == 2
    await bus.stop(5)


async def test_replay_publishes_again_what_now_passes_and_keeps_what_still_fails(
    backend: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    kind, kw = backend
    bus, rec = await started(**kw)
    bus.register_schema("hook.tool", TOOL, on_invalid="dead_letter")
    bad = make_event("hook.tool", {"tool": 5, "params": {}})
    assert await bus.publish(bad)
    await bus.join(WAIT)
    # Still invalid: stays a dead letter, not counted, a warning names it.
    with caplog.at_level(logging.WARNING, logger="mpm_events"):
        assert bus.replay_dead_letters() == 0
    assert bad.id in caplog.text and "still fail" in caplog.text, caplog.text
    assert [d["event"].id for d in schema_letters(bus)] == [bad.id]
    assert bus.get_metrics()["schema_invalid"] == {"hook.tool": 1}
    # The schema accepts it now: published again, same id, to every consumer.
    bus.register_schema("hook.tool", {"type": "object"}, on_invalid="dead_letter")
    assert bus.replay_dead_letters(consumer=SCHEMA, event_ids=[bad.id]) == 1
    await bus.join(WAIT)
    assert [c.event.id for c in rec.calls] == [bad.id], kind
    assert rec.calls[0].event.data == {"tool": 5, "params": {}}
    assert schema_letters(bus) == []
    assert bus.replay_dead_letters() == 0
    await bus.stop(5)


async def test_a_durable_bus_keeps_the_dead_letter_across_a_restart(tmp_path: Path) -> None:
    kw: dict[str, Any] = {
        "enable_persistence": True,
        "persistence_path": str(tmp_path / "ev.db"),
        "durability": "async",
    }
    bus, rec = await started(**kw)
    bus.register_schema("hook.tool", schemas.TOOL_USE, on_invalid="dead_letter")
    # The compiled producer's path too (async durability answers at once).
    producer = HookEventProducer(bus)
    assert await producer.publish_tool_use(5, {"command": "ls"})
    assert await producer.publish_tool_use("Bash", {"command": "ls"})
    await bus.join(WAIT)
    assert [c.event.data["tool"] for c in rec.calls] == ["Bash"]
    await bus.stop(5)
    again, rec2 = await started(**kw)
    await again.join(WAIT)
    assert rec2.calls == [], "an invalid event is never stored, so never redelivered"
    stored = [d for d in again.get_stored_dead_letters() if d["consumer"] == SCHEMA]
    assert len(stored) == 1
    assert stored[0]["event"].data["tool"] == 5
    assert "$.tool" in stored[0]["errors"][0]
    await again.stop(5)


def test_every_process_sees_the_log_dead_letters(any_url: str) -> None:
    async def main() -> str:
        bus, rec = await started(backend=any_url)
        bus.register_schema("hook.tool", TOOL, on_invalid="dead_letter")
        bad = make_event("hook.tool", {"tool": 5, "params": {"n": -2}})
        assert await bus.publish(bad) is True
        await bus.join(WAIT)
        assert rec.calls == []
        await bus.stop(5)
        return bad.id

    bad_id = asyncio.run(main())
    # Another process (its bus not even started) reads them from the log.
    code = (
        "import json, sys\n"
        "from mpm_events import EventBus\n"
        "bus = EventBus(backend=sys.argv[1])\n"
        "print(json.dumps([[d['consumer'], d['event'].id, d['event'].data, d['errors']]\n"
        "                  for d in bus.get_dead_letters()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, any_url],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    [(consumer, event_id, data, errors)] = json.loads(out.stdout)
    assert (consumer, event_id, data) == (SCHEMA, bad_id, {"tool": 5, "params": {"n": -2}})
    assert sorted(e.split(": ")[1] for e in errors) == ["$.params.n", "$.tool"]
