"""Quick persistence measurement (not asserted): durable "sync" publishing with many
concurrent publishing tasks, "async" durability, and the in-memory bus, end to end
(publish until every event is handled by one async consumer).

    python benches/persist_quick.py [N] [TASKS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from mpm_events import ConsumerConfig, Event, EventBus, IEventConsumer


class Count(IEventConsumer):
    def __init__(self) -> None:
        self._config = ConsumerConfig(name="count", topics=["hook.**"])
        self.n = 0

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Event) -> bool:
        self.n += 1
        return True

    async def consume_batch(self, events: list[Event]) -> int:
        self.n += len(events)
        return len(events)

    async def shutdown(self) -> None:
        return None

    @property
    def is_healthy(self) -> bool:
        return True

    def get_metrics(self) -> dict[str, int]:
        return {"n": self.n}


def hook_event(i: int) -> Event:
    return Event(
        topic="hook.tool.use",
        type="hook",
        source="bench",
        data={"tool": "Bash", "i": i, "session": "s-1", "args": {"command": "ls -la"}},
    )


async def run(label: str, n: int, tasks: int, **kw: object) -> float:
    bus = EventBus(max_queue_size=1_000_000, **kw)
    c = Count()
    await bus.subscribe(c)
    await bus.start()
    per = n // tasks
    events = [[hook_event(t * per + i) for i in range(per)] for t in range(tasks)]

    async def publisher(evs: list[Event]) -> None:
        for e in evs:
            assert await bus.publish(e)

    t0 = time.perf_counter()
    await asyncio.gather(*[publisher(evs) for evs in events])
    await bus.join(120)
    dt = time.perf_counter() - t0
    await bus.stop()
    rate = per * tasks / dt
    print(f"{label:<40} {per * tasks:>8} events  {dt:6.2f} s  {rate:>10,.0f} events/s")
    return rate


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    with tempfile.TemporaryDirectory() as d:
        mem = await run("in-memory", n, tasks)
        a = await run(
            "persistent async",
            n,
            tasks,
            enable_persistence=True,
            persistence_path=str(Path(d) / "a.db"),
            durability="async",
        )
        s = await run(
            f"persistent sync ({tasks} tasks)",
            n,
            tasks,
            enable_persistence=True,
            persistence_path=str(Path(d) / "s.db"),
        )
        s1 = await run(
            "persistent sync (8 tasks)",
            n // 10,
            8,
            enable_persistence=True,
            persistence_path=str(Path(d) / "s1.db"),
        )
    print(f"async / in-memory = {a / mem:.0%}; sync / in-memory = {s / mem:.0%}; s8={s1:,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
