"""Worker threads for plain-function consumers (private).

Each ``def`` consumer runs in a daemon thread of its own, calling the consumer
(and its filter, transform and error handler) from Python frames; the atexit
stop joins idle workers before the interpreter goes away. Imports ``loop``.
"""

from __future__ import annotations

import atexit
import inspect
import threading
from typing import TYPE_CHECKING, Any

from mpm_events import _log
from mpm_events._bus.loop import describe, handler_failed, run_threadsafe

if TYPE_CHECKING:
    from mpm_events._core import _Job, _JobSource

logger = _log.logger()

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
            handler_failed(job.consumer_name, handler_exc)

    def prepare(event: Any) -> tuple[str, Any]:
        if filter_func is not None:
            try:
                if not filter_func(event):
                    return "filtered", None
            except Exception as exc:
                handle_error(event, exc)
                return "error", f"filter_func raised {describe(exc)}"
        if transform_func is not None:
            try:
                target = transform_func(event)
            except Exception as exc:
                handle_error(event, exc)
                return "error", f"transform_func raised {describe(exc)}"
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


# NOTE: atexit runs handlers last-registered first: this one is registered when
# this module is imported, which ``mpm_events._bus.control`` does before it
# registers its exit accounting, so the buses give up on what they hold before
# the worker threads are stopped.
atexit.register(_stop_workers)
