"""Testing a producer with ``mpm_events.testing.RecordingBus``: no runtime, no sleeps.

``TestRunReporter`` is an application's own producer: it turns a test run's results
into events (``ci.test.passed`` / ``ci.test.failed``, failures CRITICAL) and a
summary. The checks below exercise it against a ``RecordingBus``, which validates
events and topics exactly like the real bus and records what was published. Run::

    python examples/testing_with_recording_bus.py

It prints ``PASS <check>`` for each check and exits 1 if one fails. The same
functions work as pytest tests (with ``@pytest.mark.asyncio`` under pytest-asyncio's
strict mode, or as they are with ``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from mpm_events import (
    ConsumerConfig,
    Event,
    EventPriority,
    IEventBus,
    IEventConsumer,
    IEventProducer,
)
from mpm_events.testing import RecordingBus


class TestRunReporter(IEventProducer):
    """Publishes one event per test result and a summary (the code under test)."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, event_bus: IEventBus, run_id: str) -> None:
        self.event_bus = event_bus
        self.run_id = run_id

    @property
    def source_name(self) -> str:
        return "ci"

    async def publish(self, event: Event) -> bool:
        return bool(await self.event_bus.publish(event))

    async def publish_batch(self, events: list[Event]) -> int:
        return sum([await self.publish(event) for event in events])

    async def report(self, results: dict[str, bool]) -> int:
        """Publishes the results; returns how many events the bus accepted."""
        events = [
            Event(
                topic=f"ci.test.{'passed' if ok else 'failed'}",
                type="TestResult",
                source=self.source_name,
                data={"test": name, "ok": ok},
                correlation_id=self.run_id,
                priority=EventPriority.NORMAL if ok else EventPriority.CRITICAL,
            )
            for name, ok in results.items()
        ]
        failed = sum(not ok for ok in results.values())
        events.append(
            Event(
                topic="ci.summary",
                type="TestSummary",
                source=self.source_name,
                data={"total": len(results), "failed": failed},
                correlation_id=self.run_id,
            )
        )
        return await self.publish_batch(events)


async def check_results_are_published() -> None:
    bus = RecordingBus()
    accepted = await TestRunReporter(bus, "run-1").report({"test_a": True, "test_b": False})
    assert accepted == 3, accepted
    assert bus.published_topics() == ["ci.test.passed", "ci.test.failed", "ci.summary"]
    [failure] = bus.find("ci.test.failed")
    assert failure.data == {"test": "test_b", "ok": False}
    assert failure.priority == EventPriority.CRITICAL
    assert all(event.correlation_id == "run-1" for event in bus.events)
    [summary] = bus.find("ci.*", type="TestSummary")
    assert summary.data == {"total": 2, "failed": 1}


async def check_a_refusing_bus_is_reported() -> None:
    # accept=False: the bus refuses every event, as a full or stopped bus does.
    bus = RecordingBus(accept=False)
    accepted = await TestRunReporter(bus, "run-2").report({"test_a": True})
    assert accepted == 0, accepted
    assert bus.events == []
    assert [event.topic for event in bus.refused] == ["ci.test.passed", "ci.summary"]


async def check_consumers_receive_failures_only() -> None:
    class FailureCollector(IEventConsumer):
        config = ConsumerConfig("failures", topics=["ci.test.failed"])
        is_healthy = True

        def __init__(self) -> None:
            self.seen: list[str] = []

        async def initialize(self) -> bool:
            return True

        async def consume(self, event: Event) -> bool:
            self.seen.append(event.data["test"])
            return True

        async def consume_batch(self, events: list[Event]) -> int:
            return len(events)

        async def shutdown(self) -> None:
            pass

        def get_metrics(self) -> dict[str, Any]:
            return {}

    # deliver=True: accepted events are also handed to matching consumers.
    bus = RecordingBus(deliver=True)
    collector = FailureCollector()
    await bus.subscribe(collector)
    await TestRunReporter(bus, "run-3").report({"a": False, "b": True, "c": False})
    assert collector.seen == ["a", "c"], collector.seen
    assert [(d.consumer, d.ok) for d in bus.deliveries] == [("failures", True)] * 2


CHECKS: list[Callable[[], Awaitable[None]]] = [
    check_results_are_published,
    check_a_refusing_bus_is_reported,
    check_consumers_receive_failures_only,
]


def main() -> int:
    failed = 0
    for check in CHECKS:
        try:
            asyncio.run(check())
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc()
        else:
            print(f"PASS {check.__name__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
