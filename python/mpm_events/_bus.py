"""Event-loop glue for the compiled bus (private).

The compiled ``EventBus`` keeps the data path in Rust; the few steps that
must await Python code (a consumer's ``initialize``/``shutdown``, waiting for
the bus to go idle) and the loop integration live here.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import datetime
import inspect
import threading
import types
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from mpm_events import _log

if TYPE_CHECKING:
    from mpm_events._core import EventBus, _Job, _JobSource

logger = _log.logger()

# NOTE: the event loop keeps only weak references to tasks; these are ours.
_tasks: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# ----- loop integration -----


def attach(bus: EventBus, fd: int, loop: asyncio.AbstractEventLoop) -> None:
    """Watch the bus's wake-up socket on ``loop``."""
    loop.add_reader(fd, _on_wake, bus, loop)


def detach(fd: int, loop: asyncio.AbstractEventLoop) -> None:
    """Stop watching the wake-up socket."""
    if not loop.is_closed():
        loop.remove_reader(fd)


def _on_wake(bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
    bus._drain_wakeups()
    # NOTE: the jobs run inside a Task (one per wake-up, not per event) so that
    # consumer code sees a current task, as it would under the original bus.
    _keep(loop.create_task(_pump(bus)))


async def _pump(bus: EventBus) -> None:
    try:
        bus._run_pending()
    except Exception:
        logger.exception("mpm_events: internal error while delivering events")


@types.coroutine
def resume_from(it: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """Continue an awaitable that already yielded ``yielded`` once.

    The bus steps each consumer coroutine by hand; when one suspends, this
    generator hands the rest of it to a real Task (PEP 380 delegation).
    """
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            raise
        except BaseException as exc:
            try:
                yielded = it.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = it.send(sent)
            except StopIteration as stop:
                return stop.value


def continue_job(job: _Job, awaitable: Awaitable[Any], timeout: float) -> None:
    """Finish a job whose consumer call suspended, in a Task of its own."""
    _keep(asyncio.ensure_future(_finish(job, awaitable, timeout)))


async def _finish(job: _Job, awaitable: Awaitable[Any] | None, timeout: float) -> None:
    while awaitable is not None:
        try:
            async with asyncio.timeout(timeout) as deadline:
                result = await awaitable
        except TimeoutError:
            if deadline.expired():
                exc = TimeoutError(f"consume timed out after {timeout:g}s")
            awaitable = job.resume(None, exc)
        except asyncio.CancelledError:
            job.abandon("delivery cancelled")
            raise
        except Exception as exc:
            awaitable = job.resume(None, exc)
        else:
            awaitable = job.resume(result)


def spawn(awaitable: Awaitable[Any], consumer: str) -> None:
    """Run an error handler's remaining work without blocking delivery."""

    async def run() -> None:
        try:
            await awaitable
        except Exception as exc:
            logger.error("error_handler of consumer %r raised %r", consumer, exc)

    _keep(asyncio.ensure_future(run()))


def run_threadsafe(
    awaitable: Awaitable[Any], loop: asyncio.AbstractEventLoop, timeout: float
) -> Any:
    """From a worker thread: run ``awaitable`` on ``loop`` and wait for it."""

    async def run() -> Any:
        return await awaitable

    fut = asyncio.run_coroutine_threadsafe(run(), loop)
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"consume timed out after {timeout:g}s") from None


# ----- worker threads for plain-function consumers -----

_workers: dict[threading.Thread, _JobSource] = {}
_workers_lock = threading.Lock()


def start_sync_worker(source: _JobSource, name: str) -> None:
    """Start the daemon thread that runs a plain-function consumer's jobs."""
    thread = threading.Thread(target=sync_worker, args=(source,), name=name, daemon=True)
    with _workers_lock:
        _workers[thread] = source
    thread.start()


def sync_worker(source: _JobSource) -> None:
    """Run jobs until the lane closes.

    The consumer is called from these Python frames (never from inside Rust), so
    a consumer still busy when the interpreter exits is stopped like any daemon
    thread.
    """
    consume, consume_batch, filter_func, transform_func, error_handler, timeout = source.callables()
    try:
        while True:
            job = source.next_job()
            if job is None:
                return
            try:
                _run_sync_job(
                    job, source, consume, consume_batch, filter_func, transform_func,
                    error_handler, timeout,
                )  # fmt: skip
            except Exception as exc:  # an internal error must not kill the worker
                logger.exception("mpm_events: internal error in a worker thread")
                job.abandon(f"internal error: {exc!r}")
    finally:
        with _workers_lock:
            _workers.pop(threading.current_thread(), None)


def _await_result(value: Any, source: _JobSource, timeout: float) -> Any:
    if inspect.isawaitable(value):
        loop = source.event_loop()
        if loop is None:
            raise RuntimeError("the consumer returned an awaitable but the bus has no event loop")
        return run_threadsafe(value, loop, timeout)
    return value


def _run_sync_job(
    job: _Job,
    source: _JobSource,
    consume: Any,
    consume_batch: Any,
    filter_func: Any,
    transform_func: Any,
    error_handler: Any,
    timeout: float,
) -> None:
    def handle_error(event: Any, exc: BaseException) -> None:
        if error_handler is None:
            return
        try:
            _await_result(error_handler(event, exc), source, timeout)
        except Exception as handler_exc:
            logger.error("error_handler of consumer %r raised %r", job.consumer_name, handler_exc)

    def prepare(event: Any) -> tuple[str, Any]:
        if filter_func is not None:
            try:
                if not filter_func(event):
                    return "filtered", None
            except Exception as exc:
                handle_error(event, exc)
                return "error", f"filter_func raised {type(exc).__name__}: {exc}"
        if transform_func is not None:
            try:
                target = transform_func(event)
            except Exception as exc:
                handle_error(event, exc)
                return "error", f"transform_func raised {type(exc).__name__}: {exc}"
            if target is None:
                handle_error(event, TypeError("transform_func returned None"))
                return "error", "transform_func returned None instead of an event"
            return "ok", target
        return "ok", event

    events = job.events()
    if job.batch:
        pre: list[str | None] = []
        targets = []
        for event in events:
            kind, value = prepare(event)
            if kind == "ok":
                pre.append(None)
                targets.append(value)
            else:
                pre.append("filtered" if kind == "filtered" else value)
        if not targets:
            job.record_batch(pre, 0)
            return
        try:
            result = _await_result(consume_batch(targets), source, timeout)
        except Exception as exc:
            handle_error(events[pre.index(None)], exc)
            job.record_batch(pre, None, exc)
        else:
            job.record_batch(pre, result)
        return
    for event in events:
        if job.finished:
            return
        kind, value = prepare(event)
        if kind == "filtered":
            job.record_filtered()
            continue
        if kind == "error":
            job.record_failure(value)
            continue
        try:
            result = _await_result(consume(value), source, timeout)
        except Exception as exc:
            job.record_error(exc, "consume()")
            handle_error(event, exc)
        else:
            job.record_value(result)
    job.finish()


@atexit.register
def _stop_workers() -> None:
    # NOTE: runs before interpreter finalization: idle workers leave their wait
    # (they poll a closed flag) and are joined, so no thread is inside Rust code
    # when the interpreter goes away. A worker still busy in a consumer is left
    # to die in Python frames, as any daemon thread does.
    with _workers_lock:
        workers = list(_workers.items())
    for _, source in workers:
        source.close()
    for thread, _ in workers:
        thread.join(timeout=0.5)


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
    consumer = bus._unregister(consumer_name)
    if consumer is None:
        logger.warning("Consumer %s not found", consumer_name)
        return False
    try:
        await _maybe_await(consumer.shutdown())
    except Exception as exc:
        logger.error("Error shutting down consumer %s: %r", consumer_name, exc)
    return True


async def join(bus: EventBus, timeout: float | None = None) -> bool:
    """``EventBus.join``: wait until every accepted event is fully handled."""
    if bus._is_idle():
        return True
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
    logger.info("Stopping event bus")
    if bus.enable_persistence:
        # NOTE: publishes whose store write is in flight are dispatched before draining.
        await quiesce(bus)
    bus._begin_stop()
    try:
        await join(bus, timeout)
    except TimeoutError as exc:
        logger.warning("%s; what is still queued goes to the dead-letter queue", exc)
        bus._abort_pending()
    for consumer in bus.get_consumers():
        try:
            await _maybe_await(consumer.shutdown())
        except Exception as exc:
            logger.error("Error shutting down consumer %s: %r", consumer.config.name, exc)
    if bus.enable_persistence:
        await asyncio.to_thread(bus.flush_persistence)
    bus._detach()
    logger.info("Event bus stopped")


async def to_thread(fn: Any) -> Any:
    """Run a blocking call (a Rust consumer's flush) on the default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# ----- persistence (enable_persistence=True; see docs/persistence.md) -----


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


async def replay(bus: EventBus, since: Any, until: Any, topics: Any, to: Any) -> int:
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
        bus._persist_replay_read, _to_us(since, "since"), _to_us(until, "until"), topics, name
    )
    n = batch.remaining
    await _push_all(bus, batch)
    return n
