"""``mpm-events bench``: a quick built-in benchmark of this installation.

Not ``benches/run.py`` (the repository's suite, which compares with the original
and is not installed with the package): three measurements, each on fresh state:

* ``publish``: ``publish_batch`` of N events into an in-process bus, one Python
  consumer counting them in ``consume_batch``; events/s from the first publish until
  the consumer has them all;
* ``log_append``: ``_log_append`` of N events in batches of 1,000 to a new SQLite
  log in a temporary directory (durability ``normal``);
* ``log_read``: one consumer name claiming and acknowledging all N from that log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

from mpm_events._cli import output

BATCH = 1000


class _Counter:
    """The publish measurement's consumer: counts events, sets ``done`` at ``n``.

    (An ``IEventConsumer`` by duck typing: module level, so no class is made per run.)
    """

    def __init__(self, n: int, done: asyncio.Event) -> None:
        from mpm_events import ConsumerConfig

        self._config = ConsumerConfig("bench", topics=["bench.**"], batch_size=256)
        self.n = n
        self.done = done
        self.seen = 0

    @property
    def config(self) -> Any:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return True

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Any) -> bool:
        return await self.consume_batch([event]) == 1

    async def consume_batch(self, events: list[Any]) -> int:
        self.seen += len(events)
        if self.seen >= self.n:
            self.done.set()
        return len(events)

    async def shutdown(self) -> None:
        pass

    def get_metrics(self) -> dict[str, Any]:
        return {}


async def _publish(n: int) -> float:
    from mpm_events import Event, EventBus

    done = asyncio.Event()
    bus = EventBus(max_queue_size=max(n, 10_000))
    await bus.start()
    await bus.subscribe(_Counter(n, done))
    events = [
        Event(topic="bench.ev", type="Bench", source="bench", data={"i": i}) for i in range(n)
    ]
    began = time.perf_counter()
    for i in range(0, n, BATCH):
        await bus.publish_batch(events[i : i + BATCH])
    await asyncio.wait_for(done.wait(), 120)
    took = time.perf_counter() - began
    await bus.stop(5)
    return took


def _log(n: int, url: str) -> tuple[float, float]:
    from mpm_events._core import _log_ack, _log_append, _log_read

    events = [
        {"topic": "bench.ev", "type": "Bench", "source": "bench", "data": {"i": i}}
        for i in range(n)
    ]
    began = time.perf_counter()
    for i in range(0, n, BATCH):
        _log_append(url, events[i : i + BATCH], durability="normal")
    appended = time.perf_counter() - began
    began = time.perf_counter()
    got = 0
    while got < n:
        batch = _log_read(url, "bench", "bench-1", BATCH)
        if not batch:
            break
        _log_ack(url, "bench", [e["entry_id"] for e in batch])
        got += len(batch)
    return appended, time.perf_counter() - began


def run(args: argparse.Namespace) -> int:
    n = max(1, args.events)
    rows = []
    took = asyncio.run(_publish(n))
    rows.append(
        {
            "bench": "publish",
            "events": n,
            "seconds": round(took, 4),
            "events_per_s": round(n / took),
        }
    )
    with tempfile.TemporaryDirectory(prefix="mpm-events-bench-") as tmp:
        url = "sqlite://" + os.path.join(tmp, "bench.db")
        appended, read = _log(n, url)
    rows.append(
        {
            "bench": "log_append",
            "events": n,
            "seconds": round(appended, 4),
            "events_per_s": round(n / appended),
        }
    )
    rows.append(
        {
            "bench": "log_read",
            "events": n,
            "seconds": round(read, 4),
            "events_per_s": round(n / read),
        }
    )
    if output.wants_tables(args):
        output.console().print(
            output.table(
                "mpm-events bench (built-in, not benches/run.py)",
                ["bench", "events", "seconds", "events/s"],
                [[r["bench"], r["events"], r["seconds"], r["events_per_s"]] for r in rows],
            )
        )
    else:
        for r in rows:
            output.line(r)
    return 0
