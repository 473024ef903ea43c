"""Child process of test_durability_promises.py: publishes into a durable "sync" bus
and marks where the publishing starts and ends with a stat() of a path that does not
exist, so that a tracer (strace) can count the fsyncs in between.

Usage: durability_child.py DB_PATH concurrent|sequential|async N

``async``: an ``"async"`` bus (``flush_interval`` 0.2 s) publishes N events one by
one, marks ``RETURNED``, then stays idle for a second before ``END``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mpm_events import Event, EventBus

FLUSH_INTERVAL = 0.2


def mark(name: str) -> None:
    try:
        os.stat(f"/nonexistent-mpm-mark/{name}")
    except FileNotFoundError:
        pass


async def main(path: str, how: str, n: int) -> None:
    durability = "async" if how == "async" else "sync"
    bus = EventBus(
        enable_persistence=True,
        persistence_path=path,
        durability=durability,
        flush_interval=FLUSH_INTERVAL,
    )
    await bus.start()
    events = [Event(topic="hook.x", type="T", source="child", data={"i": i}) for i in range(n)]
    assert await bus.publish(Event(topic="warm.up", type="T", source="child", data={}))
    if how == "async":
        await asyncio.sleep(3 * FLUSH_INTERVAL)  # the warm-up's flush is over
    mark("BEGIN")
    if how == "async":
        results = [await bus.publish(e) for e in events]
        mark("RETURNED")
        await asyncio.sleep(5 * FLUSH_INTERVAL)  # idle: only the flush timer runs
    elif how == "concurrent":
        results = await asyncio.gather(*[bus.publish(e) for e in events])
    else:
        results = [await bus.publish(e) for e in events]
    mark("END")
    assert all(results), results.count(False)
    print(bus.persistence_stats()["stored_events"], flush=True)
    await bus.stop(timeout=10)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
