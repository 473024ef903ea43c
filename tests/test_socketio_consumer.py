"""SocketIOConsumer against a real python-socketio AsyncServer (aiohttp) in a subprocess."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

import pytest
from helpers.sio_helpers import Server, free_port
from mpm_events import (
    DeadLetterConsumer,
    Event,
    HookEventProducer,
    IEventConsumer,
    SocketIOConsumer,
    SystemEventProducer,
)


def ev(topic: str, i: int, **kw) -> Event:
    return Event(topic=topic, type=f"T{i}", source="test", data={"i": i, "nested": [1, "x"]}, **kw)


@pytest.fixture
async def server():
    s = await Server().start()
    yield s
    await s.stop()


async def test_legacy_names_payloads_and_stop_flushes(server, started_bus):
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{server.port}", batch_timeout=0.01, event_names="legacy"
    )
    assert isinstance(c, IEventConsumer)
    assert c.event_names == "legacy"
    cfg = c.config
    assert (cfg.name, cfg.topics, cfg.priority.name) == ("SocketIOConsumer", ["**"], "HIGH")
    assert (cfg.batch_size, cfg.max_retries, cfg.retry_backoff) == (10, 3, 2.0)
    bus = await started_bus("memory")
    await bus.subscribe(c)
    sent = [
        ev("hook.pre_tool", 0, correlation_id="c-1"),
        ev("system.heartbeat", 1),
        ev("agent.delegation", 2),
        ev("misc.thing", 3),
    ]
    for e in sent:
        assert await bus.publish(e)
    await bus.stop(timeout=10)  # stop() flushes the buffer before returning
    # The server acked every event before stop() returned; its printed lines reach
    # this process through a pipe, so wait for them to be read.
    await server.wait_for(lambda: len(server.events()) >= len(sent))
    got = server.events()
    assert [g["event"] for g in got] == [
        "hook_event",
        "system_event",
        "agent_event",
        "claude_event",
    ]
    for e, g in zip(sent, got, strict=True):
        p = g["data"]
        assert list(p) == ["id", "type", "topic", "timestamp", "source", "data", "correlation_id"]
        assert (p["id"], p["type"], p["topic"], p["source"]) == (e.id, e.type, e.topic, "test")
        assert p["data"] == {"i": int(e.type[1:]), "nested": [1, "x"]}
        assert datetime.fromisoformat(p["timestamp"]) == e.timestamp
        assert p["correlation_id"] == e.correlation_id
    m = c.get_metrics()
    assert m["events_emitted"] == 4 and m["buffered"] == 0 and m["events_failed"] == 0
    assert m["emit_latency_p50_ms"] > 0


async def test_default_is_the_dashboards_name_and_normalized_payload(server, started_bus):
    c = SocketIOConsumer(url=server.url, batch_timeout=0.01)
    assert c.event_names == "dashboard"
    bus = await started_bus("memory")
    await bus.subscribe(c)
    hook, system = HookEventProducer(bus), SystemEventProducer(bus)
    hook_data = {"hook_event_name": "PreToolUse", "session_id": "s-1", "cwd": "/proj"}
    assert await hook.publish_raw_hook_event("PreToolUse", hook_data)
    assert await hook.publish_tool_use("Read", {"session_id": "s-2"}, "text", "corr-9")
    assert await system.publish_health_status("svc", "healthy", {"db": True})
    assert await bus.publish(ev("misc.thing", 3, correlation_id="c-3"))
    await bus.stop(timeout=10)
    await server.wait_for(lambda: len(server.events()) >= 4)
    got = server.events()
    assert [g["event"] for g in got] == ["claude_event"] * 4
    payloads = {g["data"]["subtype"]: g["data"] for g in got}
    assert set(payloads) == {"pre_tool", "post_tool", "health", "t3"}
    for p in payloads.values():
        assert list(p)[:6] == ["event", "source", "type", "subtype", "timestamp", "data"]
        assert list(p)[-2:] == ["id", "topic"]
        assert p["event"] == "mpm_event"
        assert datetime.fromisoformat(p["timestamp"]).utcoffset() == timedelta(0)
    raw, tool, health, misc = (payloads[k] for k in ("pre_tool", "post_tool", "health", "t3"))
    assert (raw["type"], raw["subtype"], raw["source"]) == ("hook", "pre_tool", "hook_handler")
    assert (raw["session_id"], raw["cwd"], raw["data"]) == ("s-1", "/proj", hook_data)
    assert "correlation_id" not in raw
    assert (tool["type"], tool["subtype"], tool["session_id"]) == ("hook", "post_tool", "s-2")
    assert tool["correlation_id"] == "corr-9" and "cwd" not in tool
    assert tool["data"] == {"tool": "Read", "params": {"session_id": "s-2"}, "result": "text"}
    assert (health["type"], health["subtype"], health["source"]) == ("system", "health", "system")
    assert not {"session_id", "correlation_id", "cwd"} & set(health)
    assert (misc["type"], misc["subtype"], misc["correlation_id"]) == ("misc", "t3", "c-3")
    assert (misc["source"], misc["data"]) == ("test", {"i": 3, "nested": [1, "x"]})


def test_event_names_must_be_dashboard_or_legacy():
    with pytest.raises(ValueError, match="event_names"):
        SocketIOConsumer(event_names="modern")  # type: ignore[arg-type]


async def test_event_name_override_and_emit_per_batch(server, started_bus):
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{server.port}",
        event_name={"hook.": "claude_event"},
        emit_per_batch="batch",
        batch_size=3,
        batch_timeout=0.05,
    )
    bus = await started_bus("memory")
    await bus.subscribe(c)
    for i in range(3):
        await bus.publish(ev("hook.x", i))
    await bus.stop(timeout=10)
    await server.wait_for(lambda: len(server.events()) >= 1)
    (got,) = server.events()
    assert got["event"] == "batch" and [p["data"]["i"] for p in got["data"]] == [0, 1, 2]


async def test_server_killed_mid_stream_then_restarted_loses_nothing(server, started_bus):
    # A paced stream is still being published when the server dies (not an outage
    # between two bursts): some events reach the first server, some are in flight
    # or buffered when it dies, the rest are published while it is away.
    c = SocketIOConsumer(
        url=server.url, reconnect_delay=0.05, max_reconnect_delay=0.2, batch_size=1
    )
    bus = await started_bus("memory")
    await bus.subscribe(c)
    total = 200
    ids: list[str] = []

    async def stream() -> None:
        for i in range(total):
            e = ev("hook.a", i)
            ids.append(e.id)
            assert await bus.publish(e)
            await asyncio.sleep(0.005)  # the pace of the stream

    producer = asyncio.create_task(stream())
    await server.wait_for(lambda: len(server.events()) >= 5)
    await server.stop()
    assert not producer.done(), "the stream had ended before the server went away"
    await asyncio.wait_for(producer, 30)
    first = {g["data"]["id"] for g in server.events()}
    assert 5 <= len(first) < total
    assert await bus.join(timeout=10)
    restarted = await Server(port=server.port).start()
    try:
        await bus.stop(timeout=10)

        def received() -> list[str]:
            return [g["data"]["id"] for g in server.events() + restarted.events()]

        # Acked before stop() returned; the server's printed lines come through a pipe.
        await restarted.wait_for(lambda: set(received()) >= set(ids))
        got = received()
        assert set(got) == set(ids)  # at least once
        assert set(ids) - first <= {g["data"]["id"] for g in restarted.events()}
        dups = len(got) - len(set(got))
        m = c.get_metrics()
        assert dups <= m["resent"]  # a duplicate only where an ack was lost
        assert m["reconnections"] >= 1 and m["events_failed"] == 0
    finally:
        await restarted.stop()


async def test_no_server_for_5s_then_one_appears(started_bus):
    port = free_port()
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{port}", reconnect_delay=0.1, max_reconnect_delay=0.5
    )
    bus = await started_bus("memory")
    await bus.subscribe(c)
    for i in range(5):
        await bus.publish(ev("cli.cmd", i))
    assert await bus.join(timeout=10)  # accepted into the buffer: the lane is free
    await asyncio.sleep(5)  # the scenario: five seconds without a server
    m = c.get_metrics()
    assert not m["connected"] and m["buffered"] == 5 and m["connection_attempts"] >= 5
    srv = await Server(port=port).start()
    try:
        await srv.wait_for(lambda: len(srv.events()) == 5)
        assert [g["event"] for g in srv.events()] == ["claude_event"] * 5
        assert c.get_metrics()["connected"]
    finally:
        await bus.stop(timeout=10)
        await srv.stop()


async def test_refused_auth_goes_to_dead_letters_at_stop(tmp_path, started_bus):
    srv = await Server(auth="secret").start()
    try:
        dlc = DeadLetterConsumer(output_dir=tmp_path)
        bad = SocketIOConsumer(
            url=f"http://127.0.0.1:{srv.port}",
            auth={"token": "wrong"},
            reconnect_delay=0.05,
            flush_timeout=0.3,
        )
        good = SocketIOConsumer(
            url=f"http://127.0.0.1:{srv.port}", auth={"token": "secret"}, name="GoodSIO"
        )
        bus = await started_bus("memory")
        for x in (dlc, bad, good):
            await bus.subscribe(x)
        e = ev("hook.x", 1)
        await bus.publish(e)
        await srv.wait_for(lambda: any("refused" in x for x in srv.lines))
        await bus.stop(timeout=10)
        await srv.wait_for(lambda: len(srv.events()) >= 1)
        assert [g["data"]["id"] for g in srv.events()] == [e.id]  # only the good client
        m = bad.get_metrics()
        assert not m["connected"] and m["last_error"] and m["events_dead_lettered"] == 1
        (replayed,) = await dlc.replay_events()
        assert replayed.id == e.id
        (line,) = [json.loads(x) for f in dlc.files() for x in f.read_text().splitlines()]
        assert line["dead_letter"]["consumer"] == "SocketIOConsumer"
    finally:
        await srv.stop()


async def test_buffer_overflow_goes_to_dead_letters(tmp_path, started_bus):
    port = free_port()  # nobody listens
    dlc = DeadLetterConsumer(output_dir=tmp_path)
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{port}", buffer_limit=3, batch_size=10, flush_timeout=0.2
    )
    bus = await started_bus("memory")
    await bus.subscribe(dlc)
    await bus.subscribe(c)
    ids = []
    for i in range(10):
        e = ev("hook.a", i)
        ids.append(e.id)
        await bus.publish(e)
    assert await bus.join(timeout=10)  # 7 rejected, retried 3 times, dead-lettered
    overflow = [d for d in bus.get_dead_letters()]
    assert len(overflow) == 7
    assert c.get_metrics()["buffered"] == 3
    await bus.stop(timeout=10)  # the 3 buffered ones cannot be flushed either
    stored = [e.id for e in await dlc.replay_events()]
    assert sorted(stored) == sorted(ids)
    recs = [json.loads(x) for f in dlc.files() for x in f.read_text().splitlines()]
    assert sum("buffer full" in r["dead_letter"]["errors"][-1] for r in recs) == 7
    assert all(r["dead_letter"]["consumer"] == "SocketIOConsumer" for r in recs)
