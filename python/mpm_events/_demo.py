"""The demo behind ``python -m mpm_events demo`` (private).

A simulated Claude session publishes its hook stream (responses, tool uses,
subagent start/stop, errors) through the package's own producers, paced so the
run lasts a few seconds, into the built-in Rust consumers working together with
Python ones:

* ``LoggingConsumer`` logs every event to ``<output dir>/events.log`` (the
  loggers ``mpm_events.events`` and ``mpm_events.metrics`` get a file handler and
  do not propagate), so the terminal only shows the progress line and the summary;
* ``MetricsConsumer`` counts topics and types, rates and latency percentiles;
* ``flaky-webhook``, a Python consumer with retries and exponential backoff, some
  of whose events exhaust their retries and land, through the bus's dead-letter
  queue, in the ``DeadLetterConsumer``'s JSON-lines files in the output dir;
* ``SocketIOConsumer`` forwards everything to a dashboard with ``--socketio URL``
  (as ``claude_event`` in the dashboard's normalized shape, its default);
* ``tool-audit`` (a sync ``consume`` on a worker thread), ``batch-counter``
  (``consume_batch``) and ``subagents`` (a pattern subscription) show the Python
  consumer kinds.

While it runs, a progress line (events/s, queue depth, retries, dead letters) is
refreshed in place when stdout is a terminal, or printed about once a second
otherwise; a summary table follows. Ctrl-C stops the session, lets what is in
flight finish (1 s at most) and prints the summary so far (exit status 130); a
second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import mpm_events
from mpm_events import (
    ConsumerConfig,
    ConsumerPriority,
    DeadLetterConsumer,
    Event,
    EventBus,
    HookEventProducer,
    IEventConsumer,
    LoggingConsumer,
    MetricsConsumer,
    SocketIOConsumer,
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


@dataclass
class _Progress:
    """What the session has published so far (read by the progress display)."""

    total: int
    sent: int = 0
    accepted: int = 0
    began: float = field(default_factory=time.perf_counter)


Publish = Callable[[], Awaitable[bool]]


def _turns(
    hook: HookEventProducer, system: SystemEventProducer, rng: random.Random, n: int
) -> Iterator[Publish]:
    """The session's turns, endlessly: subagent start/stop, tool uses, an error about
    every ``n // 4`` events, a response per turn, a health report every 25 turns."""
    errors_every = max(2, n // 4)
    next_error = errors_every
    count = 1  # the startup event comes first
    turn = 0
    while True:
        turn += 1
        cid = f"turn-{turn}"
        agent = rng.choice(AGENTS) if rng.random() < 0.3 else None
        if agent is not None:
            yield partial(hook.publish_subagent_event, agent, "Start", {"task": f"t{turn}"}, cid)
            count += 1
        for _ in range(rng.randint(1, 6)):
            tool = rng.choice(TOOLS)
            yield partial(hook.publish_tool_use, tool, {"arg": rng.randint(0, 999)}, "ok", cid)
            count += 1
            if count >= next_error:
                next_error += errors_every
                error = f"{tool} failed"
                yield partial(hook.publish_error, "ToolError", error, {"turn": turn}, cid)
                count += 1
        if agent is not None:
            yield partial(hook.publish_subagent_event, agent, "Stop", {"status": "done"}, cid)
            count += 1
        yield partial(hook.publish_response, {"content": f"answer {turn}", "model": "claude"}, cid)
        count += 1
        if turn % 25 == 0:
            yield partial(system.publish_health_status, "hook-handler", "healthy", {"bus": True})
            count += 1


def _script(
    hook: HookEventProducer, system: SystemEventProducer, seed: int, n: int
) -> Iterator[Publish]:
    """Exactly ``n`` publishes: the startup, turns, and the shutdown last (``n >= 2``)."""
    yield partial(system.publish_startup, "claude-mpm", mpm_events.__version__, {"demo": True})
    if n >= 2:
        yield from itertools.islice(_turns(hook, system, random.Random(seed), n), n - 2)
        yield partial(system.publish_shutdown, "claude-mpm")


async def _session(
    hook: HookEventProducer, system: SystemEventProducer, seed: int, rate: float, p: _Progress
) -> None:
    """Publishes the ``p.total`` events of a plausible session at about ``rate``
    events/s (0: as fast as the bus takes them), counting them in ``p``."""
    for publish in _script(hook, system, seed, p.total):
        p.accepted += bool(await publish())
        p.sent += 1
        if rate > 0:
            # NOTE: paced event by event against the start, so a late wake-up is made
            # up at once and the rate over any stretch longer than a few ms is `rate`
            # (pacing in bursts made the metrics' rate and peak overshoot it).
            ahead = p.began + p.sent / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)


def _progress_line(
    bus: EventBus, metrics: MetricsConsumer, dlc: DeadLetterConsumer, p: _Progress
) -> str:
    bus_m = bus.get_metrics()
    retries = sum(s["retried"] for s in bus_m["consumer_stats"].values())
    return (
        f"{p.sent:>6}/{p.total} events  {metrics.get_metrics()['events_per_second']:>7,.0f} ev/s  "
        f"queue {bus_m['queue_size']:>4}  retries {retries:>4}  "
        f"dead letters {bus_m['dead_letter_queue_size']:>3} (on disk "
        f"{dlc.get_metrics()['events_stored']})"
    )


async def _show_progress(
    bus: EventBus,
    metrics: MetricsConsumer,
    dlc: DeadLetterConsumer,
    p: _Progress,
    done: asyncio.Event,
    out: TextIO,
) -> None:
    """Until ``done``: one line refreshed in place on a terminal, else a line a second."""
    tty = out.isatty()
    interval = 0.1 if tty else 1.0
    width = 0
    while True:
        finished = done.is_set()
        line = _progress_line(bus, metrics, dlc, p)
        if tty:
            width = max(width, len(line))
            out.write("\r" + line.ljust(width) + ("\n" if finished else ""))
        else:
            out.write(f"progress: {line}\n")
        out.flush()
        if finished:
            return
        try:
            await asyncio.wait_for(done.wait(), interval)
        except TimeoutError:
            pass


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _log_to(path: Path) -> logging.Handler:
    """Sends the LoggingConsumer's and MetricsConsumer's records to ``path`` only."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    loggers = [logging.getLogger("mpm_events.events"), logging.getLogger("mpm_events.metrics")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return handler


def _read_dead_letters(files: list[Path]) -> list[tuple[Path, list[dict[str, Any]]]]:
    out = []
    for f in files:
        lines = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        out.append((f, lines))
    return out


async def _main(
    events: int, seed: int, rate: float, output_dir: Path, socketio_url: str | None
) -> int:
    log_path = output_dir / "events.log"
    log_handler = _log_to(log_path)
    print(
        f"mpm-events {mpm_events.__version__} demo: a simulated Claude session "
        f"(seed {seed}, {events} events" + (f" at {rate:,.0f}/s)" if rate > 0 else ", unpaced)"),
        flush=True,
    )
    bus = EventBus()
    await bus.start()
    # NOTE: the monitor page (docs/monitor.md) is up while the demo runs; it stops
    # with the bus.
    print(f"monitor: {await bus.serve_monitor()} (up until the demo ends)", flush=True)
    dlc = DeadLetterConsumer(output_dir=output_dir)
    logger = LoggingConsumer(include_data=False)
    metrics = MetricsConsumer(window_size=2, report_interval=0)
    audit, batches, subagents = ToolAudit(), BatchCounter(), SubagentTracker()
    flaky = FlakyWebhook(seed)
    sio = None
    if socketio_url is not None:
        sio = SocketIOConsumer(
            url=socketio_url,
            reconnect_delay=0.2,
            max_reconnect_delay=1.0,
            flush_timeout=2.0,
        )
    consumers: list[Any] = [dlc, logger, metrics, flaky, audit, batches, subagents]
    if sio is not None:
        consumers.append(sio)
    p = _Progress(events)
    done = asyncio.Event()
    interrupted = asyncio.Event()
    stopped_in = 0.0
    try:
        for consumer in consumers:
            if not await bus.subscribe(consumer):
                print(f"note: could not subscribe {consumer.config.name}")
        hook, system = HookEventProducer(bus), SystemEventProducer(bus, "demo")
        display = asyncio.create_task(_show_progress(bus, metrics, dlc, p, done, sys.stdout))
        p.began = time.perf_counter()
        session = asyncio.create_task(_session(hook, system, seed, rate, p))
        _catch_ctrl_c(interrupted, session)
        try:
            try:
                await session
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not interrupted.is_set() or (current is not None and current.cancelling()):
                    raise
            published_in = time.perf_counter() - p.began
            handled = await _join(bus, interrupted)
            elapsed = time.perf_counter() - p.began
        finally:
            done.set()
            await display
        bus_m = bus.get_metrics()
        dead = bus.get_dead_letters()
    finally:
        t = time.perf_counter()
        await bus.stop(timeout=10)
        stopped_in = time.perf_counter() - t
        for name in ("mpm_events.events", "mpm_events.metrics"):
            logging.getLogger(name).removeHandler(log_handler)
        log_handler.close()
    # NOTE: read after stop: a Socket.IO consumer hands what it could not deliver to the
    # DeadLetterConsumer while it shuts down.
    m = metrics.get_metrics()
    written = dlc.get_metrics()["events_stored"]
    # NOTE: the DeadLetterConsumer starts a file when it starts; one nobody wrote to
    # is noise in the output dir.
    for f in dlc.files():
        if f.stat().st_size == 0:
            f.unlink()
    dl_files = _read_dead_letters(dlc.files())
    on_disk = sum(len(lines) for _, lines in dl_files)

    print()
    if interrupted.is_set():
        print(f"interrupted (Ctrl-C) after {p.sent} of {p.total} events: the summary so far")
    print(
        f"events: {p.accepted} published in {_ms(published_in)}, "
        f"{'all' if handled else 'NOT all'} handled in {_ms(elapsed)} "
        f"({p.accepted / elapsed:,.0f} events/s end to end; peak {m['peak_rate']:,.0f}/s)"
    )
    print(f"bus: {bus_m['events_dropped']} dropped, stopped in {_ms(stopped_in)}")
    print(f"metrics consumer saw: {m['total_events']} of {p.accepted} events")
    print(
        f"latency publish -> metrics consumer: p50 {m['latency_p50_ms']:.2f} ms, "
        f"p95 {m['latency_p95_ms']:.2f} ms, p99 {m['latency_p99_ms']:.2f} ms"
    )
    print()
    header = f"{'consumer':<20}{'processed':>10}{'failed':>8}{'retried':>9}{'dead':>6}"
    print(header + f"{'p50 ms':>9}{'p99 ms':>9}")
    stats = bus_m["consumer_stats"]
    for name, s in stats.items():
        # NOTE: dead letters reach the DeadLetterConsumer from every consumer's retries,
        # not through its own topics, so the bus does not count them as its deliveries.
        processed = written if name == dlc.config.name else s["processed"]
        print(
            f"{name:<20}{processed:>10}{s['failed']:>8}{s['retried']:>9}"
            f"{s['dead_lettered']:>6}{s['latency_p50_ms']:>9.2f}{s['latency_p99_ms']:>9.2f}"
        )
    print(f"({dlc.config.name}: processed = dead letters it wrote)")
    print()
    top = ", ".join(f"{k} {v}" for k, v in m["top_events"].items())
    print(f"top events: {top}")
    print(
        f"python consumers: flaky-webhook delivered {flaky.handled} events; tool-audit saw "
        f"{sum(audit.tools.values())} tool uses (sync, on its worker thread); batch-counter "
        f"{batches.handled} events in {batches.batches} batches; subagents "
        f"{subagents.handled} events ({subagents.started} started)"
    )
    print(f"retries: {sum(s['retried'] for s in stats.values())}")
    print(
        f"dead letters: {on_disk} (lines in the DeadLetterConsumer's files; "
        f"bus dead-letter queue {len(dead)}, written {written})"
    )
    for f, lines in dl_files:
        by_consumer = Counter(str(x["dead_letter"]["consumer"]) for x in lines)
        by = ", ".join(f"{c} {n}" for c, n in by_consumer.most_common())
        print(f"  {f.name}: {len(lines)} line{'' if len(lines) == 1 else 's'} ({by})")
    if dead and dead[0]["consumer"] == flaky.config.name:
        first = dead[0]
        times = flaky.attempts.get(first["event"].id, [])
        waits = ", ".join(_ms(b - a) for a, b in itertools.pairwise(times))
        print(
            f"  first: {first['event'].topic} for {first['consumer']} after "
            f"{len(times)} attempts (waits between attempts: {waits}); "
            f"last error: {first['errors'][-1]}"
        )
    lg = logger.get_metrics()
    print(f"log: {lg.get('events_logged', '?')} events logged by LoggingConsumer to {log_path}")
    if sio is not None:
        sm = sio.get_metrics()
        sio_dead = stats[sio.config.name]["dead_lettered"]
        print(
            f"socket.io {socketio_url}: {sm['events_emitted']} acknowledged, "
            f"{sm['events_failed']} failed attempts, {sio_dead} dead-lettered, "
            f"{sm['reconnections']} reconnections, emit p50 {sm['emit_latency_p50_ms']:.2f} ms"
            + (f", last error: {sm['last_error']}" if sm.get("last_error") else "")
        )
    print(f"output dir: {output_dir}")
    return 130 if interrupted.is_set() else 0


def _catch_ctrl_c(interrupted: asyncio.Event, session: asyncio.Task[None]) -> bool:
    """Makes the first Ctrl-C stop the session (setting ``interrupted``) so the demo
    ends with its summary; a second one interrupts at once. Returns False (and
    changes nothing) where SIGINT is ignored, as in a background job, or cannot be
    handled by the loop (not the main thread)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return False
    loop = asyncio.get_running_loop()

    def first_ctrl_c() -> None:
        interrupted.set()
        session.cancel()
        # NOTE: removing the handler restores KeyboardInterrupt for the next Ctrl-C.
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, first_ctrl_c)
    except (RuntimeError, ValueError):
        return False
    return True


async def _join(bus: EventBus, interrupted: asyncio.Event, timeout: float = 30.0) -> bool:
    """Waits until the bus has handled every accepted event: True, or False after
    ``timeout``; Ctrl-C cuts the wait to 1 s more for what is in flight."""
    joined = asyncio.ensure_future(bus.join())
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({joined, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not joined.done() and interrupted.is_set():
            await asyncio.wait({joined}, timeout=1.0)
        return joined.done() and joined.result()
    finally:
        joined.cancel()
        stop.cancel()


def run(
    events: int = 3000,
    seed: int = 7,
    socketio_url: str | None = None,
    rate: float = 1000.0,
    output_dir: str | Path | None = None,
) -> int:
    """Runs the demo; returns the exit status."""
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="mpm-events-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_main(events, seed, rate, out, socketio_url))
