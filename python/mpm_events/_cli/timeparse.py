"""Durations (``10s``, ``10m``, ``2h``, ``1d``) and ISO 8601 datetimes of the command
line, as unix microseconds."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """``10m`` -> 600.0 seconds; several parts add up (``1h30m``).

    Raises:
        ValueError: Not a duration (the message names the units).
    """
    t = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 10m, 2h, 1d or 1h30m")
    return total


def parse_iso(text: str) -> int:
    """An ISO 8601 datetime (naive: local time) as unix microseconds.

    Raises:
        ValueError: Not an ISO 8601 datetime.
    """
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(
            f"invalid datetime {text!r}: expected ISO 8601, e.g. 2026-12-02T05:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return round(dt.timestamp() * 1_000_000)


def parse_when(text: str) -> int:
    """An ISO 8601 datetime, or a duration meaning that long ago, as unix microseconds.

    Raises:
        ValueError: Neither (the message shows both forms).
    """
    try:
        return ago(parse_duration(text))
    except ValueError:
        pass
    try:
        return parse_iso(text)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected a duration ago (10m, 2h) or an ISO 8601 "
            "datetime (2026-12-02T05:00:00Z)"
        ) from None


def ago(seconds: float) -> int:
    """Now minus ``seconds``, unix microseconds."""
    return round((time.time() - seconds) * 1_000_000)


def iso(us: int) -> str:
    """Unix microseconds as ISO 8601 UTC (``2026-12-02T05:00:00.123456+00:00``)."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat()
