"""The seed document's ``CustomConsumer``, with every method a consumer needs.

It subscribes to ``system.**`` and prints each event it is given. A
``SystemEventProducer`` publishes a startup, a health status and a config change;
a hook event is published too, and the consumer does not see it (its topic is not
under ``system``). Run it as::

    python examples/custom_consumer.py
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from mpm_events import (
    ConsumerConfig,
    ConsumerPriority,
    Event,
    EventBus,
    HookEventProducer,
    IEventConsumer,
    SystemEventProducer,
)


class CustomConsumer(IEventConsumer):
    def __init__(self) -> None:
        self._config = ConsumerConfig(
            name="CustomConsumer",
            topics=["system.**"],  # Subscribe to system events
            priority=ConsumerPriority.NORMAL,
        )
        self._processed = 0
        self._healthy = False

    # The other required members, which the seed leaves as "Implement other
    # required methods...":

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return self._healthy

    async def initialize(self) -> bool:
        # Called by bus.subscribe(); False refuses the subscription.
        self._healthy = True
        return True

    async def consume(self, event: Event) -> bool:
        # Process event; False or an exception counts as a failure and is retried.
        print(f"Processing: {event.topic} - {event.type}")
        self._processed += 1
        return True

    async def consume_batch(self, events: list[Event]) -> int:
        # Used when config.batch_size > 1; returns how many events succeeded.
        ok = 0
        for event in events:
            ok += await self.consume(event)
        return ok

    async def shutdown(self) -> None:
        # Called by bus.unsubscribe() and bus.stop().
        self._healthy = False
        print(f"CustomConsumer shut down after {self._processed} events")

    def get_metrics(self) -> dict[str, Any]:
        return {"processed": self._processed}


async def run() -> int:
    bus = EventBus()
    await bus.start()
    try:
        if not await bus.subscribe(CustomConsumer()):
            print("subscribe refused", file=sys.stderr)
            return 1
        system = SystemEventProducer(bus, source_name="example")
        await system.publish_startup("example-service", "1.0.0", {"debug": False})
        await system.publish_health_status("example-service", "healthy", {"db": True})
        await system.publish_config_change("example-service", "log_level", "INFO", "DEBUG")
        # Not under system.**: routed to no consumer here.
        await HookEventProducer(bus).publish_response({"content": "not for CustomConsumer"})
        await bus.join(timeout=10)
        stats = bus.get_metrics()["consumer_stats"]["CustomConsumer"]
        print(f"CustomConsumer processed {stats['processed']}, failed {stats['failed']}")
    finally:
        await bus.stop()
    return 0


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
