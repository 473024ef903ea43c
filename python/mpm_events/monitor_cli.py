"""``mpm-events monitor``: the monitor page over a shared event log, standalone.

A bus on the log (``EventBus(backend=URL)``, no consumers of its own) serves the
monitor: the log's dead letters (browse, redrive into the log for their consumer
name, from any process), replay of a time window from the log into a consumer of
this bus, and a live stream of the log's entries, tailed from start-up.
Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from typing import Any

#: Seconds between reads of the log.
TAIL_INTERVAL_S = 0.2
#: Entries read per call.
TAIL_BATCH = 1000


def _doc(entry: dict[str, Any]) -> dict[str, Any]:
    """A log entry as the stream's event document (``Event.to_dict``'s fields)."""
    ts = entry.get("timestamp_us")
    return {
        "id": entry["id"],
        "topic": entry["topic"],
        "type": entry.get("type"),
        "timestamp": datetime.fromtimestamp(ts / 1e6, UTC).isoformat() if ts else None,
        "source": entry.get("source"),
        "data": entry.get("data"),
        "correlation_id": entry.get("correlation_id"),
        "priority": entry.get("priority"),
        "entry_id": entry.get("entry_id"),
        "publisher": entry.get("publisher"),
    }


def _last_entry(backend: str) -> str | None:
    """The id of the log's last entry (None for an empty log)."""
    from mpm_events._core import _log_range

    after = None
    while True:
        rows = _log_range(backend, after=after, limit=10_000)
        if not rows:
            return after
        after = rows[-1]["entry_id"]


async def tail(bus: Any, backend: str, after: str | None, stop: asyncio.Event) -> None:
    """Puts the log's entries after ``after`` on the monitor stream as they come
    (a no-op for each while no client watches)."""
    from mpm_events._core import _log_range

    while not stop.is_set():
        rows = await asyncio.to_thread(_log_range, backend, after=after, limit=TAIL_BATCH)
        for row in rows:
            bus._monitor_push(json.dumps(_doc(row), default=str))
        if rows:
            after = rows[-1]["entry_id"]
            if len(rows) == TAIL_BATCH:
                continue
        try:
            await asyncio.wait_for(stop.wait(), TAIL_INTERVAL_S)
        except TimeoutError:
            pass


async def serve(backend: str, host: str, port: int, stop: asyncio.Event | None = None) -> int:
    """Serves until ``stop`` is set (or SIGINT/SIGTERM); prints the URL first."""
    from mpm_events import EventBus
    from mpm_events.errors import EventBusError

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        bus = EventBus(backend=backend)
        await bus.start()
    except (EventBusError, ValueError, OSError) as e:
        print(f"mpm-events monitor: cannot open {backend}: {e}", file=sys.stderr)
        return 1
    try:
        try:
            url = await bus.serve_monitor(host=host, port=port)
        except OSError as e:
            print(f"mpm-events monitor: {e}", file=sys.stderr)
            return 1
        # NOTE: the stream starts after the log's last entry at start-up: what is
        # appended once the URL is printed is shown.
        start = await asyncio.to_thread(_last_entry, backend)
        print(f"monitor of {backend}: {url}", flush=True)
        await tail(bus, backend, start, stop)
    finally:
        await bus.stop(timeout=5)
    return 0


def run(backend: str, host: str, port: int) -> int:
    """``mpm-events monitor``'s entry point."""
    return asyncio.run(serve(backend, host, port))
