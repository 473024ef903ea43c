"""The demo behind ``python -m mpm_events demo`` (private).

A simulated Claude session publishes its hook stream through the package's own
producers into a few Python consumers: an async transcript, a sync (worker-thread)
tool audit, a batching counter, a subagent tracker and a flaky webhook forwarder
whose failures are retried with backoff and, for some events, end in the
dead-letter queue. Built-in consumers (``MetricsConsumer``, ``LoggingConsumer``,
``DeadLetterConsumer``, ``SocketIOConsumer``) are added when the package provides
them (see :func:`_builtin_consumers`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mpm_events
from mpm_events import (
    ConsumerConfig,
    ConsumerPriority,
    Event,
    EventBus,
    HookEventProducer,
    IEventConsumer,
    SystemEventProducer,
)

TOOLS = ["Read", "Edit", "Bash", "Grep", "Glob", "Write", "WebFetch"]
AGENTS = ["research", "engineer", "qa", "documentation"]


class _Consumer(IEventConsumer):
    """Shared boilerplate of the demo's consumers."""

    def __init__(self, config: ConsumerConfig) -> None:
        self._config = config
        self.handled = 0

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Event) -> bool:
        self.handled += 1
        return True

    async def consume_batch(self, events: list[Event]) -> int:
        return len(events)

    async def shutdown(self) -> None:
        pass

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return True

    def get_metrics(self) -> dict[str, Any]:
        return {"handled": self.handled}


class Transcript(_Consumer):
    """Async consumer of every hook event, counting by topic."""

    def __init__(self) -> None:
        super().__init__(ConsumerConfig("transcript", topics=["hook.**"]))
        self.by_topic: Counter[str] = Counter()

    async def consume(self, event: Event) -> bool:
        self.handled += 1
        self.by_topic[event.topic] += 1
        return True


class ToolAudit(_Consumer):
    """A plain ``def consume``: runs on a worker thread of its own."""

    def __init__(self) -> None:
        super().__init__(
            ConsumerConfig("tool-audit", topics=["hook.tool"], priority=ConsumerPriority.HIGH)
        )
        self.tools: Counter[str] = Counter()

    def consume(self, event: Event) -> bool:  # type: ignore[override]
        self.handled += 1
        self.tools[event.data["tool"]] += 1
        return True


class BatchCounter(_Consumer):
    """Receives everything in batches of up to 100 (``consume_batch``)."""

    def __init__(self) -> None:
        super().__init__(
            ConsumerConfig(
                "batch-counter",
                topics=["**"],
                priority=ConsumerPriority.LOW,
                batch_size=100,
                batch_timeout=0.05,
            )
        )
        self.batches = 0

    async def consume_batch(self, events: list[Event]) -> int:
        self.batches += 1
        self.handled += len(events)
        return len(events)


class SubagentTracker(_Consumer):
    """Tracks which subagents are running (``hook.subagent.*``)."""

    def __init__(self) -> None:
        super().__init__(ConsumerConfig("subagents", topics=["hook.subagent.*"]))
        self.active: set[str] = set()
        self.started = 0

    async def consume(self, event: Event) -> bool:
        self.handled += 1
        name = event.data["subagent"]
        if event.topic == "hook.subagent.start":
            self.active.add(name)
            self.started += 1
        else:
            self.active.discard(name)
        return True


class FlakyWebhook(_Consumer):
    """Forwards events to an unreliable "webhook".

    Some events fail once and succeed on retry; some (and always the session's
    first ``hook.error``) fail every attempt and end in the dead-letter queue.
    """

    RETRIES = 3

    def __init__(self, seed: int) -> None:
        super().__init__(
            ConsumerConfig(
                "flaky-webhook",
                topics=["hook.**", "system.**"],
                max_retries=self.RETRIES,
                retry_delay=0.02,
                retry_backoff=2.0,
                max_retry_delay=0.5,
            )
        )
        self._rng = random.Random(seed ^ 0x5EED)
        self._fate: dict[str, str] = {}
        self.attempts: dict[str, list[float]] = {}
        self._poisoned_error = False

    async def consume(self, event: Event) -> bool:
        self.attempts.setdefault(event.id, []).append(time.monotonic())
        fate = self._fate.get(event.id)
        if fate is None:
            roll = self._rng.random()
            if event.topic == "hook.error" and not self._poisoned_error:
                self._poisoned_error = True
                fate = "poisoned"
            else:
                fate = "poisoned" if roll < 0.02 else "transient" if roll < 0.10 else "ok"
            self._fate[event.id] = fate
        if fate == "poisoned":
            raise ConnectionError("webhook answered 503")
        if fate == "transient" and len(self.attempts[event.id]) == 1:
            return False
        self.handled += 1
        return True


def _builtin_consumers(socketio_url: str | None, dead_letter_dir: Path) -> list[Any]:
    """The package's built-in consumers, when it has them (issue 3).

    Each is optional: a missing class is skipped, so this demo runs before and after
    they land.
    """
    found: list[Any] = []
    if hasattr(mpm_events, "MetricsConsumer"):
        found.append(mpm_events.MetricsConsumer(report_interval=3600.0))
    if hasattr(mpm_events, "LoggingConsumer"):
        # NOTE: logs to "mpm_events.events", silent unless the application configures logging.
        found.append(mpm_events.LoggingConsumer(topics=["hook.**"]))
    if hasattr(mpm_events, "DeadLetterConsumer"):
        found.append(mpm_events.DeadLetterConsumer(output_dir=dead_letter_dir))
    if socketio_url is not None:
        if hasattr(mpm_events, "SocketIOConsumer"):
            found.append(mpm_events.SocketIOConsumer(url=socketio_url))
        else:
            print(f"note: --socketio {socketio_url} ignored: no SocketIOConsumer in this build")
    return found


async def _session(hook: HookEventProducer, system: SystemEventProducer, n: int, seed: int) -> int:
    """Publishes about ``n`` events of a plausible session; returns how many were accepted."""
    rng = random.Random(seed)
    accepted = 0
    sent = 0

    async def emit(ok: Any) -> None:
        nonlocal accepted, sent
        accepted += bool(await ok)
        sent += 1

    await emit(system.publish_startup("claude-mpm", mpm_events.__version__, {"demo": True}))
    error_at = max(2, n // 2)
    turn = 0
    while sent < n - 1:
        turn += 1
        cid = f"turn-{turn}"
        agent = rng.choice(AGENTS) if rng.random() < 0.3 else None
        if agent is not None:
            await emit(hook.publish_subagent_event(agent, "Start", {"task": f"t{turn}"}, cid))
        for _ in range(rng.randint(1, 6)):
            if sent >= n - 2:
                break
            tool = rng.choice(TOOLS)
            await emit(hook.publish_tool_use(tool, {"arg": rng.randint(0, 999)}, "ok", cid))
            if sent >= error_at and error_at > 0:
                error_at = -1
                await emit(hook.publish_error("ToolError", f"{tool} failed", {"turn": turn}, cid))
        if agent is not None and sent < n - 1:
            await emit(hook.publish_subagent_event(agent, "Stop", {"status": "done"}, cid))
        if sent < n - 1:
            await emit(hook.publish_response({"content": f"answer {turn}", "model": "claude"}, cid))
        if turn % 25 == 0 and sent < n - 1:
            await emit(system.publish_health_status("hook-handler", "healthy", {"bus": True}))
    await emit(system.publish_shutdown("claude-mpm"))
    return accepted


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def _main(events: int, seed: int, socketio_url: str | None) -> int:
    bus = EventBus()
    await bus.start()
    transcript, audit, batches = Transcript(), ToolAudit(), BatchCounter()
    subagents, flaky = SubagentTracker(), FlakyWebhook(seed)
    with tempfile.TemporaryDirectory(prefix="mpm-events-demo-") as tmp:
        extra = _builtin_consumers(socketio_url, Path(tmp))
        try:
            for consumer in [transcript, audit, batches, subagents, flaky, *extra]:
                if not await bus.subscribe(consumer):
                    print(f"note: could not subscribe {consumer.config.name}")
            hook, system = HookEventProducer(bus), SystemEventProducer(bus, "demo")
            began = time.perf_counter()
            accepted = await _session(hook, system, events, seed)
            published_in = time.perf_counter() - began
            await bus.join(timeout=30)
            elapsed = time.perf_counter() - began
            metrics = bus.get_metrics()
            dead = bus.get_dead_letters()
        finally:
            await bus.stop(timeout=10)

    stats = metrics["consumer_stats"]
    retries = sum(s["retried"] for s in stats.values())
    print(f"mpm-events {mpm_events.__version__} demo: a simulated Claude session (seed {seed})")
    print(
        f"events: {accepted} published in {_ms(published_in)}, all handled in {_ms(elapsed)} "
        f"({accepted / elapsed:,.0f} events/s end to end)"
    )
    print()
    header = f"{'consumer':<18}{'processed':>10}{'failed':>8}{'retried':>9}{'dead':>6}"
    print(header + f"{'p50 ms':>9}{'p99 ms':>9}")
    for name, s in stats.items():
        print(
            f"{name:<18}{s['processed']:>10}{s['failed']:>8}{s['retried']:>9}"
            f"{s['dead_lettered']:>6}{s['latency_p50_ms']:>9.2f}{s['latency_p99_ms']:>9.2f}"
        )
    print()
    print(f"topics seen by transcript: {dict(sorted(transcript.by_topic.items()))}")
    print(f"tool uses (sync consumer on its worker thread): {dict(audit.tools.most_common())}")
    print(f"batch-counter: {batches.handled} events in {batches.batches} batches")
    print(f"subagents started: {subagents.started}, still running: {sorted(subagents.active)}")
    print(f"retries: {retries}")
    print(f"dead letters: {len(dead)}")
    if dead:
        first = dead[0]
        times = flaky.attempts.get(first["event"].id, [])
        waits = ", ".join(_ms(b - a) for a, b in itertools.pairwise(times))
        print(
            f"  first: {first['event'].topic} for {first['consumer']} after "
            f"{len(times)} attempts (waits between attempts: {waits}); "
            f"last error: {first['errors'][-1]}"
        )
    print(f"bus: {metrics['events_published']} published, {metrics['events_dropped']} dropped")
    return 0


def run(events: int = 2000, seed: int = 7, socketio_url: str | None = None) -> int:
    """Runs the demo; returns the exit status."""
    return asyncio.run(_main(events, seed, socketio_url))
