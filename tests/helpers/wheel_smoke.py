"""Run by `make test-wheel` with the wheel installed in a clean virtualenv."""

import asyncio

import mpm_events
from mpm_events import ConsumerConfig, EventBus, HookEventProducer, IEventConsumer


class Count(IEventConsumer):
    def __init__(self) -> None:
        self.seen: list[str] = []
        self._config = ConsumerConfig(name="count", topics=["hook.**"])

    async def initialize(self) -> bool:
        return True

    async def consume(self, event) -> bool:
        self.seen.append(event.topic)
        return True

    async def consume_batch(self, events) -> int:
        return 0

    async def shutdown(self) -> None:
        pass

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return True

    def get_metrics(self) -> dict:
        return {}


async def main() -> None:
    bus = EventBus()
    await bus.start()
    consumer = Count()
    assert await bus.subscribe(consumer)
    assert await HookEventProducer(bus).publish_tool_use("Read", {"file_path": "/x"})
    await bus.join(timeout=10)
    await bus.stop()
    assert consumer.seen == ["hook.tool"], consumer.seen
    print(f"wheel ok: mpm_events {mpm_events.__version__} from {mpm_events.__file__}")


asyncio.run(main())
