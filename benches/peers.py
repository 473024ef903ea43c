"""The floor and the peer buses for W1, W1d and W2 (issue 16).

- **floor**: no bus at all. A plain Python loop awaits a producer function that builds
  the same event (a dict with the same payload dict ``publish_tool_use`` builds) and then
  awaits each consumer's coroutine directly. It is the floor of any in-process bus that
  delivers a Python event to a Python coroutine (not the cost of an empty ``await``).
- **pyee**: ``pyee.asyncio.AsyncIOEventEmitter``, the emitter claude-mpm uses in
  production, one async handler per consumer (pyee schedules each call as a Task).
- **bubus**: ``bubus.EventBus`` with a ``BaseEvent`` subclass per tool use and one async
  handler per consumer, in its documented configuration that accepts a stream of
  100,000 events: ``max_history_size=None`` (its default keeps 50 events and refuses
  more than 100 pending ones), awaited with ``wait_until_idle()``.

Each consumer counts the events it got and, for W1d, reads ``data["tool"]``; the
consumer on ``system.**`` (W2) must see nothing. As in ``workloads.hook_stream``,
timing runs from the first publish until every matching consumer counted every event.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from typing import Any

from workloads import MATCHING_PATTERNS, Tracker, _wait

FLOOR, PYEE, BUBUS = "floor", "pyee", "bubus"
PEERS = (FLOOR, PYEE, BUBUS)


def available(name: str) -> str | None:
    """None when peer ``name`` can run here, else why not."""
    if name == FLOOR:
        return None
    try:
        if name == PYEE:
            import pyee.asyncio  # noqa: F401
        else:
            import bubus  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the venv
        return f"{type(exc).__name__}: {exc}"
    return None


def version(name: str) -> str | None:
    import importlib.metadata

    if name == FLOOR:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class PeerConsumer:
    """Counts events (dicts, or bubus events with a ``data`` field); sets the tracker."""

    def __init__(self, target: int, tracker: Tracker, read_data: bool) -> None:
        self.count = 0
        self.tools = 0
        self.target = target
        self.tracker = tracker
        self.read_data = read_data

    async def consume(self, event: Any) -> bool:
        if self.read_data and event["data"]["tool"] == "Bash":
            self.tools += 1
        self.count += 1
        if self.count == self.target:
            self.tracker.one_done()
        return True

    async def consume_bubus(self, event: Any) -> bool:
        if self.read_data and event.data["tool"] == "Bash":
            self.tools += 1
        self.count += 1
        if self.count == self.target:
            self.tracker.one_done()
        return True


def _consumers(
    n_events: int, patterns: list[str], read_data: bool
) -> tuple[Tracker, list[tuple[str, PeerConsumer]]]:
    matching = [p for p in patterns if p in MATCHING_PATTERNS]
    tracker = Tracker(len(matching))
    out = []
    for pattern in patterns:
        target = n_events if pattern in MATCHING_PATTERNS else 0
        out.append((pattern, PeerConsumer(target, tracker, read_data)))
    return tracker, out


def _check(consumers: list[tuple[str, PeerConsumer]], read_data: bool) -> None:
    wrong = [(p, c.count) for p, c in consumers if c.count != c.target]
    wrong += [(p, c.tools) for p, c in consumers if read_data and c.tools != c.target]
    if wrong:
        raise RuntimeError(f"unexpected delivery counts (pattern, count): {wrong}")


def _result(n_events: int, seconds: float, deliveries: int) -> dict[str, Any]:
    return {
        "n_events": n_events,
        "seconds": seconds,
        "value": n_events / seconds,
        "deliveries_per_s": n_events * deliveries / seconds,
    }


async def floor_stream(n_events: int, patterns: list[str], read_data: bool = False) -> dict:
    """The floor: build the event in an awaited producer function, await each consumer."""
    tracker, consumers = _consumers(n_events, patterns, read_data)
    # NOTE: routing is not part of the floor: only the consumers whose pattern matches
    # `hook.tool` are awaited (the one on system.** sees nothing, as with a bus).
    consume = [c.consume for p, c in consumers if p in MATCHING_PATTERNS]

    async def publish_tool_use(
        tool_name: str, tool_params: dict, tool_result: Any = None
    ) -> dict[str, Any]:
        return {
            "topic": "hook.tool",
            "type": "ToolUse",
            "source": "hook_handler",
            "data": {"tool": tool_name, "params": tool_params, "result": tool_result},
        }

    gc.collect()
    t0 = time.perf_counter()
    for i in range(n_events):
        event = await publish_tool_use("Bash", {"command": "ls -la", "n": i})
        for c in consume:
            await c(event)
    await _wait(tracker, "floor")
    seconds = time.perf_counter() - t0
    _check(consumers, read_data)
    return _result(n_events, seconds, len(consume))


async def pyee_stream(n_events: int, patterns: list[str], read_data: bool = False) -> dict:
    """pyee's AsyncIOEventEmitter: the event name is the topic; one handler per consumer."""
    from pyee.asyncio import AsyncIOEventEmitter

    ee = AsyncIOEventEmitter()
    tracker, consumers = _consumers(n_events, patterns, read_data)
    errors: list[BaseException] = []
    ee.on("error", errors.append)
    for pattern, c in consumers:
        # NOTE: pyee has no wildcards: the matching consumers listen on the topic, the
        # system.** one on a name nothing emits.
        ee.on("hook.tool" if pattern in MATCHING_PATTERNS else "system", c.consume)

    async def publish_tool_use(tool_name: str, tool_params: dict, tool_result: Any = None) -> bool:
        event = {
            "topic": "hook.tool",
            "type": "ToolUse",
            "source": "hook_handler",
            "data": {"tool": tool_name, "params": tool_params, "result": tool_result},
        }
        return ee.emit("hook.tool", event)

    gc.collect()
    t0 = time.perf_counter()
    for i in range(n_events):
        if not await publish_tool_use("Bash", {"command": "ls -la", "n": i}):
            raise RuntimeError("pyee: no handler for hook.tool")
        # NOTE: each emit schedules a Task per handler; yield now and then so they run
        # during the stream rather than all at the end (as a real producer would).
        if i % 100 == 99:
            await asyncio.sleep(0)
    await _wait(tracker, "pyee")
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"pyee handler failed: {errors[0]!r}")
    _check(consumers, read_data)
    return _result(n_events, seconds, len([p for p in patterns if p in MATCHING_PATTERNS]))


async def bubus_stream(n_events: int, patterns: list[str], read_data: bool = False) -> dict:
    """bubus: a ``ToolUse`` event class, one handler per consumer, unbounded history."""
    from bubus import BaseEvent, EventBus

    class ToolUse(BaseEvent):  # type: ignore[misc]
        topic: str = "hook.tool"
        source: str = "hook_handler"
        data: dict

    # NOTE: bubus's default max_history_size=50 refuses a publish while more than 100
    # events are pending; None (documented: unlimited history) accepts the stream.
    bus = EventBus(name="bench", max_history_size=None)
    tracker, consumers = _consumers(n_events, patterns, read_data)
    with warnings.catch_warnings():
        # NOTE: bubus warns that every consumer's handler has the same name.
        warnings.simplefilter("ignore")
        for pattern, c in consumers:
            name = "ToolUse" if pattern in MATCHING_PATTERNS else "SystemEvent"
            bus.on(name, c.consume_bubus)

    async def publish_tool_use(tool_name: str, tool_params: dict, tool_result: Any = None) -> bool:
        bus.dispatch(
            ToolUse(data={"tool": tool_name, "params": tool_params, "result": tool_result})
        )
        return True

    gc.collect()
    t0 = time.perf_counter()
    try:
        for i in range(n_events):
            await publish_tool_use("Bash", {"command": "ls -la", "n": i})
            if i % 100 == 99:
                await asyncio.sleep(0)
        await _wait(tracker, "bubus")
        seconds = time.perf_counter() - t0
    finally:
        await bus.stop(clear=True)
    _check(consumers, read_data)
    return _result(n_events, seconds, len([p for p in patterns if p in MATCHING_PATTERNS]))


STREAMS = {FLOOR: floor_stream, PYEE: pyee_stream, BUBUS: bubus_stream}
