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
import weakref
from collections.abc import AsyncGenerator, Awaitable, Generator
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
    """Watch the bus's wake-up socket on ``loop``, and the loop's shutdown."""
    loop.add_reader(fd, _on_wake, bus, loop)
    _watch_loop(bus)
    _running_buses.add(bus)


def detach(fd: int, loop: asyncio.AbstractEventLoop) -> None:
    """Stop watching the wake-up socket."""
    if not loop.is_closed():
        loop.remove_reader(fd)


# NOTE: how a bus learns that its loop is going away. An async generator that a
# running loop has seen first-iterated is closed by ``loop.shutdown_asyncgens()``,
# which ``asyncio.run()`` (and uvloop, and every runner that follows the asyncio
# contract) calls before closing the loop; its ``finally`` then marks the bus's
# loop gone, at no cost per event. A loop closed without that step is caught by
# ``rebind_if_gone`` (``start``/``join``/``stop`` check ``is_closed()``).
_watches: dict[int, Any] = {}


async def _loop_watch(state: list[Any]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        ref = state[0]
        bus = ref() if ref is not None else None
        if bus is not None:
            bus._loop_closing()


def _close_watch(key: int, agen: Any, state: list[Any]) -> None:
    # NOTE: closing it ourselves (synchronously, with the callback disarmed)
    # keeps the loop's asyncgen finalizer from scheduling it on a closed loop.
    state[0] = None
    _watches.pop(key, None)
    try:
        agen.aclose().send(None)
    except (StopIteration, RuntimeError):
        pass


def _watch_loop(bus: EventBus) -> None:
    _unwatch(bus)
    state: list[Any] = [weakref.ref(bus)]
    agen = _loop_watch(state)
    try:
        agen.asend(None).send(None)  # runs to the yield; the loop now knows it
    except StopIteration:
        pass
    _watches[id(bus)] = weakref.finalize(bus, _close_watch, id(bus), agen, state)


def _unwatch(bus: EventBus) -> None:
    fin = _watches.pop(id(bus), None)
    if fin is not None:
        fin()


def rebind_if_gone(bus: EventBus, loop: asyncio.AbstractEventLoop) -> bool:
    """Rebind a running bus to ``loop`` if the loop that started it has closed or
    is not running (it would never run the bus's consumers while ``loop`` waits
    for them: a fixture started on another loop than the test's, a loop driven by
    ``run_until_complete`` between two runs)."""
    old = bus._bound_loop()
    if old is loop:
        return False
    if bus._loop_gone() or old is None or old.is_closed() or not old.is_running():
        _rebind(bus, loop)
        return True
    return False


def rebind(bus: EventBus) -> None:
    """The bus's loop has shut down: take over the running one, or say what to do."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "the event loop this EventBus was started on has closed; await bus.start() "
            "inside the new event loop before publishing (what was queued is delivered then)"
        ) from None
    _rebind(bus, loop)


def _rebind(bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
    old = bus._bound_loop()
    if old is not None:
        detach(bus._wake_fd(), old)
    loop.add_reader(bus._wake_fd(), _on_wake, bus, loop)
    _watch_loop(bus)
    bus._set_loop(loop)
    logger.info("Event bus rebound to a new event loop (the loop that started it closed)")


# ----- interpreter exit -----

# NOTE: a started bus is kept alive until stop(), as a running thread is: a bus
# that was only a local of the coroutine that started it must still account for
# its events at exit, not vanish with them.
_running_buses: set[EventBus] = set()


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


# NOTE: the Tasks running suspended consumer calls, so that a call the bus gives
# up on (stop past its deadline, unsubscribe) can be cancelled, not left running.
_job_tasks: dict[asyncio.Task[Any], _Job] = {}


def continue_job(job: _Job, awaitable: Awaitable[Any], timeout: float) -> None:
    """Finish a job whose consumer call suspended, in a Task of its own."""
    task = asyncio.ensure_future(_finish(job, awaitable, timeout))
    _keep(task)
    _job_tasks[task] = job
    task.add_done_callback(_forget_job)


def _forget_job(task: asyncio.Task[Any]) -> None:
    _job_tasks.pop(task, None)


def _cancel_abandoned() -> None:
    """Cancel the consumer calls of jobs the bus has closed (abandoned)."""
    for task, job in list(_job_tasks.items()):
        if job.finished and not task.done():
            task.cancel()


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

    if job.cut:
        job.cancel_rest()
        return
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
        if job.cut:
            # NOTE: the bus is stopping or the consumer left: start no new call.
            job.cancel_rest()
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


# NOTE: atexit runs handlers last-registered first: the buses give up on what
# they hold before the worker threads are stopped.
atexit.register(_stop_workers)
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
    try:
        await _maybe_await(consumer.shutdown())
    except Exception as exc:
        logger.error("Error shutting down consumer %s: %r", consumer_name, exc)
    return True


async def join(bus: EventBus, timeout: float | None = None) -> bool:
    """``EventBus.join``: wait until every accepted event is fully handled."""
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
    if bus.enable_persistence:
        # NOTE: publishes whose store write is in flight are dispatched before draining.
        await quiesce(bus)
    bus._begin_stop()
    try:
        await join(bus, timeout)
    except TimeoutError:
        await _give_up(bus, timeout)
    await _shutdown_consumers(bus)
    bus._close_log()
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
        await join(bus, grace)
    except TimeoutError:
        bus._abandon_in_flight(
            f"abandoned: still running when stop(timeout={timeout:g}) gave up on it"
        )
        _cancel_abandoned()
        try:
            await join(bus, 5.0)
        except TimeoutError as exc:  # pragma: no cover - every path above ends an event
            logger.error("mpm_events: %s after stop() gave up on every event", exc)
    after = bus._ended_counts()
    dead, released = after[0] - before[0], after[1] - before[1]
    where = []
    if dead:
        where.append(f"{dead} went to the dead letters (see get_dead_letters())")
    if released:
        where.append(f"{released} stay unacknowledged in the store for the next start")
    if where:
        logger.warning(
            "stop(timeout=%g): %d accepted event(s) were not handled in time: %s",
            timeout,
            dead + released,
            "; ".join(where),
        )


async def _shutdown_consumers(bus: EventBus) -> None:
    """Each consumer's ``shutdown()``; dead-letter consumers last, so they still
    receive what the others hand back at their shutdown (undelivered Socket.IO
    items)."""
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
