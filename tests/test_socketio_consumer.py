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
    # when it dies, the rest are published while it is away. Their attempts fail
    # (connection refused) and are retried; the server is back within the retry
    # window (retries 0.2 s doubling, 8 of them), so every event arrives.
    c = SocketIOConsumer(
        url=server.url,
        reconnect_delay=0.05,
        max_reconnect_delay=0.2,
        batch_size=1,
        retry_delay=0.2,
        max_retries=8,
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
    failed_while_away = bus.get_metrics()["consumer_stats"]["SocketIOConsumer"]["failed"]
    assert failed_while_away > 0, "attempts while the server was away must fail"
    restarted = await Server(port=server.port).start()
    try:
        assert await bus.join(timeout=30)  # every event acknowledged by a server

        def received() -> list[str]:
            return [g["data"]["id"] for g in server.events() + restarted.events()]

        # Acked before join() returned; the server's printed lines come through a pipe.
        await restarted.wait_for(lambda: set(received()) >= set(ids))
        got = received()
        assert set(got) == set(ids)  # at least once
        assert set(ids) - first <= {g["data"]["id"] for g in restarted.events()}
        dups = len(got) - len(set(got))
        m = c.get_metrics()
        # A duplicate only where an ack was lost: resent by the consumer, or
        # failed after it was written and retried by the bus.
        assert dups <= m["maybe_duplicated"]
        assert m["reconnections"] >= 1 and m["unreachable"] > 0
        bm = bus.get_metrics()
        assert bm["events_dead_lettered"] == 0 and bm["events_processed"] == total
        await bus.stop(timeout=10)
    finally:
        await restarted.stop()


async def test_no_server_retries_then_dead_letters_then_replays(started_bus):
    port = free_port()
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{port}", reconnect_delay=0.1, retry_delay=0.1, max_retries=2
    )
    bus = await started_bus("memory")
    await bus.subscribe(c)
    sent = [ev("cli.cmd", i) for i in range(5)]
    for e in sent:
        await bus.publish(e)
    # Every attempt fails (connection refused), is retried, then dead-lettered.
    assert await bus.join(timeout=10)
    letters = bus.get_dead_letters()
    assert sorted(d["event"].id for d in letters) == sorted(e.id for e in sent)
    for d in letters:
        assert d["attempts"] == 3 and len(d["errors"]) == 3
        assert all("cannot reach the Socket.IO server" in x for x in d["errors"]), d["errors"]
    m = c.get_metrics()
    assert not m["connected"] and m["events_emitted"] == 0 and m["buffered"] == 0
    assert m["events_failed"] == 15 == m["unreachable"] and "refused" in m["last_error"].lower()
    stats = bus.get_metrics()["consumer_stats"]["SocketIOConsumer"]
    assert (stats["processed"], stats["failed"], stats["dead_lettered"]) == (0, 15, 5)
    srv = await Server(port=port).start()
    try:
        late = ev("cli.cmd", 9)
        await bus.publish(late)  # the next attempt connects: the server is back
        assert bus.replay_dead_letters() == 5
        assert await bus.join(timeout=10)
        await srv.wait_for(lambda: len(srv.events()) == 6)
        got = [g["data"]["id"] for g in srv.events()]
        assert sorted(got) == sorted([e.id for e in sent] + [late.id])  # each once
        assert [g["event"] for g in srv.events()] == ["claude_event"] * 6
        assert c.get_metrics()["connected"] and not bus.get_dead_letters()
    finally:
        await bus.stop(timeout=10)
        await srv.stop()


async def test_refused_auth_fails_attempts_then_dead_letters(tmp_path, started_bus):
    srv = await Server(auth="secret").start()
    try:
        dlc = DeadLetterConsumer(output_dir=tmp_path)
        bad = SocketIOConsumer(
            url=f"http://127.0.0.1:{srv.port}",
            auth={"token": "wrong"},
            reconnect_delay=0.05,
            retry_delay=0.05,
            max_retries=1,
        )
        good = SocketIOConsumer(
            url=f"http://127.0.0.1:{srv.port}", auth={"token": "secret"}, name="GoodSIO"
        )
        bus = await started_bus("memory")
        for x in (dlc, bad, good):
            await bus.subscribe(x)
        e = ev("hook.x", 1)
        await bus.publish(e)
        assert await bus.join(timeout=10)
        await bus.stop(timeout=10)
        await srv.wait_for(lambda: len(srv.events()) >= 1)
        assert [g["data"]["id"] for g in srv.events()] == [e.id]  # only the good client
        m = bad.get_metrics()
        assert not m["connected"] and m["events_emitted"] == 0
        assert "bad auth token" in m["last_error"]
        (letter,) = bus.get_dead_letters()
        assert letter["consumer"] == "SocketIOConsumer"
        assert "bad auth token" in letter["errors"][-1]
        (replayed,) = await dlc.replay_events()
        assert replayed.id == e.id
        (line,) = [json.loads(x) for f in dlc.files() for x in f.read_text().splitlines()]
        assert line["dead_letter"]["consumer"] == "SocketIOConsumer"
    finally:
        await srv.stop()


async def test_no_ack_within_ack_timeout_is_a_failed_attempt(started_bus):
    # The server handles only claude_event: the legacy names get no handler and no
    # ack, as on claude-mpm's real server. Those attempts fail after ack_timeout,
    # are retried, and end in the dead letters, counted failed, never delivered.
    srv = await Server(events=["claude_event"]).start()
    try:
        c = SocketIOConsumer(
            url=srv.url,
            event_names="legacy",
            ack_timeout=0.3,
            retry_delay=0.05,
            max_retries=1,
            batch_timeout=0.01,
        )
        bus = await started_bus("memory")
        await bus.subscribe(c)
        unhandled, handled = ev("hook.pre_tool", 1), ev("misc.thing", 2)  # hook_event, claude_event
        await bus.publish(unhandled)
        await bus.publish(handled)
        assert await bus.join(timeout=10)
        (letter,) = bus.get_dead_letters()
        assert letter["event"].id == unhandled.id and letter["attempts"] == 2
        assert all("no ack from the Socket.IO server within 0.300s" in x for x in letter["errors"])
        m = c.get_metrics()
        assert (m["events_emitted"], m["events_failed"], m["ack_timeouts"]) == (1, 2, 2), m
        assert m["unacked"] == 0 and m["buffered"] == 0 and m["in_flight"] == 0
        stats = bus.get_metrics()["consumer_stats"]["SocketIOConsumer"]
        assert (stats["processed"], stats["dead_lettered"]) == (1, 1)
        await srv.wait_for(lambda: len(srv.events()) >= 1)
        assert [g["data"]["id"] for g in srv.events()] == [handled.id]
        t0 = asyncio.get_running_loop().time()
        await bus.stop(timeout=10)
        assert asyncio.get_running_loop().time() - t0 < 2  # nothing left to wait for
    finally:
        await srv.stop()


async def test_require_ack_false_counts_written_events_delivered(started_bus):
    srv = await Server(events=["claude_event"]).start()
    try:
        c = SocketIOConsumer(url=srv.url, event_names="legacy", require_ack=False)
        assert c.require_ack is False and c.ack_timeout == 10.0
        bus = await started_bus("memory")
        await bus.subscribe(c)
        await bus.publish(ev("hook.pre_tool", 1))  # no handler on the server: no ack
        await bus.publish(ev("misc.thing", 2))
        assert await bus.join(timeout=10)
        m = c.get_metrics()
        assert (m["events_emitted"], m["unacked"], m["events_failed"]) == (2, 2, 0), m
        assert not bus.get_dead_letters()
        await srv.wait_for(lambda: len(srv.events()) >= 1)  # the handled one
        await bus.stop(timeout=10)
    finally:
        await srv.stop()


def test_ack_timeout_must_be_positive():
    with pytest.raises(ValueError, match="ack_timeout must be a positive number"):
        SocketIOConsumer(ack_timeout=0)


async def test_buffer_overflow_fails_the_attempt(tmp_path, started_bus):
    port = free_port()  # nobody listens
    dlc = DeadLetterConsumer(output_dir=tmp_path)
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{port}", buffer_limit=3, batch_size=10, max_retries=0
    )
    bus = await started_bus("memory")
    await bus.subscribe(dlc)
    await bus.subscribe(c)
    batch = [ev("hook.a", i) for i in range(10)]
    # NOTE: one publish_batch: the lane sees all 10 at once, one consume of 10,
    # of which 3 fit the emitter's buffer.
    assert await bus.publish_batch(batch) == 10
    assert await bus.join(timeout=10)
    assert c.get_metrics()["buffered"] == 0
    await bus.stop(timeout=10)
    stored = [e.id for e in await dlc.replay_events()]
    assert sorted(stored) == sorted(e.id for e in batch)
    recs = [json.loads(x) for f in dlc.files() for x in f.read_text().splitlines()]
    assert sum("buffer full" in r["dead_letter"]["errors"][-1] for r in recs) == 7
    assert sum("cannot reach" in r["dead_letter"]["errors"][-1] for r in recs) == 3
    assert all(r["dead_letter"]["consumer"] == "SocketIOConsumer" for r in recs)
