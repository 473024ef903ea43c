"""The control plane of the compiled bus (private).

The steps of ``subscribe``/``unsubscribe``/``join``/``stop`` that must await
Python code (a consumer's ``initialize``/``shutdown``, waiting for the bus to go
idle), giving up at ``stop(timeout)``, and accounting at interpreter exit for
what running buses still hold. Imports ``loop``, ``durable`` and ``workers``.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
from typing import TYPE_CHECKING, Any

from mpm_events import _log

# NOTE: importing workers registers its atexit stop before _at_exit below is
# registered (atexit is LIFO: the exit accounting must run first).
from mpm_events._bus import workers as _workers  # noqa: F401
from mpm_events._bus.durable import quiesce, redeliver
from mpm_events._bus.loop import _cancel_abandoned, _running_buses, _unwatch, rebind_if_gone

if TYPE_CHECKING:
    from mpm_events._core import EventBus

logger = _log.logger()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# ----- interpreter exit -----


def _at_exit() -> None:
    """Account for what running buses still hold when the interpreter exits."""
    for bus in list(_running_buses):
        try:
            dead, released = bus._at_exit()
        except Exception:
            logger.exception("mpm_events: accounting for undelivered events at exit failed")
            continue
        if not dead and not released:
            continue
        where = []
        if dead:
            files = bus._dead_letter_files()
            target = f" (written to {', '.join(files)})" if files else ""
            where.append(f"{dead} dead-lettered{target}")
        if released:
            where.append(f"{released} left unacknowledged in the store for redelivery")
        logger.warning(
            "Interpreter exiting with the event bus still running (stop() was not awaited): "
            "%d accepted event(s) were not delivered: %s",
            dead + released,
            "; ".join(where),
        )


atexit.register(_at_exit)


# ----- control plane -----


async def subscribe(bus: EventBus, consumer: Any) -> bool:
    """``EventBus.subscribe``: validate, ``initialize()``, then register."""
    name = bus._prepare(consumer)
    if name is None:
        return False
    try:
        ok = await _maybe_await(consumer.initialize())
    except Exception as exc:
        logger.error("Error initializing consumer %s: %r", name, exc)
        return False
    if not ok:
        logger.error("Failed to initialize consumer %s", name)
        return False
    # NOTE: read before the consumer is routed to: later seqs are live events for it.
    upto = bus._persist_watermark() if bus.enable_persistence else 0
    if not bus._register(consumer):
        return False
    if bus.enable_persistence and bus.is_running:
        # NOTE: a consumer subscribing to a running bus gets what it left unacknowledged.
        await redeliver(bus, [name], upto)
    return True


async def unsubscribe(bus: EventBus, consumer_name: str) -> bool:
    """``EventBus.unsubscribe``: deregister, then ``shutdown()``."""
    if not isinstance(consumer_name, str):
        raise TypeError(
            f"unsubscribe() expects a consumer name (str), got {type(consumer_name).__name__}"
        )
    found = bus._unregister(consumer_name)
    if found is None:
        logger.warning("Consumer %s not found", consumer_name)
        return False
    consumer, leaving = found
    # NOTE: no consume call starts after this point; one still running is awaited
    # up to its timeout (and a second of grace), then abandoned and counted.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + leaving.timeout + 1.0
    while leaving.busy():
        if loop.time() >= deadline:
            leaving.abandon("abandoned: still running when the consumer was unsubscribed")
            _cancel_abandoned()
            break
        await asyncio.sleep(0.005)
    if bus.backend is not None:
        # NOTE: acks written, claims still held released to the consumer name's
        # other instances (or its next subscription).
        await asyncio.to_thread(bus._log_stop_reader, consumer_name)
    try:
        await _maybe_await(consumer.shutdown())
    except Exception as exc:
        logger.error("Error shutting down consumer %s: %r", consumer_name, exc)
    return True


async def join(bus: EventBus, timeout: float | None = None) -> bool:
    """``EventBus.join``: wait until every accepted event is fully handled (on a
    shared-log bus: until this bus's consumers handled everything in the log as of
    the call)."""
    if bus.backend is not None:
        return await _log_join(bus, timeout)
    return await _join_idle(bus, timeout)


async def _log_join(bus: EventBus, timeout: float | None) -> bool:
    """``join`` on a shared-log bus: this bus's appends answered, then every consumer
    name of this bus at or past the log's last entry of now, nothing pending."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    await _join_idle(bus, timeout)
    upto = await asyncio.to_thread(bus._log_last)
    delay = 0.002
    while not await asyncio.to_thread(bus._log_caught_up, upto):
        if deadline is not None and loop.time() >= deadline:
            raise TimeoutError(
                f"join() timed out after {timeout:g}s: this bus's consumers have not "
                f"handled every event of the shared log up to entry {upto[0] if upto else 0}"
            )
        # NOTE: the readers acknowledge in rounds (about every 100 ms); poll gently.
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


async def _join_idle(bus: EventBus, timeout: float | None = None) -> bool:
    """Wait until every event accepted by this bus's engine is fully handled."""
    if bus._is_idle():
        return True
    rebind_if_gone(bus, asyncio.get_running_loop())
    fut = asyncio.get_running_loop().create_future()
    bus._add_idle_waiter(fut)
    try:
        await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        raise TimeoutError(
            f"join() timed out after {timeout:g}s with {bus._outstanding()} event(s)"
            " not yet handled"
        ) from None
    return True


async def stop(bus: EventBus, timeout: float | None = None) -> None:
    """``EventBus.stop``: drain, wait (up to ``timeout``), then shut consumers down."""
    if not bus.is_running:
        return
    rebind_if_gone(bus, asyncio.get_running_loop())
    logger.info("Stopping event bus")
    # NOTE: the monitor (serve_monitor) stops with the bus: its streams end first.
    bus.stop_monitor()
    if bus.backend is not None:
        # NOTE: no new publishes, and the readers claim nothing more; what they
        # delivered is handled below, what a stop gives up on stays in the log.
        bus._log_begin_stop()
    if bus.enable_persistence:
        # NOTE: publishes whose store write is in flight are dispatched before draining.
        await quiesce(bus)
    bus._begin_stop()
    try:
        await _join_idle(bus, timeout)
    except TimeoutError:
        await _give_up(bus, timeout)
    await _shutdown_consumers(bus)
    bus._close_log()
    if bus.backend is not None:
        await asyncio.to_thread(bus._log_close)
    if bus.enable_persistence:
        await asyncio.to_thread(bus.flush_persistence)
    bus._detach()
    _unwatch(bus)
    _running_buses.discard(bus)
    logger.info("Event bus stopped")


async def _give_up(bus: EventBus, timeout: float | None) -> None:
    """``stop(timeout)`` past its deadline: account for everything not yet handled."""
    before = bus._ended_counts()
    # NOTE: waiting and unstarted events are given up on now (dead letters, or the
    # store on a durable bus); a call already running ends by its own timeout.
    bus._abort_pending()
    # NOTE: a call still running gets up to `timeout` more seconds (never more
    # than its own consumer timeout), then it is abandoned: a coroutine is
    # cancelled, a thread's result ignored, and the attempt counted as failed.
    grace = min(bus._call_grace(), max(timeout or 0.0, 0.5))
    try:
        await _join_idle(bus, grace)
    except TimeoutError:
        bus._abandon_in_flight(
            f"abandoned: still running when stop(timeout={timeout:g}) gave up on it"
        )
        _cancel_abandoned()
        try:
            await _join_idle(bus, 5.0)
        except TimeoutError as exc:  # pragma: no cover - every path above ends an event
            logger.error("mpm_events: %s after stop() gave up on every event", exc)
    after = bus._ended_counts()
    dead, released = after[0] - before[0], after[1] - before[1]
    where = []
    if dead:
        where.append(f"{dead} went to the dead letters (see get_dead_letters())")
    if released:
        where.append(
            f"{released} stay unacknowledged in the store for the next start"
            if bus.backend is None
            else f"{released} stay in the shared log for their consumer names"
        )
    if where:
        logger.warning(
            "stop(timeout=%g): %d accepted event(s) were not handled in time: %s",
            timeout,
            dead + released,
            "; ".join(where),
        )


async def _shutdown_consumers(bus: EventBus) -> None:
    """Each consumer's ``shutdown()``; dead-letter consumers last, so they are still
    open for any dead letter queued while the others shut down."""
    from mpm_events._core import DeadLetterConsumer

    consumers = bus.get_consumers()
    ordered = [c for c in consumers if not isinstance(c, DeadLetterConsumer)]
    ordered += [c for c in consumers if isinstance(c, DeadLetterConsumer)]
    for i, consumer in enumerate(ordered):
        if isinstance(consumer, DeadLetterConsumer) and (
            i == 0 or not isinstance(ordered[i - 1], DeadLetterConsumer)
        ):
            # NOTE: run the dead letters queued for the loop by earlier shutdowns.
            bus._run_pending()
        try:
            await _maybe_await(consumer.shutdown())
        except Exception as exc:
            logger.error("Error shutting down consumer %s: %r", consumer.config.name, exc)


async def to_thread(fn: Any) -> Any:
    """Run a blocking call (a Rust consumer's flush) on the default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)
