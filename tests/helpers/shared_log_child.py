"""Child process of test_shared_log.py: one process on a shared log
(``EventBus(backend=URL)``), publishing or consuming.

Usage:
  shared_log_child.py publish URL PREFIX N [BATCH]
      Publish N events ``{"pub": PREFIX, "i": i}`` on topic ``log.ev`` (in
      ``publish_batch`` calls of BATCH when given), printing ``ok <i>`` once each
      publish has returned True, then ``DONE``; stops the bus and exits 0.
  shared_log_child.py consume URL NAME OUT [key=value ...]
      Subscribe a consumer named NAME that appends ``<pub> <i> <pid>`` to the file
      OUT for every event it handles; prints ``READY`` once subscribed; stops
      gracefully at SIGTERM (exit 0). Options: ``batch=B`` (consume_batch of up to B
      events), ``slow=S`` (seconds per call, before writing), ``slow_after=S``
      (seconds per call after writing: a kill then lands between a batch's lines
      and its acknowledgement), ``claim=T`` (claim_timeout),
      ``start=earliest|latest``, ``fail_while=PATH`` (fail, without retries, while
      PATH exists: dead letters).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from mpm_events import ConsumerConfig, Event, EventBus, IEventConsumer


class Writer(IEventConsumer):
    def __init__(self, name: str, out: str, opts: dict[str, str]) -> None:
        self._config = ConsumerConfig(
            name=name,
            topics=["log.**"],
            batch_size=int(opts.get("batch", "1")),
            batch_timeout=0.0,
            max_retries=0 if "fail_while" in opts else 3,
            retry_delay=0.01,
            claim_timeout=float(opts.get("claim", "30")),
            start=opts.get("start", "earliest"),
        )
        self.fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.slow = float(opts.get("slow", "0"))
        self.slow_after = float(opts.get("slow_after", "0"))
        self.fail_while = opts.get("fail_while")
        self.pid = os.getpid()

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    @property
    def is_healthy(self) -> bool:
        return True

    async def initialize(self) -> bool:
        return True

    async def shutdown(self) -> None:
        os.close(self.fd)

    def get_metrics(self) -> dict[str, Any]:
        return {}

    def _write(self, events: list[Event]) -> None:
        lines = "".join(f"{e.data['pub']} {e.data['i']} {self.pid}\n" for e in events)
        # NOTE: one write per call: lines reach the file (page cache) even if the
        # process is SIGKILLed right after.
        os.write(self.fd, lines.encode())

    async def consume(self, event: Event) -> bool:
        return await self.consume_batch([event]) == 1

    def _failing(self) -> bool:
        return self.fail_while is not None and os.path.exists(self.fail_while)

    async def consume_batch(self, events: list[Event]) -> int:
        if self._failing():
            return 0
        if self.slow:
            await asyncio.sleep(self.slow)
        self._write(events)
        if self.slow_after:
            await asyncio.sleep(self.slow_after)
        return len(events)


async def publish(url: str, prefix: str, n: int, batch: int) -> None:
    bus = EventBus(backend=url)
    await bus.start()

    def ev(i: int) -> Event:
        return Event(topic="log.ev", type="T", source=prefix, data={"pub": prefix, "i": i})

    if batch:
        for start in range(0, n, batch):
            k = await bus.publish_batch([ev(i) for i in range(start, min(n, start + batch))])
            assert k == min(n, start + batch) - start, k
            print("\n".join(f"ok {i}" for i in range(start, start + k)), flush=True)
    else:
        for i in range(n):
            assert await bus.publish(ev(i)) is True
            print(f"ok {i}", flush=True)
    print("DONE", flush=True)
    await bus.stop(5)


async def consume(url: str, name: str, out: str, opts: dict[str, str]) -> None:
    bus = EventBus(backend=url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bus.start()
    assert await bus.subscribe(Writer(name, out, opts))
    print("READY", flush=True)
    await stop.wait()
    await bus.stop(10)


def main() -> None:
    role, url = sys.argv[1], sys.argv[2]
    if role == "publish":
        prefix, n = sys.argv[3], int(sys.argv[4])
        batch = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        asyncio.run(publish(url, prefix, n, batch))
    elif role == "consume":
        name, out = sys.argv[3], sys.argv[4]
        opts = dict(a.split("=", 1) for a in sys.argv[5:])
        asyncio.run(consume(url, name, out, opts))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
