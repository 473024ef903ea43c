"""Child process of the crash test: publishes with "sync" durability and prints
``P <id>`` for every event whose publish returned True and ``D <id>`` for every event
its consumer handled (before the handling is acknowledged), until it is killed."""

from __future__ import annotations

import asyncio
import random
import sys

from mpm_events import Event, EventBus

from helpers.persist_helpers import Recorder


class Printing(Recorder):
    async def consume(self, event: Event) -> bool:
        # NOTE: printed and flushed before consume returns, i.e. before the ack exists.
        sys.stdout.write(f"D {event.id}\n")
        sys.stdout.flush()
        if random.random() < 0.05:
            # NOTE: a slow consumer, so that a backlog of unacknowledged events builds.
            await asyncio.sleep(0.002)
        return True


async def main(path: str) -> None:
    bus = EventBus(enable_persistence=True, persistence_path=path, durability="sync")
    await bus.subscribe(Printing("crash-consumer"))
    await bus.start()
    print("READY", flush=True)
    i = 0
    while True:
        # NOTE: many publishes in flight at once, so they share group commits.
        events = [
            Event(topic="hook.crash", type="t", source="child", data={"i": i + k, "p": "x" * 64})
            for k in range(32)
        ]
        i += 32
        results = await asyncio.gather(*[bus.publish(e) for e in events])
        sys.stdout.write(
            "".join(f"P {e.id}\n" for e, ok in zip(events, results, strict=True) if ok)
        )
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
