"""Payload schemas (issue 15): ``bus.register_schema(pattern, schema, on_invalid=)``
checked in Rust at publish, on every publish path; the built-in schemas of
``mpm_events.schemas`` against what the built-in producers really publish.
"""

from __future__ import annotations

import logging
import subprocess
import sys
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
        with pytest.raises(ConsumerConfigError, match="dead_letter"):
            bus.register_schema("hook.x", TOOL, on_invalid="dead_letter")
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
