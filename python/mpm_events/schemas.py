"""Opt-in JSON Schemas (draft 2020-12) for the payloads of the built-in producers.

Nothing here is registered by itself; register what you want checked::

    from mpm_events import schemas
    schemas.register_builtin(bus)                      # all of them, raising
    bus.register_schema("hook.tool", schemas.TOOL_USE)  # or one by one

Each schema describes what the producer writes (``HookEventProducer`` in Rust,
``SystemEventProducer`` in ``mpm_events.producers``) and lets further keys
through, so a newer producer adding a field stays valid.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "BUILTIN",
    "HOOK_ERROR",
    "SUBAGENT",
    "SYSTEM_CONFIG",
    "SYSTEM_ERROR",
    "SYSTEM_HEALTH",
    "SYSTEM_LIFECYCLE",
    "SYSTEM_PERFORMANCE",
    "SYSTEM_WARNING",
    "TOOL_USE",
    "register_builtin",
]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "$schema": _DIALECT,
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


_TEXT = {"type": "string"}
_OBJECT = {"type": "object"}

#: ``hook.tool`` (``publish_tool_use``): ``tool``, ``params``, ``result``.
TOOL_USE = _object({"tool": {"type": "string", "minLength": 1}, "params": _OBJECT}, {"result": {}})

#: ``hook.error`` (``HookEventProducer.publish_error``).
HOOK_ERROR = _object({"error_type": _TEXT, "message": _TEXT, "details": _OBJECT})

#: ``hook.subagent.*`` (``publish_subagent_event``): ``subagent`` and the event's fields.
SUBAGENT = _object({"subagent": {"type": "string", "minLength": 1}})

#: ``system.lifecycle.*`` (``publish_startup``, ``publish_shutdown``).
SYSTEM_LIFECYCLE = _object(
    {"service": _TEXT},
    {"version": _TEXT, "config": _OBJECT, "reason": _TEXT, "details": _OBJECT},
)

#: ``system.health`` (``publish_health_status``).
SYSTEM_HEALTH = _object(
    {
        "service": _TEXT,
        "status": _TEXT,
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
    {"details": _OBJECT},
)

#: ``system.config`` (``publish_config_change``).
SYSTEM_CONFIG = _object({"service": _TEXT, "key": _TEXT}, {"old_value": {}, "new_value": {}})

#: ``system.performance`` (``publish_performance_metrics``).
SYSTEM_PERFORMANCE = _object({"service": _TEXT, "metrics": _OBJECT})

#: ``system.error`` (``SystemEventProducer.publish_error``).
SYSTEM_ERROR = _object(
    {"service": _TEXT, "error_type": _TEXT, "message": _TEXT},
    {"stacktrace": {"type": ["string", "null"]}, "context": _OBJECT},
)

#: ``system.warning`` (``publish_warning``).
SYSTEM_WARNING = _object(
    {"service": _TEXT, "warning_type": _TEXT, "message": _TEXT}, {"details": _OBJECT}
)

#: Topic pattern -> schema, for every built-in producer payload.
BUILTIN: dict[str, dict[str, Any]] = {
    "hook.tool": TOOL_USE,
    "hook.error": HOOK_ERROR,
    "hook.subagent.*": SUBAGENT,
    "system.lifecycle.*": SYSTEM_LIFECYCLE,
    "system.health": SYSTEM_HEALTH,
    "system.config": SYSTEM_CONFIG,
    "system.performance": SYSTEM_PERFORMANCE,
    "system.error": SYSTEM_ERROR,
    "system.warning": SYSTEM_WARNING,
}


def register_builtin(bus: Any, *, on_invalid: Literal["raise", "dead_letter"] = "raise") -> None:
    """Registers every schema of :data:`BUILTIN` on ``bus``."""
    for pattern, schema in BUILTIN.items():
        bus.register_schema(pattern, schema, on_invalid=on_invalid)
