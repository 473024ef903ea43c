"""The shared log read and changed without a bus (``_core._log_*``), in the shapes
the monitor's API answers with, so both modes print the same fields."""

from __future__ import annotations

from typing import Any

from mpm_events._cli.target import CliError, log_call
from mpm_events._cli.timeparse import iso

PRIORITY_NAMES = {1: "CRITICAL", 2: "HIGH", 3: "NORMAL", 4: "LOW"}


def document(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry of ``_log_range`` as an event document: ``seq`` (its entry id), then
    the fields of ``Event.to_dict()`` the log keeps (a ``Rule`` matches on these)."""
    return {
        "seq": entry["entry_id"],
        "id": entry["id"],
        "topic": entry["topic"],
        "type": entry["type"],
        "timestamp": iso(entry["timestamp_us"]),
        "source": entry["source"],
        "data": entry["data"],
        "correlation_id": entry["correlation_id"],
        "priority": PRIORITY_NAMES.get(entry["priority"], entry["priority"]),
    }


def dead_letter(dl: dict[str, Any]) -> dict[str, Any]:
    """A dead letter of ``_log_dead_letters`` in the monitor's shape: its ``id`` is the
    event's (as the monitor's), the log keeps only the last error."""
    event = document(dl["event"])
    return {
        "id": event["id"],
        "consumer": dl["group"],
        "topic": event["topic"],
        "attempts": dl["attempts"],
        "errors": [dl["reason"]],
        "error": dl["reason"],
        "timestamp": iso(dl["failed_us"]),
        "event": event,
    }


def groups(url: str) -> list[dict[str, Any]]:
    from mpm_events._core import _log_groups

    return list(log_call(url, _log_groups))


def check_group(url: str, name: str) -> None:
    """Raises CliError (1) unless the log knows the consumer name ``name``."""
    known = [g["name"] for g in groups(url)]
    if name not in known:
        raise CliError(
            f"the log has no consumer named {name!r} (known: {', '.join(known) or 'none'})"
        )
