"""W11: the shared log across processes: 4 publisher processes, 2 consumer names.

    python benches/logprobe.py [--quick]     # prints one JSON line (progress on stderr)

Every run uses a fresh SQLite log in a temp dir. Two consumer processes, one per
consumer name (``relay``, ``audit``: each name gets every event), claim entries with
``_core._log_read(url, name, instance, 1000, block_ms=100)`` and acknowledge each
claimed batch with ``_core._log_ack``; four publisher processes append with
``_core._log_append``. All seven are started and imported first; the publishers start
together on one line on their stdin.

NOTE: this is a benchmark-level API, not the bus: it was written before
``EventBus(backend="sqlite:///...")`` (one ``Appender`` with group commit per process,
one ``GroupReader`` per consumer name) reached main; a run through the bus is still to
be added. ``_log_append`` is one transaction per call, so with
``durability="sync"`` every single-event call is its own fsync; the bus's appender
commits the publishes of many tasks of one process together.

Runs (``mode``):

- ``single``: each publisher appends its events one call each (durability ``sync``,
  the default), and again with ``normal``;
- ``batch``: each publisher appends batches of 1,000 (one transaction each, sync);
- ``paced``: each publisher appends one event every ``1 / rate`` s (sync), for the
  publish-to-consume latency of a stream that is not saturated.

Measured per run: events/s end to end (all events of both names consumed, from the
publishers' common start to the last consumption), the publishers' own rate, and the
publish-to-consume latency per event: from ``published_us`` (set as the event is
converted, just before its append, so including its commit and fsync) to the moment
the consumer's ``_log_read`` returned it, across processes (one host, one clock).
Duplicates (an entry delivered twice to a name) are counted; there should be none.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PUBLISHERS = 4
NAMES = ("relay", "audit")
READ_MAX = 1000
BLOCK_MS = 100
TIMEOUT_S = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _event(i: int) -> dict[str, Any]:
    return {
        "topic": "hook.pre_tool",
        "type": "PreToolUse",
        "source": "hook",
        "data": {
            "session_id": "bench-w11",
            "cwd": "/work/projects/shop",
            "tool_name": "Bash",
            "tool_input": {"command": "pytest -q", "n": i},
        },
    }


def publisher(url: str, count: int, batch: int, rate: float) -> None:
    """A publisher process: ready, wait for go, append, print its times."""
    from mpm_events._core import _log_append

    events = [_event(i) for i in range(count)]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    if rate > 0:
        pause = 1.0 / rate
        due = time.monotonic()
        for ev in events:
            _log_append(url, [ev])
            due += pause
            time.sleep(max(0.0, due - time.monotonic()))
    else:
        for i in range(0, count, batch):
            _log_append(url, events[i : i + batch])
    print(json.dumps({"start": start, "end": time.time()}), flush=True)


def consumer(url: str, name: str, total: int) -> None:
    """A consumer process: claim and ack until ``total`` events, print what it saw."""
    from mpm_events._core import _log_ack, _log_read

    instance = f"{name}-{os.getpid()}"
    _log_read(url, name, instance, 1, 0)  # creates the group (start: earliest)
    print("ready", flush=True)
    seen: set[str] = set()
    dupes = 0
    lat_us: list[int] = []
    first = last = None
    deadline = time.monotonic() + TIMEOUT_S
    while len(seen) < total and time.monotonic() < deadline:
        got = _log_read(url, name, instance, READ_MAX, BLOCK_MS)
        if not got:
            continue
        now = time.time()
        now_us = int(now * 1e6)
        first = first or now
        last = now
        for e in got:
            if e["id"] in seen:
                dupes += 1
            seen.add(e["id"])
            lat_us.append(now_us - e["published_us"])
        _log_ack(url, name, [e["entry_id"] for e in got])
    lat_us.sort()
    print(
        json.dumps(
            {
                "count": len(seen),
                "dupes": dupes,
                "first": first,
                "last": last,
                "p50_ms": _pct(lat_us, 0.50) / 1000,
                "p99_ms": _pct(lat_us, 0.99) / 1000,
                "max_ms": (lat_us[-1] if lat_us else 0) / 1000,
            }
        ),
        flush=True,
    )


def _pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, int(q * len(values)))])


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run(
    mode: str, per_publisher: int, *, batch: int = 1, rate: float = 0.0, durability: str = "sync"
) -> dict[str, Any]:
    """One run on a fresh log; returns its numbers (or ``error``)."""
    with tempfile.TemporaryDirectory(prefix="mpm-w11-") as tmp:
        url = f"sqlite://{Path(tmp) / 'events.db'}?durability={durability}"
        total = per_publisher * PUBLISHERS
        procs: list[subprocess.Popen[str]] = []
        try:
            consumers = [_spawn("consume", url, name, str(total)) for name in NAMES]
            procs += consumers
            for c in consumers:
                assert c.stdout is not None
                if c.stdout.readline().strip() != "ready":
                    return {"error": "a consumer did not start"}
            pubs = [
                _spawn("publish", url, str(per_publisher), str(batch), str(rate))
                for _ in range(PUBLISHERS)
            ]
            procs += pubs
            for p in pubs:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    return {"error": "a publisher did not start"}
            for p in pubs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            pub_out = [json.loads(p.communicate(timeout=TIMEOUT_S)[0]) for p in pubs]
            con_out = [json.loads(c.communicate(timeout=TIMEOUT_S)[0]) for c in consumers]
        except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for name, c in zip(NAMES, con_out, strict=True):
            if c["count"] != total:
                return {"error": f"{name} consumed {c['count']} of {total}"}
        start = min(p["start"] for p in pub_out)
        pub_end = max(p["end"] for p in pub_out)
        con_end = max(c["last"] for c in con_out)
        return {
            "mode": mode,
            "durability": durability,
            "publishers": PUBLISHERS,
            "names": len(NAMES),
            "events": total,
            "batch": batch,
            "rate_per_publisher": rate,
            "end_to_end_events_per_s": total / (con_end - start),
            "publish_events_per_s": total / (pub_end - start),
            "p50_ms": statistics.median(c["p50_ms"] for c in con_out),
            "p99_ms": max(c["p99_ms"] for c in con_out),
            "max_ms": max(c["max_ms"] for c in con_out),
            "duplicates": sum(c["dupes"] for c in con_out),
        }


def measure(quick: bool) -> dict[str, Any]:
    scale = 5 if quick else 1
    plan = [
        ("single", {"per_publisher": 500 // scale}),
        ("single", {"per_publisher": 5000 // scale, "durability": "normal"}),
        ("batch", {"per_publisher": 50_000 // scale, "batch": 1000}),
        ("paced", {"per_publisher": 250 // scale, "rate": 50.0}),
    ]
    out: dict[str, Any] = {"runs": []}
    for mode, kw in plan:
        got = run(mode, **kw)  # type: ignore[arg-type]
        log(f"W11 {mode} {kw}: {json.dumps(got)}")
        out["runs"].append({"mode": mode, **kw, **got})
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        _, _, url, n, batch, rate = sys.argv
        publisher(url, int(n), int(batch), float(rate))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "consume":
        _, _, url, name, total = sys.argv
        consumer(url, name, int(total))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the events")
    args = parser.parse_args()
    print(json.dumps(measure(args.quick)))


if __name__ == "__main__":
    main()
