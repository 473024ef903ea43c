"""Shared pieces of the persistence tests (also imported by the crash-test child)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from mpm_events import ConsumerConfig, Event, IEventConsumer


class Recorder(IEventConsumer):
    """Records the ids it receives; optionally fails every event."""

    def __init__(self, name: str, topics: list[str] | None = None, fail: bool = False) -> None:
        self._config = ConsumerConfig(name=name, topics=topics or ["**"], max_retries=0)
        self.ids: list[str] = []
        self.events: list[Event] = []
        self.fail = fail

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Event) -> bool:
        if self.fail:
            raise RuntimeError("refused on purpose")
        self.ids.append(event.id)
        self.events.append(event)
        return True

    async def consume_batch(self, events: list[Event]) -> int:
        return sum([await self.consume(e) for e in events])

    async def shutdown(self) -> None:
        return None

    @property
    def is_healthy(self) -> bool:
        return True

    def get_metrics(self) -> dict[str, Any]:
        return {"received": len(self.ids)}

    def counts(self) -> Counter[str]:
        return Counter(self.ids)


async def wait_for(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``cond()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
