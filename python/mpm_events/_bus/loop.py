"""Loop glue for the compiled bus (private).

Watching the bus's wake-up socket on its event loop and rebinding when that loop
goes away, the one pump per bus that runs what each wake-up finds, the Tasks
that finish consumer coroutines that suspended, and running an awaitable on the
loop from another thread. The bottom layer of ``mpm_events._bus``: it imports no sibling.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import types
import weakref
from collections.abc import AsyncGenerator, Awaitable, Generator
from typing import TYPE_CHECKING, Any

from mpm_events import _log

if TYPE_CHECKING:
    from mpm_events._core import EventBus, _Job

logger = _log.logger()

# NOTE: private asyncio functions (CPython 3.7 to 3.14, C-accelerated): what a Task
# does around each step to be the current task. Without them the pump runs in a
# Task of its own (see _Pump).
try:
    from asyncio.tasks import _enter_task, _leave_task

    _HAVE_ENTER_TASK = True
except ImportError:  # pragma: no cover - a Python that dropped them
    _HAVE_ENTER_TASK = False

# NOTE: the event loop keeps only weak references to tasks; these are ours.
_tasks: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


# ----- loop integration -----


def attach(bus: EventBus, fd: int, loop: asyncio.AbstractEventLoop) -> None:
    """Watch the bus's wake-up socket on ``loop``, and the loop's shutdown."""
    _start_pump(bus, fd, loop)
    _watch_loop(bus)
    _running_buses.add(bus)


def detach(fd: int, loop: asyncio.AbstractEventLoop) -> None:
    """Stop watching the wake-up socket, and end the bus's pump (its Tasks)."""
    pump = _pumps.pop(fd, None)
    if pump is not None:
        pump.close()
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


def rebind(bus: EventBus) -> bool:
    """The bus's loop has shut down: take over the running one; False if no loop
    runs here (the caller decides whether the event can go on without one)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    _rebind(bus, loop)
    return True


def _rebind(bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
    old = bus._bound_loop()
    if old is not None:
        detach(bus._wake_fd(), old)
    _start_pump(bus, bus._wake_fd(), loop)
    _watch_loop(bus)
    bus._set_loop(loop)
    logger.info("Event bus rebound to a new event loop (the loop that started it closed)")


# NOTE: a started bus is kept alive until stop(), as a running thread is: a bus
# that was only a local of the coroutine that started it must still account for
# its events at exit, not vanish with them.
_running_buses: set[EventBus] = set()


class _Pump:
    """Runs the jobs each wake-up finds, one run per wake-up, with a Task of the bus
    as the current task (consumer code so sees one, as it would under the original
    bus).

    Woken two ways: the bus's wake-up socket turning readable (a thread without the
    GIL queued work), or ``wake()`` called by the compiled bus at the end of a
    publish made on this loop's thread, which costs no system call and no selector
    round (W13, issue 16).

    On asyncio's own loops a run is one reusable ``Handle`` put on the loop's ready
    queue, and the bus's Task (``holder``, which only waits) is entered as the current
    task around it (``asyncio.tasks._enter_task``). Elsewhere (uvloop and other loops
    without a ``_ready`` deque) a Task runs the jobs and waits on a Future between
    runs. Either way, a consumer that cancels the current task ends that Task, and the
    next run takes another.
    """

    __slots__ = ("bus", "fut", "handle", "holder", "loop", "ready", "scheduled", "task")

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        self.bus: EventBus | None = bus
        self.loop = loop
        self.fut: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.holder: asyncio.Task[None] | None = None
        # NOTE: a paced publish's wake-up through a Future cost a Python-level
        # call_soon (a new Handle), the Task's wake-up and step and a new Future:
        # about 10k of the ~41k instructions an event cost at 100/s (callgrind,
        # W13). The ready queue is a private detail of asyncio's BaseEventLoop, so it
        # is used only where it is the deque call_soon itself appends to.
        ready = getattr(loop, "_ready", None)
        self.ready: collections.deque[Any] | None = (
            ready
            if _HAVE_ENTER_TASK
            and isinstance(loop, asyncio.BaseEventLoop)
            and isinstance(ready, collections.deque)
            else None
        )
        self.handle = asyncio.Handle(self._run_once, (), loop)
        self.scheduled = False

    def wake(self) -> bool:
        """Have the bus's jobs run soon; False if it cannot (loop closed)."""
        if self.ready is not None:
            if self.scheduled:
                return True
            if self.bus is None or self.loop.is_closed():
                return False
            self.scheduled = True
            self.ready.append(self.handle)
            return True
        fut = self.fut
        if fut is not None:
            try:
                if not fut.done():
                    fut.set_result(None)
                elif fut.cancelled():
                    # NOTE: the Task is ending (cancelled) and will not look at
                    # the inbox again: start another once it has.
                    self.loop.call_soon(self.wake)
            except RuntimeError:  # the loop closed
                return False
            return True
        task = self.task
        if task is not None and not task.done():
            return True  # it is about to run (or running) and re-checks the inbox
        if self.bus is None or self.loop.is_closed():
            return False
        task = self.loop.create_task(self._run(), name="mpm_events pump")
        # NOTE: a loop closed without cancelling its tasks drops this one pending,
        # which is harmless here: asyncio's warning would only be noise.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        _keep(task)
        self.task = task
        return True

    def on_readable(self) -> None:
        bus = self.bus
        if bus is not None:
            bus._drain_wakeups()
            self.wake()

    def close(self) -> None:
        """End the Task (the bus stopped or moved to another loop)."""
        self.bus = None
        for task in (self.task, self.holder):
            if task is not None and not task.done() and not self.loop.is_closed():
                task.cancel()
        self.task = self.holder = None

    def _run_once(self) -> None:
        """One run on the ready queue, the holder Task entered as the current task."""
        self.scheduled = False
        bus = self.bus
        if bus is None:
            return
        holder = self.holder
        if holder is None or holder.done() or holder.cancelling():
            holder = self.holder = self.loop.create_task(_hold(), name="mpm_events pump")
            holder._log_destroy_pending = False  # type: ignore[attr-defined]
            _keep(holder)
        _enter_task(self.loop, holder)
        try:
            bus._run_pending()
        except Exception:
            logger.exception("mpm_events: internal error while delivering events")
        finally:
            _leave_task(self.loop, holder)

    async def _run(self) -> None:
        loop = self.loop
        try:
            while (bus := self.bus) is not None:
                try:
                    bus._run_pending()
                except Exception:
                    logger.exception("mpm_events: internal error while delivering events")
                del bus
                fut = self.fut = loop.create_future()
                await fut
        finally:
            self.fut = None


async def _hold() -> None:
    """The body of a pump's holder Task: it only waits (until cancelled)."""
    await asyncio.get_running_loop().create_future()


# NOTE: by wake-up descriptor, so that ``detach(fd, loop)`` finds the pump.
_pumps: dict[int, _Pump] = {}


def _start_pump(bus: EventBus, fd: int, loop: asyncio.AbstractEventLoop) -> None:
    old = _pumps.pop(fd, None)
    if old is not None:
        old.close()
    pump = _Pump(bus, loop)
    _pumps[fd] = pump
    loop.add_reader(fd, pump.on_readable)
    bus._set_pump(pump.wake)
    # NOTE: a wake-up the previous loop's pump took but never ran (that loop shut
    # down first) left the bus's pending flag set and wrote no byte: run once now.
    pump.wake()


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


def describe(exc: BaseException) -> str:
    """An exception as the Rust executor writes it in failure messages: ``Type:
    message``, or only ``Type`` when the message is empty."""
    try:
        msg = str(exc)
    except Exception:
        msg = ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _quoted(name: str) -> str:
    # NOTE: as Rust's {:?} quotes a str (the executor's log lines quote names so).
    body = "".join(
        _ESCAPES.get(c) or (c if c.isprintable() else f"\\u{{{ord(c):x}}}") for c in name
    )
    return f'"{body}"'


def handler_failed(consumer: str, exc: BaseException) -> None:
    """Log that a consumer's error_handler raised, in the Rust executor's words."""
    logger.error("error_handler of consumer %s raised %s", _quoted(consumer), describe(exc))


def spawn(awaitable: Awaitable[Any], consumer: str) -> None:
    """Run an error handler's remaining work without blocking delivery."""

    async def run() -> None:
        try:
            await awaitable
        except Exception as exc:
            handler_failed(consumer, exc)

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
