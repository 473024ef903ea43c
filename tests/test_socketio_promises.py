"""SocketIOConsumer promises of the README, the stub and the reference API that had
no test (issue 9): the original's constructor arguments, the default backoff (1 s
doubling to 30 s), ``namespace``, and ``headers`` as seen by a real python-socketio
server (``helpers/sio_server.py``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest
from conftest import BUS_KINDS, make_event
from helpers.sio_helpers import Server
from mpm_events import SocketIOConsumer

kinds = pytest.mark.parametrize("kind", BUS_KINDS)


@pytest.fixture
async def server():
    s = await Server().start()
    try:
        yield s
    finally:
        await s.stop()


async def deliver(
    started_bus, consumer: SocketIOConsumer, server: Server, n: int, kind: str = "memory"
) -> list[str]:
    """Publish ``n`` events through ``consumer`` and wait until the server has them."""
    bus = await started_bus(kind)
    assert await bus.subscribe(consumer)
    sent = [make_event("hook.tool", {"i": i}) for i in range(n)]
    assert await bus.publish_batch(sent) == n
    await bus.stop(timeout=10)  # flushes the consumer's buffer
    await server.wait_for(lambda: len(server.events()) >= n)
    assert [g["data"]["id"] for g in server.events()] == [e.id for e in sent]
    return [e.id for e in sent]


def test_defaults_are_the_originals():
    c = SocketIOConsumer()
    assert c.url == "http://127.0.0.1:8765"
    assert c.port_range == (8765, 8785)
    assert (c.reconnect_delay, c.max_reconnect_delay) == (1.0, 30.0)
    assert (c.batch_size, c.batch_timeout, c.buffer_limit) == (10, 0.1, 10_000)
    assert c.namespace == "/"
    cfg = c.config
    assert (cfg.name, cfg.batch_size, cfg.batch_timeout) == ("SocketIOConsumer", 10, 0.1)


@kinds
async def test_the_originals_positional_arguments(started_bus, kind, server):
    port = server.port
    c = SocketIOConsumer(server.url, (port, port + 20), 0.5, 10.0, 5, 0.05)
    assert c.url == server.url
    assert c.port_range == (port, port + 20)
    assert (c.reconnect_delay, c.max_reconnect_delay) == (0.5, 10.0)
    assert (c.batch_size, c.batch_timeout) == (5, 0.05)
    assert (c.config.batch_size, c.config.batch_timeout) == (5, 0.05)
    await deliver(started_bus, c, server, 7, kind)


async def test_port_range_chooses_the_default_url(started_bus, server):
    c = SocketIOConsumer(port_range=(server.port, server.port + 20))
    assert c.url == f"http://127.0.0.1:{server.port}"
    await deliver(started_bus, c, server, 2)


async def test_a_server_object_is_not_used_and_says_so(started_bus, server, caplog):
    caplog.set_level(logging.WARNING, logger="mpm_events")
    c = SocketIOConsumer(object(), port_range=(server.port, server.port + 1))
    assert any("url=" in r.getMessage() for r in caplog.records), caplog.records
    assert c.url == server.url
    await deliver(started_bus, c, server, 1)


async def _connection_attempts(started_bus, n: int, within: float, **kw) -> list[float]:
    """Times of the first ``n`` TCP connections a consumer makes to a listener that
    closes each at once (so every attempt fails and is retried)."""
    times: list[float] = []
    enough = asyncio.Event()

    async def handle(reader, writer):
        times.append(time.monotonic())
        writer.close()
        if len(times) >= n:
            enough.set()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        c = SocketIOConsumer(url=f"http://127.0.0.1:{port}", flush_timeout=0.5, **kw)
        bus = await started_bus("memory")
        assert await bus.subscribe(c)
        await asyncio.wait_for(enough.wait(), within)
        await bus.stop(timeout=5)
    finally:
        listener.close()
    return [b - a for a, b in itertools.pairwise(times[:n])]


async def test_default_backoff_starts_at_one_second_and_doubles(started_bus):
    gaps = await _connection_attempts(started_bus, 4, within=30)  # defaults: 1, 2, 4 s
    for gap, nominal in zip(gaps, [1.0, 2.0, 4.0], strict=True):
        # never early; late only by scheduling (generous for a loaded 2-core machine)
        assert nominal * 0.95 <= gap <= nominal * 1.5 + 0.3, (gaps, nominal)


async def test_backoff_doubles_up_to_max_reconnect_delay(started_bus):
    gaps = await _connection_attempts(
        started_bus, 7, within=30, reconnect_delay=0.1, max_reconnect_delay=0.4
    )
    nominal = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]  # uncapped: 0.8, 1.6, 3.2 s
    for gap, want in zip(gaps, nominal, strict=True):
        assert gap >= want * 0.95, (gaps, want)
    assert max(gaps[3:]) < 0.8 * 0.95, f"the delay grew past max_reconnect_delay: {gaps}"


@kinds
async def test_namespace(started_bus, kind):
    srv = await Server(namespace="/dashboard").start()
    try:
        c = SocketIOConsumer(url=srv.url, namespace="/dashboard")
        assert c.namespace == "/dashboard"
        await deliver(started_bus, c, srv, 3, kind)
        assert {x["namespace"] for x in srv.connects()} == {"/dashboard"}
    finally:
        await srv.stop()


@kinds
async def test_headers_reach_the_server(started_bus, kind, server):
    c = SocketIOConsumer(url=server.url, headers={"X-Token": "abc123", "X-Client": "tests"})
    await deliver(started_bus, c, server, 1, kind)
    (first, *_) = server.connects()
    assert first["headers"]["x-token"] == "abc123"
    assert first["headers"]["x-client"] == "tests"
