"""W5 in a fresh process: bytes per event queued behind a paused consumer.

Usage: ``python benches/memprobe.py {original|ours} N {rss|tracemalloc}`` prints one
JSON object.

``rss`` (no tracing) measures resident memory (``/proc/self/statm``), which sees every
allocator, including a Rust engine's: this is the headline number. ``tracemalloc``
measures the Python heap only (allocations made through Python's allocators), which
is what the original costs but undercounts an engine that allocates natively. In both,
a ``hook.**`` consumer is blocked inside ``consume`` on a gate, N tool-use events are
published through ``HookEventProducer``, and the growth is divided by N. The process
then exits without draining the queue (draining 100,000 events would only cost time).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import impls
import workloads

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


async def probe(impl: Any, n: int, trace: bool) -> dict[str, Any]:
    bus = impl.EventBus(max_queue_size=workloads.queue_size_for(n))
    await bus.start()
    gate = asyncio.Event()
    tracker = workloads.Tracker(1)
    consumer_cls = workloads.counting_consumer_class(impl)
    consumer = consumer_cls("paused", ["hook.**"], n + 1, tracker, gate)
    assert await bus.subscribe(consumer)
    producer = impl.HookEventProducer(bus)
    # One event first, so the consumer is parked on the gate before we measure.
    assert await producer.publish_tool_use("Bash", {"command": "ls -la", "n": -1})
    await asyncio.sleep(0.05)
    gc.collect()
    if trace:
        tracemalloc.start()
    before_rss = rss_bytes()
    before_py = tracemalloc.get_traced_memory()[0] if trace else 0
    for i in range(n):
        if not await producer.publish_tool_use("Bash", {"command": "ls -la", "n": i}):
            raise RuntimeError(f"bus refused event {i}")
    await asyncio.sleep(0)
    gc.collect()
    after_py = tracemalloc.get_traced_memory()[0] if trace else 0
    after_rss = rss_bytes()
    if trace:
        tracemalloc.stop()
    return {
        "n_events": n,
        "value": (after_rss - before_rss) / n if not trace else (after_py - before_py) / n,
        "rss_bytes_per_event": (after_rss - before_rss) / n,
        "tracemalloc_bytes_per_event": (after_py - before_py) / n if trace else None,
        "queue_size_reported": bus.get_metrics().get("queue_size"),
        "seen_while_paused": consumer.count,
    }


def main() -> None:
    name, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    loaded = impls.load(name)
    if loaded.impl is None:
        raise SystemExit(f"{name} not available: {loaded.reason}")
    result = asyncio.run(probe(loaded.impl, n, trace=mode == "tracemalloc"))
    print(json.dumps(result), flush=True)
    # Skip draining the queue and stopping the bus: only the numbers above matter.
    os._exit(0)


if __name__ == "__main__":
    main()
