"""Persistence flows (private; ``enable_persistence=True``, see docs/persistence.md).

Counting accepted durable publishes, closing the publish gate before a stop,
redelivering what consumers left unacknowledged and replaying stored events.
Imports ``loop``.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from mpm_events import _log
from mpm_events._bus.loop import _keep

if TYPE_CHECKING:
    from mpm_events._core import EventBus

logger = _log.logger()


async def count_true(awaitables: list[Any]) -> int:
    """``publish_batch`` with persistence: how many of the publishes were accepted."""
    return sum(1 for ok in await asyncio.gather(*awaitables) if ok)


async def quiesce(bus: EventBus) -> None:
    """Refuse new publishes and wait until every store write in flight is answered."""
    fut = asyncio.get_running_loop().create_future()
    bus._persist_close_gate(fut)
    await fut


async def _push_all(bus: EventBus, batch: Any) -> None:
    """Push stored events into the engine as the queue bound allows."""
    while batch.remaining:
        bus._persist_push(batch)
        if batch.remaining:
            # NOTE: the queue is full; let consumers make room.
            await asyncio.sleep(0.002)


async def redeliver(bus: EventBus, names: list[str], upto: int) -> int:
    """Deliver again every stored event (seq <= ``upto``) one of ``names`` has not acked."""
    batch = await asyncio.to_thread(bus._persist_unacked, names, upto)
    n = batch.remaining
    if n:
        logger.info("Redelivering %d unacknowledged stored event(s) to %s", n, ", ".join(names))
    await _push_all(bus, batch)
    return n


def start_redelivery(bus: EventBus, names: list[str], upto: int) -> None:
    """At ``start()``: redeliver in the background to the consumers subscribed before
    (``join()`` waits for it)."""

    async def run() -> None:
        try:
            await redeliver(bus, names, upto)
        except Exception:
            logger.exception("mpm_events: redelivering stored events failed")
        finally:
            bus._persist_redelivery_done()

    _keep(asyncio.get_running_loop().create_task(run()))


def _to_us(dt: Any, what: str) -> int | None:
    if dt is None:
        return None
    if not isinstance(dt, datetime.datetime):
        raise TypeError(f"replay(): {what} must be a datetime or None, got {type(dt).__name__}")
    if dt.tzinfo is None:
        # NOTE: naive datetimes are UTC, as for event timestamps.
        dt = dt.replace(tzinfo=datetime.UTC)
    delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


async def replay(
    bus: EventBus, since: Any, until: Any, topics: Any, to: Any, rule: Any = None
) -> int:
    """``EventBus.replay``: re-deliver stored events, in order, to one consumer."""
    if to is None:
        raise TypeError("replay() needs to= (a subscribed consumer or its name)")
    name = to if isinstance(to, str) else to.config.name
    if not bus.is_running:
        raise RuntimeError("replay() needs a running bus")
    if bus._topics(name) is None:
        raise ValueError(f"replay(): consumer {name!r} is not subscribed")
    if isinstance(topics, str):
        topics = [topics]
    topics = list(topics) if topics is not None else None
    batch = await asyncio.to_thread(
        bus._persist_replay_read,
        _to_us(since, "since"),
        _to_us(until, "until"),
        topics,
        name,
        rule,
    )
    n = batch.remaining
    await _push_all(bus, batch)
    return n
