"""``mpm-events relay``: forwards the shared event log to a dashboard.

A long-running process: subscribes one dashboard consumer under the consumer name
``dashboard-relay`` to the shared log (``EventBus(backend=URL)``) and forwards until
SIGTERM/SIGINT, then stops gracefully (exit 0). The consumer is a
:class:`~mpm_events.SocketIOConsumer` for a ``http(s)://``/``ws(s)://`` dashboard
URL, or an :class:`~mpm_events.HttpConsumer` for a URL ending in ``/api/events``
(or with ``via="http"``). It is ``ordered`` with practically unlimited retries
(``max_retry_delay`` 5 s): while the dashboard is away the relay holds its place
and retries, and when it comes back the events arrive once each, in log order.
Events published while the relay was not running wait in the log (the name starts
at the earliest entry the first time, and keeps its position after that).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

#: The consumer name (the group in the log) the relay reads as.
RELAY_NAME = "dashboard-relay"
#: Retries of one event: enough to outlast any outage (at 5 s apart, decades).
RELAY_MAX_RETRIES = 1_000_000_000
#: Longest wait between two retries while the dashboard is away, seconds.
RELAY_MAX_RETRY_DELAY = 5.0


def make_consumer(to: str, via: str | None = None) -> Any:
    """The dashboard consumer of the relay for URL ``to``.

    Raises:
        ValueError: ``via`` is not ``"http"``/``"socketio"``, or the URL is not
            ``http(s)://`` or ``ws(s)://``.
    """
    from mpm_events import HttpConsumer, SocketIOConsumer

    scheme = to.split("://", 1)[0].lower() if "://" in to else ""
    if via is None:
        via = "http" if to.rstrip("/").endswith("/api/events") else "socketio"
    if via not in ("http", "socketio"):
        raise ValueError(f"--via must be http or socketio, not {via!r}")
    allowed = ("http", "https") if via == "http" else ("http", "https", "ws", "wss")
    if scheme not in allowed:
        raise ValueError(f"--to {to!r}: expected a {' or '.join(s + '://' for s in allowed)} URL")
    consumer: Any
    if via == "http":
        consumer = HttpConsumer(
            to,
            name=RELAY_NAME,
            batch_size=1,
            max_retries=RELAY_MAX_RETRIES,
            retry_delay=0.2,
            max_retry_delay=RELAY_MAX_RETRY_DELAY,
        )
    else:
        consumer = SocketIOConsumer(
            url=to,
            name=RELAY_NAME,
            batch_size=1,
            batch_timeout=0.0,
            reconnect_delay=0.2,
            max_reconnect_delay=RELAY_MAX_RETRY_DELAY,
            max_retries=RELAY_MAX_RETRIES,
            retry_delay=0.2,
        )
    config = consumer.config
    # NOTE: a failed attempt holds the lane until its retry, so the order of the log
    # is kept across an outage; one event per attempt (batch_size 1) for the same.
    config.ordered = True
    config.max_retries = RELAY_MAX_RETRIES
    config.max_retry_delay = RELAY_MAX_RETRY_DELAY
    return consumer


async def run(backend: str, to: str, via: str | None = None) -> int:
    """Relays until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop,
    2 for bad arguments or a log that cannot be opened)."""
    from mpm_events import EventBus, EventBusError

    try:
        consumer = make_consumer(to, via)
        bus = EventBus(backend=backend)
    except (ValueError, EventBusError) as exc:
        print(f"mpm-events relay: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bus.start()
    if not await bus.subscribe(consumer):
        await bus.stop(5)
        print(f"mpm-events relay: could not subscribe the consumer for {to}", file=sys.stderr)
        return 2
    print(f"mpm-events relay: forwarding {backend} to {to} as {RELAY_NAME}", flush=True)
    await stop.wait()
    # NOTE: what is not delivered by then stays in the log for the next relay.
    await bus.stop(5)
    print("mpm-events relay: stopped", flush=True)
    return 0
