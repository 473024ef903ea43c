"""The workloads of issue 5, written once against the shared API.

Every workload takes an implementation namespace (see ``impls.py``) and touches only
``EventBus, Event, EventPriority, ConsumerConfig, IEventConsumer, HookEventProducer,
ConsumerPriority`` (and ``MetricsConsumer`` for W6). Nothing here looks at which
implementation it is given.

Throughput is timed from just before the first publish until every consumer that should
see the stream has counted every event (an ``asyncio.Event`` it sets), so it works for a
bus without ``join()``. Both buses get the same ``max_queue_size``: four times the
number of events, because the original splits it into four per-priority deques and
silently drops the oldest event of a full one.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import types
from datetime import UTC, datetime
from typing import Any

WAIT_TIMEOUT_S = 100.0

# W2's five consumers; the stream is ``hook.tool`` events, which all but ``system.**`` match.
FANOUT_PATTERNS = ["hook.*", "hook.**", "**", "hook.tool", "system.**"]
MATCHING_PATTERNS = ["hook.*", "hook.**", "**", "hook.tool"]


def queue_size_for(n_events: int) -> int:
    """The ``max_queue_size`` both buses get: room for every event in one priority deque."""
    return 4 * n_events + 1024


def idle_pattern(i: int) -> str:
    """A wildcard subscription no ``hook.tool`` event matches (alternating ``*``/``**``)."""
    return f"idle.{i}.*" if i % 2 == 0 else f"idle.{i}.**"


class Tracker:
    """Counts consumers that reached their target; sets ``done`` (thread-safely) at zero."""

    def __init__(self, waiting: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.remaining = waiting
        self.done = asyncio.Event()
        if waiting == 0:
            self.done.set()

    def one_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self.done.set)


_consumer_classes: dict[int, type] = {}


def counting_consumer_class(impl: types.SimpleNamespace) -> type:
    """A minimal consumer for ``impl``: counts events, optionally waits on a gate first."""
    cls = _consumer_classes.get(id(impl))
    if cls is not None:
        return cls

    class CountingConsumer(impl.IEventConsumer):  # type: ignore[name-defined,misc]
        def __init__(
            self,
            name: str,
            topics: list[str],
            target: int = 0,
            tracker: Tracker | None = None,
            gate: asyncio.Event | None = None,
            read_data: bool = False,
            rule: dict[str, Any] | None = None,
        ) -> None:
            extra = {"rule": rule} if rule is not None else {}
            self._config = impl.ConsumerConfig(name=name, topics=topics, **extra)
            self.count = 0
            self.target = target
            self.tracker = tracker
            self.gate = gate
            self.read_data = read_data
            self.tools = 0

        async def initialize(self) -> bool:
            return True

        async def consume(self, event: Any) -> bool:
            if self.gate is not None:
                await self.gate.wait()
            if self.read_data and event.data["tool"] == "Bash":
                self.tools += 1
            self.count += 1
            if self.count == self.target and self.tracker is not None:
                self.tracker.one_done()
            return True

        async def consume_batch(self, events: list[Any]) -> int:
            for event in events:
                await self.consume(event)
            return len(events)

        async def shutdown(self) -> None:
            return None

        @property
        def config(self) -> Any:
            return self._config

        @property
        def is_healthy(self) -> bool:
            return True

        def get_metrics(self) -> dict[str, Any]:
            return {"count": self.count}

    _consumer_classes[id(impl)] = CountingConsumer
    return CountingConsumer


async def _wait(tracker: Tracker, what: str) -> None:
    try:
        await asyncio.wait_for(tracker.done.wait(), WAIT_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"{what}: consumers did not see every event in time") from None


async def hook_stream(
    impl: types.SimpleNamespace,
    n_events: int,
    patterns: list[str],
    idle: int = 0,
    read_data: bool = False,
    rule: dict[str, Any] | None = None,
    tools: list[str] | None = None,
) -> dict[str, Any]:
    """W1/W1d/W2/W3 and the charts: ``publish_tool_use`` ``n_events`` times into consumers.

    One counting consumer per entry of ``patterns`` (a pattern that ``hook.tool`` does not
    match must see nothing), plus ``idle`` consumers on wildcard patterns nothing matches.
    With ``read_data`` (W1d) every consumer reads ``event.data["tool"]``. The tool is
    ``"Bash"``, or ``tools[i % len(tools)]`` for event ``i``.
    """
    bus = impl.EventBus(max_queue_size=queue_size_for(n_events))
    await bus.start()
    if os.environ.get("MPM_BENCH_MONITOR") == "1" and hasattr(bus, "serve_monitor"):
        # NOTE: issue 14's A/B: W1 with the monitor serving and no client connected.
        await bus.serve_monitor()
    consumer_cls = counting_consumer_class(impl)
    matching = [p for p in patterns if p in MATCHING_PATTERNS]
    tracker = Tracker(len(matching))
    active = []
    for i, pattern in enumerate(patterns):
        target = n_events if pattern in MATCHING_PATTERNS else 0
        consumer = consumer_cls(
            f"bench-{i}", [pattern], target, tracker, read_data=read_data, rule=rule
        )
        active.append(consumer)
        assert await bus.subscribe(consumer), "subscribe refused"
    for i in range(idle):
        assert await bus.subscribe(consumer_cls(f"idle-{i}", [idle_pattern(i)])), "subscribe"
    producer = impl.HookEventProducer(bus)
    publish = producer.publish_tool_use
    gc.collect()

    refused = 0
    t0 = time.perf_counter()
    names = tools or ["Bash"]
    for i in range(n_events):
        if not await publish(names[i % len(names)], {"command": "ls -la", "n": i}):
            refused += 1
    if refused:
        await bus.stop()
        raise RuntimeError(f"bus refused {refused} of {n_events} events")
    await _wait(tracker, "hook_stream")
    seconds = time.perf_counter() - t0

    await asyncio.sleep(0)
    wrong = [(c.config.name, c.count) for c in active if c.count != c.target]
    wrong += [(c.config.name, c.tools) for c in active if read_data and c.tools != c.target]
    await bus.stop()
    if wrong:
        raise RuntimeError(f"unexpected delivery counts (name, count): {wrong}")
    return {
        "n_events": n_events,
        "seconds": seconds,
        "value": n_events / seconds,
        "deliveries_per_s": n_events * len(matching) / seconds,
    }


#: W1r's rule: it matches every W1 event, so delivery counts stay those of W1.
W1R_RULE = {"data": {"tool": ["Bash"]}}

# NOTE: W1r's payloads repeat the tool name, which the bus answers from memory (the
# rules' recent answers, src/python/bus/admit_memo.rs); with 64 names in turn, more
# than it remembers, every event is matched afresh: the cost of a rule itself.
W1R_MIXED_TOOLS = [f"T{i}" for i in range(64)]
W1R_MIXED_RULE = {"data": {"tool": W1R_MIXED_TOOLS}}


async def hook_stream_with_rule(impl: types.SimpleNamespace, n_events: int) -> dict[str, Any]:
    """W1r: W1 with one content rule (on the payload) on its consumer (issue 15)."""
    return await hook_stream(impl, n_events, ["hook.**"], rule=W1R_RULE)


async def hook_stream_with_rule_mixed(impl: types.SimpleNamespace, n_events: int) -> dict[str, Any]:
    """W1r's companion: 64 tool names in turn, all matched by the rule, none remembered."""
    return await hook_stream(
        impl, n_events, ["hook.**"], rule=W1R_MIXED_RULE, tools=W1R_MIXED_TOOLS
    )


def _tool_event(impl: types.SimpleNamespace, i: int) -> Any:
    return impl.Event(
        id="",
        topic="hook.tool",
        type="ToolUse",
        timestamp=datetime.now(UTC),
        source="hook_handler",
        data={"tool": "Bash", "params": {"command": "ls -la", "n": i}, "result": None},
    )


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


async def publish_latency(
    impl: types.SimpleNamespace, n_events: int, yield_every: int = 100
) -> dict[str, Any]:
    """W4: ``await bus.publish(event)`` timed one by one while a ``hook.**`` consumer runs.

    The event is built before the clock starts. The publisher yields to the event loop
    every ``yield_every`` publishes so the consumer really runs during the measurement.
    """
    bus = impl.EventBus(max_queue_size=queue_size_for(n_events))
    await bus.start()
    tracker = Tracker(1)
    consumer = counting_consumer_class(impl)("w4", ["hook.**"], n_events, tracker)
    assert await bus.subscribe(consumer)
    publish = bus.publish
    clock = time.perf_counter_ns
    samples = [0] * n_events
    refused = 0
    gc.collect()
    for i in range(n_events):
        event = _tool_event(impl, i)
        t0 = clock()
        ok = await publish(event)
        samples[i] = clock() - t0
        if not ok:
            refused += 1
        if i % yield_every == yield_every - 1:
            await asyncio.sleep(0)
    if refused:
        await bus.stop()
        raise RuntimeError(f"bus refused {refused} of {n_events} events")
    await _wait(tracker, "publish_latency")
    await bus.stop()
    samples.sort()
    return {
        "n_events": n_events,
        "value": percentile(samples, 99) / 1000,
        "p50_us": percentile(samples, 50) / 1000,
        "p90_us": percentile(samples, 90) / 1000,
        "p99_us": percentile(samples, 99) / 1000,
        "p999_us": percentile(samples, 99.9) / 1000,
        "mean_us": sum(samples) / len(samples) / 1000,
        "max_us": samples[-1] / 1000,
    }


async def batch_to_metrics(impl: types.SimpleNamespace, n_events: int) -> dict[str, Any]:
    """W6: ``publish_batch`` of ``n_events`` into a ``MetricsConsumer``; until ``join()``."""
    bus = impl.EventBus(max_queue_size=queue_size_for(n_events))
    await bus.start()
    assert await bus.subscribe(impl.MetricsConsumer())
    events = [_tool_event(impl, i) for i in range(n_events)]
    gc.collect()
    t0 = time.perf_counter()
    accepted = await bus.publish_batch(events)
    await bus.join()
    seconds = time.perf_counter() - t0
    processed = bus.get_metrics().get("events_processed")
    await bus.stop()
    if accepted != n_events:
        raise RuntimeError(f"publish_batch accepted {accepted} of {n_events}")
    return {
        "n_events": n_events,
        "seconds": seconds,
        "value": n_events / seconds,
        "events_processed": processed,
    }


async def _noop() -> None:
    return None


async def await_floor(n: int) -> dict[str, Any]:
    """The physical floor: ns to ``await`` a trivial coroutine, and the clock's own cost."""
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        await _noop()
    await_ns = (clock() - t0) / n
    overhead = []
    for _ in range(10_000):
        a = clock()
        overhead.append(clock() - a)
    overhead.sort()
    return {
        "await_noop_ns": await_ns,
        "max_events_per_s_one_consumer": 1e9 / await_ns,
        "perf_counter_ns_overhead_ns": percentile(overhead, 50),
    }


async def durable_stream(
    impl: types.SimpleNamespace, n_events: int, tasks: int, durability: str | None
) -> dict[str, Any]:
    """W8/W9 (ours only): tool-use events from ``tasks`` concurrent publishing tasks
    into one consumer on a durable bus (``durability`` "sync" or "async") or, with
    ``durability=None``, on an in-memory bus with the same workload; timed from the first
    publish until the consumer has seen every event."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mpm-bench-") as tmp:
        kwargs: dict[str, Any] = {}
        if durability is not None:
            kwargs = {
                "enable_persistence": True,
                "persistence_path": f"{tmp}/events.db",
                "durability": durability,
            }
        bus = impl.EventBus(max_queue_size=queue_size_for(n_events), **kwargs)
        await bus.start()
        tracker = Tracker(1)
        per_task = n_events // tasks
        total = per_task * tasks
        consumer = counting_consumer_class(impl)("durable", ["hook.**"], total, tracker)
        assert await bus.subscribe(consumer), "subscribe refused"
        producer = impl.HookEventProducer(bus)
        gc.collect()
        refused = 0

        async def publisher(start: int) -> None:
            nonlocal refused
            for i in range(start, start + per_task):
                if not await producer.publish_tool_use("Bash", {"command": "ls -la", "n": i}):
                    refused += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(publisher(t * per_task) for t in range(tasks)))
        if refused:
            await bus.stop()
            raise RuntimeError(f"bus refused {refused} of {total} events")
        await _wait(tracker, "durable_stream")
        seconds = time.perf_counter() - t0
        await bus.stop()
    return {"n_events": total, "tasks": tasks, "seconds": seconds, "value": total / seconds}


def context_switches() -> int:
    """Voluntary plus involuntary context switches of every live thread of this process
    (``/proc/self/task/*/status``); ``getrusage`` where there is no ``/proc``."""
    import os
    import resource

    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_nvcsw + ru.ru_nivcsw
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
    return total


async def paced_stream(
    impl: types.SimpleNamespace | None, rate: float, seconds: float, metrics: bool = False
) -> dict[str, Any]:
    """W13: ``rate`` tool-use events a second for ``seconds``, paced by the event loop.

    With ``impl=None`` the same paced loop runs without a bus (the publish is an empty
    coroutine), which is what gets subtracted. With a bus: one counting consumer on
    ``hook.**`` and, with ``metrics``, a ``MetricsConsumer`` beside it. Returns the
    process CPU time (``time.process_time``: every thread) and context switches (every
    thread) over the stream, until the consumer saw the last event.
    """
    n_events = max(1, int(rate * seconds))
    bus = None
    tracker = Tracker(1 if impl is not None else 0)
    if impl is not None:
        bus = impl.EventBus(max_queue_size=queue_size_for(n_events))
        await bus.start()
        # NOTE: n_events + 1: the warm-up event below counts too.
        consumer = counting_consumer_class(impl)("paced", ["hook.**"], n_events + 1, tracker)
        assert await bus.subscribe(consumer), "subscribe refused"
        if metrics:
            assert await bus.subscribe(impl.MetricsConsumer()), "subscribe refused"
        publish = impl.HookEventProducer(bus).publish_tool_use
    else:

        async def publish(tool_name: str, tool_params: dict) -> bool:
            return True

    loop = asyncio.get_running_loop()
    period = 1.0 / rate
    # NOTE: one event first, delivered before the clock starts, so lazily started
    # threads, lazy imports and first-call caches are not billed to the stream (they
    # were, until 2026-12-03: a one-time ~40 ms spread over 500 events at 100/s).
    await publish("Bash", {"command": "ls -la", "n": -1})
    if impl is not None:
        deadline = loop.time() + WAIT_TIMEOUT_S
        while consumer.count < 1:
            if loop.time() > deadline:
                raise RuntimeError("paced_stream: the warm-up event was not delivered")
            await asyncio.sleep(0.001)
    await asyncio.sleep(period)
    gc.collect()
    # NOTE: frozen, so a collection during the stream does not walk what the
    # benchmark process accumulated before it (in a full `make bench` a single
    # such collection swung a 5 s stream's CPU by more than 100 ms, bare or not).
    gc.freeze()
    cpu0, cs0 = time.process_time(), context_switches()
    t0 = loop.time()
    for i in range(n_events):
        await publish("Bash", {"command": "ls -la", "n": i})
        delay = t0 + (i + 1) * period - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
    await _wait(tracker, "paced_stream")
    cpu1, cs1 = time.process_time(), context_switches()
    gc.unfreeze()
    wall = loop.time() - t0
    if bus is not None:
        await bus.stop()
    return {
        "n_events": n_events,
        "rate": rate,
        "wall_s": wall,
        "cpu_s": cpu1 - cpu0,
        "context_switches": cs1 - cs0,
    }
