"""W11: the shared log across processes: 4 publisher processes, 2 consumer names;
W12: the bus on Redis Streams.

    python benches/logprobe.py [--quick]          # W11: one JSON line (progress on stderr)
    python benches/logprobe.py --redis [--quick]  # W12: one JSON line

W12 (``measure_redis``) starts a private ``redis-server`` on a free port (AOF, fsync
every second; never the shared 6379) and measures, in this process: ``publish_batch``
of 1,000 with 8 batches in flight, awaited single ``publish`` latency, one consumer name
draining 200,000 events already in the stream with a Rust sink (``MetricsConsumer``) and
with a Python consumer (batches of 1,000, reading ``event.data``), 20 cold
``mpm-events hook --backend redis://...`` processes (``hookprobe.ours_once``, median
wall time, spawn to exit), then ``redis-benchmark``'s XADD rate on the same server (50
clients, one request at a time and pipelined 16 deep): the ceiling.

Every run uses a fresh SQLite log in a temp dir. Two consumer processes, one per
consumer name (``relay``, ``audit``: each name gets every event), claim entries with
``_core._log_read(url, name, instance, 1000, block_ms=100)`` and acknowledge each
claimed batch with ``_core._log_ack``; four publisher processes append with
``_core._log_append``. All seven are started and imported first; the publishers start
together on one line on their stdin.

NOTE: the ``via="direct"`` runs use this benchmark-level API, not the bus; the
``via="bus"`` runs (the issue's targets) use ``EventBus(backend="sqlite:///...")``
(one ``Appender`` with group commit per process, one ``GroupReader`` per consumer
name). ``_log_append`` is one transaction per call, so with
``durability="sync"`` every single-event call is its own fsync; the bus's appender
commits the publishes of many tasks of one process together.

Runs (``mode``):

- ``single``: each publisher appends its events one call each (durability ``sync``,
  the default), and again with ``normal``;
- ``batch``: each publisher appends batches of 1,000 (one transaction each, sync);
- ``paced``: each publisher appends one event every ``1 / rate`` s (sync), for the
  publish-to-consume latency of a stream that is not saturated.

Measured per run: events/s end to end (all events of both names consumed, from the
publishers' common start to the last consumption), the publishers' own rate, and the
publish-to-consume latency per event: from ``published_us`` (set as the event is
converted, just before its append, so including its commit and fsync) to the moment
the consumer's ``_log_read`` returned it, across processes (one host, one clock).
Duplicates (an entry delivered twice to a name) are counted; there should be none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PUBLISHERS = 4
NAMES = ("relay", "audit")
READ_MAX = 1000
BLOCK_MS = 100
TIMEOUT_S = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _event(i: int) -> dict[str, Any]:
    return {
        "topic": "hook.pre_tool",
        "type": "PreToolUse",
        "source": "hook",
        "data": {
            "session_id": "bench-w11",
            "cwd": "/work/projects/shop",
            "tool_name": "Bash",
            "tool_input": {"command": "pytest -q", "n": i},
        },
    }


def publisher(url: str, count: int, batch: int, rate: float) -> None:
    """A publisher process: ready, wait for go, append, print its times."""
    from mpm_events._core import _log_append

    events = [_event(i) for i in range(count)]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    if rate > 0:
        pause = 1.0 / rate
        due = time.monotonic()
        for ev in events:
            _log_append(url, [ev])
            due += pause
            time.sleep(max(0.0, due - time.monotonic()))
    else:
        for i in range(0, count, batch):
            _log_append(url, events[i : i + batch])
    print(json.dumps({"start": start, "end": time.time()}), flush=True)


#: Publishing tasks per publisher process on the bus (their publishes share commits).
BUS_TASKS = 64


def publisher_bus(url: str, count: int, batch: int, rate: float) -> None:
    """A publisher process on ``EventBus(backend=url)``: ``publish`` from many tasks
    (the appender commits what they queued together), or ``publish_batch``."""
    import asyncio

    from mpm_events import Event, EventBus

    async def main() -> None:
        bus = EventBus(backend=url)
        await bus.start()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        start = time.time()

        def make(i: int) -> Event:
            e = _event(i)
            e["data"]["t"] = time.time()
            return Event(**e)

        if rate > 0:
            pause = 1.0 / rate
            due = time.monotonic()
            for i in range(count):
                assert await bus.publish(make(i))
                due += pause
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        elif batch > 1:
            for i in range(0, count, batch):
                n = min(batch, count - i)
                assert await bus.publish_batch([make(i + k) for k in range(n)]) == n
        else:

            async def task(k: int) -> None:
                for i in range(k, count, BUS_TASKS):
                    assert await bus.publish(make(i))

            await asyncio.gather(*(task(k) for k in range(BUS_TASKS)))
        end = time.time()
        await bus.stop(30)
        print(json.dumps({"start": start, "end": end}), flush=True)

    asyncio.run(main())


class _BatchConsumer:
    """The consumer protocol around a ``consume_batch`` (subclasses set ``config``)."""

    is_healthy = True

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Any) -> bool:
        return await self.consume_batch([event]) == 1

    async def consume_batch(self, events: list[Any]) -> int:
        raise NotImplementedError

    async def shutdown(self) -> None:
        pass

    def get_metrics(self) -> dict[str, Any]:
        return {}


def consumer_bus(url: str, name: str, total: int) -> None:
    """A consumer process on ``EventBus(backend=url)``: one Python consumer named
    ``name`` (batches of up to 1,000), until ``total`` events."""
    import asyncio

    from mpm_events import ConsumerConfig, EventBus

    seen: set[str] = set()
    state: dict[str, Any] = {"dupes": 0, "first": None, "last": None}
    lat_us: list[int] = []
    done = asyncio.Event()

    class Consumer(_BatchConsumer):
        config = ConsumerConfig(name, topics=["hook.**"], batch_size=1000, batch_timeout=0.001)

        async def consume_batch(self, events: list[Any]) -> int:
            now = time.time()
            state["first"] = state["first"] or now
            state["last"] = now
            for e in events:
                if e.id in seen:
                    state["dupes"] += 1
                seen.add(e.id)
                lat_us.append(int((now - e.data["t"]) * 1e6))
            if len(seen) >= total:
                done.set()
            return len(events)

    async def main() -> None:
        bus = EventBus(backend=url)
        await bus.start()
        await bus.subscribe(Consumer())
        print("ready", flush=True)
        try:
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
        except TimeoutError:
            pass
        await bus.stop(30)

    asyncio.run(main())
    lat_us.sort()
    print(
        json.dumps(
            {
                "count": len(seen),
                "dupes": state["dupes"],
                "first": state["first"],
                "last": state["last"],
                "p50_ms": _pct(lat_us, 0.50) / 1000,
                "p99_ms": _pct(lat_us, 0.99) / 1000,
                "max_ms": (lat_us[-1] if lat_us else 0) / 1000,
            }
        ),
        flush=True,
    )


def consumer(url: str, name: str, total: int) -> None:
    """A consumer process: claim and ack until ``total`` events, print what it saw."""
    from mpm_events._core import _log_ack, _log_read

    instance = f"{name}-{os.getpid()}"
    _log_read(url, name, instance, 1, 0)  # creates the group (start: earliest)
    print("ready", flush=True)
    seen: set[str] = set()
    dupes = 0
    lat_us: list[int] = []
    first = last = None
    deadline = time.monotonic() + TIMEOUT_S
    while len(seen) < total and time.monotonic() < deadline:
        got = _log_read(url, name, instance, READ_MAX, BLOCK_MS)
        if not got:
            continue
        now = time.time()
        now_us = int(now * 1e6)
        first = first or now
        last = now
        for e in got:
            if e["id"] in seen:
                dupes += 1
            seen.add(e["id"])
            lat_us.append(now_us - e["published_us"])
        _log_ack(url, name, [e["entry_id"] for e in got])
    lat_us.sort()
    print(
        json.dumps(
            {
                "count": len(seen),
                "dupes": dupes,
                "first": first,
                "last": last,
                "p50_ms": _pct(lat_us, 0.50) / 1000,
                "p99_ms": _pct(lat_us, 0.99) / 1000,
                "max_ms": (lat_us[-1] if lat_us else 0) / 1000,
            }
        ),
        flush=True,
    )


def _pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, int(q * len(values)))])


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run(
    mode: str,
    per_publisher: int,
    *,
    batch: int = 1,
    rate: float = 0.0,
    durability: str = "sync",
    via: str = "direct",
) -> dict[str, Any]:
    """One run on a fresh log; returns its numbers (or ``error``)."""
    with tempfile.TemporaryDirectory(prefix="mpm-w11-") as tmp:
        url = f"sqlite://{Path(tmp) / 'events.db'}?durability={durability}"
        total = per_publisher * PUBLISHERS
        procs: list[subprocess.Popen[str]] = []
        try:
            suffix = "-bus" if via == "bus" else ""
            consumers = [_spawn("consume" + suffix, url, name, str(total)) for name in NAMES]
            procs += consumers
            for c in consumers:
                assert c.stdout is not None
                if c.stdout.readline().strip() != "ready":
                    return {"error": "a consumer did not start"}
            pubs = [
                _spawn("publish" + suffix, url, str(per_publisher), str(batch), str(rate))
                for _ in range(PUBLISHERS)
            ]
            procs += pubs
            for p in pubs:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    return {"error": "a publisher did not start"}
            for p in pubs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            pub_out = [json.loads(p.communicate(timeout=TIMEOUT_S)[0]) for p in pubs]
            con_out = [json.loads(c.communicate(timeout=TIMEOUT_S)[0]) for c in consumers]
        except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for name, c in zip(NAMES, con_out, strict=True):
            if c["count"] != total:
                return {"error": f"{name} consumed {c['count']} of {total}"}
        start = min(p["start"] for p in pub_out)
        pub_end = max(p["end"] for p in pub_out)
        con_end = max(c["last"] for c in con_out)
        return {
            "mode": mode,
            "via": via,
            "durability": durability,
            "publishers": PUBLISHERS,
            "names": len(NAMES),
            "events": total,
            "batch": batch,
            "rate_per_publisher": rate,
            "end_to_end_events_per_s": total / (con_end - start),
            "publish_events_per_s": total / (pub_end - start),
            "p50_ms": statistics.median(c["p50_ms"] for c in con_out),
            "p99_ms": max(c["p99_ms"] for c in con_out),
            "max_ms": max(c["max_ms"] for c in con_out),
            "duplicates": sum(c["dupes"] for c in con_out),
        }


def measure(quick: bool) -> dict[str, Any]:
    scale = 5 if quick else 1
    plan = [
        # Through the bus: EventBus(backend=...) publishers (many tasks, group commit)
        # and consumers (GroupReader); the W11 targets are for these.
        ("single", {"per_publisher": 20_000 // scale, "via": "bus"}),
        ("batch", {"per_publisher": 50_000 // scale, "batch": 1000, "via": "bus"}),
        ("paced", {"per_publisher": 250 // scale, "rate": 50.0, "via": "bus"}),
        # The benchmark-level API (one transaction per call), for comparison.
        ("single", {"per_publisher": 500 // scale}),
        ("single", {"per_publisher": 5000 // scale, "durability": "normal"}),
        ("batch", {"per_publisher": 50_000 // scale, "batch": 1000}),
        ("paced", {"per_publisher": 250 // scale, "rate": 50.0}),
    ]
    out: dict[str, Any] = {"runs": []}
    for mode, kw in plan:
        got = run(mode, **kw)  # type: ignore[arg-type]
        log(f"W11 {mode} {kw}: {json.dumps(got)}")
        out["runs"].append({"mode": mode, **kw, **got})
    return out


# ----- W12: the bus on Redis Streams (one process each, a private redis-server) -----

#: ``publish_batch`` calls awaited together in the W12 batch run (pipelined batches).
W12_BATCHES_IN_FLIGHT = 8
#: AOF with fsync every second: Redis's recommended persistence, the same server for
#: our runs and for ``redis-benchmark``'s ceiling.
REDIS_ARGS = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


class _Redis:
    """A private ``redis-server`` on a free port in a temp dir (never 6379)."""

    def __init__(self, directory: str) -> None:
        import shutil
        import socket

        binary = os.environ.get("MPM_REDIS_SERVER") or shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary (PATH or $MPM_REDIS_SERVER)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                directory,
                *REDIS_ARGS,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("redis-server did not answer within 10 s")

    def url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


XADD = ("XADD", "w12:raw", "*", "field", "value")


def redis_benchmark_xadd(port: int, n: int) -> dict[str, Any]:
    """The raw ceiling: ``redis-benchmark`` XADD rates (one request at a time per
    client, and pipelined 16 deep), 50 clients, on the same server."""
    import shutil

    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "no redis-benchmark binary on PATH"}
    out: dict[str, Any] = {}
    for label, pipe in (("xadd_per_s", 1), ("xadd_pipelined16_per_s", 16)):
        proc = subprocess.run(
            [binary, "-p", str(port), "-n", str(n), "-P", str(pipe), "-q", "--csv", *XADD],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        rows = [line.split(",") for line in proc.stdout.splitlines() if line.startswith('"XADD')]
        if proc.returncode != 0 or not rows:
            return {"error": f"redis-benchmark failed: {proc.stderr.strip()[-200:]}"}
        out[label] = float(rows[-1][1].strip('"'))
    return out


async def _w12_publish(url: str, n_batch: int, n_single: int) -> dict[str, Any]:
    from mpm_events import Event, EventBus

    bus = EventBus(backend=url)
    await bus.start()
    try:
        # Warm up: the connection and the scripts.
        assert await bus.publish(Event(**_event(0)))
        batches = [
            [Event(**_event(i)) for i in range(k, k + 1000)] for k in range(0, n_batch, 1000)
        ]
        sem = asyncio.Semaphore(W12_BATCHES_IN_FLIGHT)

        async def one(batch: list[Any]) -> None:
            async with sem:
                assert await bus.publish_batch(batch) == len(batch)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        batch_s = time.perf_counter() - t0
        singles = [Event(**_event(i)) for i in range(n_single)]
        lat: list[float] = []
        for e in singles:
            t = time.perf_counter()
            assert await bus.publish(e)
            lat.append(time.perf_counter() - t)
    finally:
        await bus.stop(30)
    lat.sort()
    return {
        "publish_batch_events_per_s": n_batch / batch_s,
        "batches_in_flight": W12_BATCHES_IN_FLIGHT,
        "publish_p50_ms": statistics.median(lat) * 1000,
        "publish_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
        "single_publishes": n_single,
    }


async def _w12_drain(url: str, n: int, rust: bool) -> dict[str, Any]:
    """One consumer name drains ``n`` events already in the stream."""
    from mpm_events import ConsumerConfig, EventBus, MetricsConsumer

    bus = EventBus(backend=url)
    await bus.start()
    done = asyncio.Event()
    got = [0]
    sink: Any
    if rust:
        sink = MetricsConsumer(name="w12-rust", report_interval=0)
    else:

        class Consumer(_BatchConsumer):
            config = ConsumerConfig("w12-python", batch_size=1000, batch_timeout=0.001)

            async def consume_batch(self, events: list[Any]) -> int:
                for e in events:
                    _ = e.data["tool_name"]  # a consumer reads its events
                got[0] += len(events)
                if got[0] >= n:
                    done.set()
                return len(events)

        sink = Consumer()
    t0 = time.perf_counter()
    await bus.subscribe(sink)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        if rust:
            # NOTE: a Rust sink calls no Python: its counter is polled.
            while sink.get_metrics()["total_events"] < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            got[0] = sink.get_metrics()["total_events"]
        else:
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
        elapsed = time.perf_counter() - t0
    finally:
        await bus.stop(30)
    if got[0] < n:
        return {"error": f"consumed {got[0]} of {n}"}
    return {"events_per_s": n / elapsed, "events": n}


async def _w12_fill(url: str, n: int) -> None:
    from mpm_events import Event, EventBus

    bus = EventBus(backend=url)
    await bus.start()
    try:
        for k in range(0, n, 1000):
            batch = [Event(**_event(i)) for i in range(k, min(n, k + 1000))]
            assert await bus.publish_batch(batch) == len(batch)
    finally:
        await bus.stop(30)


def _w12_cold_hooks(url: str, tmp: str, runs: int) -> dict[str, Any]:
    """Cold ``mpm-events hook --backend redis://...`` processes (``hookprobe.ours_once``,
    spawn to exit, after one untimed warm-up): the median wall time, and a check that
    every event reached the stream."""
    import hookprobe
    from mpm_events._core import _log_range

    root = Path(tmp) / "hooks"
    try:
        hookprobe.ours_once(root, url)
        took = [hookprobe.ours_once(root, url) * 1e3 for _ in range(runs)]
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"cold_hook_error": str(exc)[-300:]}
    stored = len(_log_range(url))
    if stored != runs + 1:
        return {"cold_hook_error": f"{stored} events in the stream after {runs + 1} hooks"}
    return {"cold_hook_p50_ms": statistics.median(took), "cold_hook_runs": runs}


def measure_redis(quick: bool) -> dict[str, Any]:
    """W12 on a private redis-server: publish_batch (pipelined), awaited single
    publish latency, one consumer name draining the stream with a Rust sink and with
    a Python consumer, and redis-benchmark's XADD rates as the ceiling."""
    scale = 5 if quick else 1
    n_batch, n_single, n_drain = 200_000 // scale, 5000 // scale, 200_000 // scale
    with tempfile.TemporaryDirectory(prefix="mpm-w12-") as tmp:
        try:
            server = _Redis(tmp)
        except (OSError, RuntimeError) as exc:
            return {"error": str(exc)}
        try:
            out: dict[str, Any] = {"redis_config": " ".join(a or '""' for a in REDIS_ARGS)}
            out.update(asyncio.run(_w12_publish(server.url("w12p"), n_batch, n_single)))
            for label, rust in (("rust_sink", True), ("python_consumer", False)):
                url = server.url(f"w12{label}")
                asyncio.run(_w12_fill(url, n_drain))
                got = asyncio.run(_w12_drain(url, n_drain, rust))
                out[f"{label}_events_per_s"] = got.get("events_per_s")
                if "error" in got:
                    out[f"{label}_error"] = got["error"]
            out.update(_w12_cold_hooks(server.url("w12hook"), tmp, 5 if quick else 20))
            out["redis_benchmark"] = redis_benchmark_xadd(server.port, n_batch)
            return out
        finally:
            server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        _, _, url, n, batch, rate = sys.argv
        publisher(url, int(n), int(batch), float(rate))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "publish-bus":
        _, _, url, n, batch, rate = sys.argv
        publisher_bus(url, int(n), int(batch), float(rate))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "consume-bus":
        _, _, url, name, total = sys.argv
        consumer_bus(url, name, int(total))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "consume":
        _, _, url, name, total = sys.argv
        consumer(url, name, int(total))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the events")
    parser.add_argument(
        "--redis", action="store_true", help="W12 (Redis Streams) instead of W11 (SQLite)"
    )
    args = parser.parse_args()
    print(json.dumps(measure_redis(args.quick) if args.redis else measure(args.quick)))


if __name__ == "__main__":
    main()
