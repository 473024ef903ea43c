"""SocketIOConsumer against claude-mpm 5.9.10's REAL dashboard server.

``helpers/dashboard_server.py`` runs claude-mpm's own ``UnifiedMonitorServer`` (what
``claude-mpm monitor`` starts) on a free port in a process of its own; a
python-socketio ``AsyncClient`` stands in for the dashboard's browser page and
records what the server broadcasts (``claude_event`` and ``hook:event``). Every
producer method of ``HookEventProducer`` and ``SystemEventProducer`` publishes through
a bus with a default ``SocketIOConsumer(url=...)``: the server must handle each event
(it broadcasts only what its ``claude_event`` handler processed, and acks it), and
the browser must see it with the subtype claude-mpm's own hook handler gives for the
same hook (never "unknown"), the published ``session_id`` at the top level and a
parseable UTC timestamp; ``stop()`` must return promptly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, wait_until
from helpers.dashboard import BROADCASTS, Browser, Dashboard
from mpm_events import Event, HookEventProducer, SocketIOConsumer, SystemEventProducer

# (producer method, call, expected type, expected subtype); each call publishes one
# event carrying the session id it is given. The subtypes of the Claude Code hooks are
# those claude-mpm's hook handler emits for them (hooks/claude_hooks/event_handlers.py).
Call = Callable[[HookEventProducer, SystemEventProducer, str], Awaitable[Any]]


def raw_hook(name: str, **fields: Any) -> Call:
    def call(h: HookEventProducer, s: SystemEventProducer, sid: str) -> Awaitable[Any]:
        data = {"hook_event_name": name, "session_id": sid, "cwd": "/work/proj", **fields}
        return h.publish_raw_hook_event(name, data)

    return call


CASES: list[tuple[str, Call, str, str]] = [
    (
        "HookEventProducer.publish_response",
        lambda h, s, sid: h.publish_response({"content": "hi", "session_id": sid, "cwd": "/p"}),
        "hook",
        "assistant_response",
    ),
    (
        "HookEventProducer.publish_tool_use",
        lambda h, s, sid: h.publish_tool_use("Read", {"file_path": "/x", "session_id": sid}),
        "hook",
        "pre_tool",
    ),
    (
        "HookEventProducer.publish_tool_use",
        lambda h, s, sid: h.publish_tool_use(
            "Read", {"file_path": "/x", "session_id": sid}, "contents", "corr-1"
        ),
        "hook",
        "post_tool",
    ),
    (
        "HookEventProducer.publish_error",
        lambda h, s, sid: h.publish_error("ToolError", "boom", {"session_id": sid}),
        "error",
        "hook_error",
    ),
    (
        "HookEventProducer.publish_subagent_event",
        lambda h, s, sid: h.publish_subagent_event("research", "Start", {"session_id": sid}),
        "hook",
        "subagent_start",
    ),
    (
        "HookEventProducer.publish_subagent_event",
        lambda h, s, sid: h.publish_subagent_event("research", "Stop", {"session_id": sid}),
        "hook",
        "subagent_stop",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("UserPromptSubmit", prompt="fix the bug"),
        "hook",
        "user_prompt",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("PreToolUse", tool_name="Bash", tool_input={"command": "ls"}),
        "hook",
        "pre_tool",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("PostToolUse", tool_name="Bash", tool_response={"stdout": ""}),
        "hook",
        "post_tool",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("Notification", message="waiting for input"),
        "hook",
        "notification",
    ),
    ("HookEventProducer.publish_raw_hook_event", raw_hook("Stop"), "hook", "stop"),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("SubagentStart", agent_type="research"),
        "hook",
        "subagent_start",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("SubagentStop", agent_type="research", reason="done"),
        "hook",
        "subagent_stop",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("SessionStart"),
        "hook",
        "session_start",
    ),
    (
        "HookEventProducer.publish_raw_hook_event",
        raw_hook("AssistantResponse", response="done"),
        "hook",
        "assistant_response",
    ),
    (
        "HookEventProducer.publish",
        lambda h, s, sid: h.publish(
            Event(topic="hook.custom", type="CustomHook", source="tests", data={"session_id": sid})
        ),
        "hook",
        "custom_hook",
    ),
    (
        "HookEventProducer.publish_batch",
        lambda h, s, sid: h.publish_batch(
            [Event(topic="hook.batch", type="BatchedHook", source="tests", data={"sessionId": sid})]
        ),
        "hook",
        "batched_hook",
    ),
    (
        "SystemEventProducer.publish_startup",
        lambda h, s, sid: s.publish_startup("svc", "1.0", {"session_id": sid}),
        "system",
        "startup",
    ),
    (
        "SystemEventProducer.publish_shutdown",
        lambda h, s, sid: s.publish_shutdown("svc", "normal", {"session_id": sid}),
        "system",
        "shutdown",
    ),
    (
        "SystemEventProducer.publish_health_status",
        lambda h, s, sid: s.publish_health_status(
            "svc", "degraded", {"db": False}, {"session_id": sid}
        ),
        "system",
        "health",
    ),
    (
        "SystemEventProducer.publish_config_change",
        lambda h, s, sid: s.publish_config_change("svc", "session", None, {"session_id": sid}),
        "system",
        "config_change",
    ),
    (
        "SystemEventProducer.publish_performance_metrics",
        lambda h, s, sid: s.publish_performance_metrics("svc", {"session_id": sid, "p99_ms": 3}),
        "performance",
        "metrics",
    ),
    (
        "SystemEventProducer.publish_error",
        lambda h, s, sid: s.publish_error("svc", "Crash", "bad", None, {"session_id": sid}),
        "error",
        "system_error",
    ),
    (
        "SystemEventProducer.publish_warning",
        lambda h, s, sid: s.publish_warning("svc", "Slow", "slow", {"session_id": sid}),
        "system",
        "warning",
    ),
    (
        "SystemEventProducer.publish",
        lambda h, s, sid: s.publish(
            Event(
                topic="system.heartbeat", type="Heartbeat", source="tests", data={"session_id": sid}
            )
        ),
        "system",
        "heartbeat",
    ),
    (
        "SystemEventProducer.publish_batch",
        lambda h, s, sid: s.publish_batch(
            [Event(topic="system.sample", type="", source="tests", data={"session_id": sid})]
        ),
        "system",
        "sample",
    ),
]


def test_every_producer_method_has_a_case():
    methods = {
        f"{cls.__name__}.{name}"
        for cls in (HookEventProducer, SystemEventProducer)
        for name in dir(cls)
        if name.startswith("publish")
    }
    assert methods == {name for name, *_ in CASES}


async def test_every_producer_method_reaches_the_browser(dashboard, browser, started_bus):
    bus = await started_bus("memory")
    consumer = SocketIOConsumer(url=dashboard.url)  # the default: the dashboard's protocol
    assert consumer.event_names == "dashboard"
    seen = Recorder("seen")
    assert await bus.subscribe(consumer)
    assert await bus.subscribe(seen)
    hook, system = HookEventProducer(bus), SystemEventProducer(bus)
    sids = [f"session-{i}" for i in range(len(CASES))]
    for (name, call, *_), sid in zip(CASES, sids, strict=True):
        assert await call(hook, system, sid) in (True, 1), name
    assert await bus.join(timeout=10)

    began = time.monotonic()
    await bus.stop(timeout=10)
    took = time.monotonic() - began
    # The server acked every event (it acks what its claude_event handler handled),
    # so stop() had nothing to wait for; unacked events would hold it for the
    # 10 s ack timeout and then fail.
    assert took < 2.5, f"stop() took {took:.2f} s"
    m = consumer.get_metrics()
    assert (m["events_emitted"], m["unacked"], m["events_failed"]) == (len(CASES), 0, 0), m
    assert bus.get_metrics()["consumer_stats"][consumer.config.name]["dead_lettered"] == 0

    def complete() -> bool:
        return all(len(browser.got(name)) >= len(CASES) for name in BROADCASTS)

    try:
        await browser.wait_for(complete)
    except TimeoutError:
        pytest.fail(
            f"the browser got {[(n, len(browser.got(n))) for n in BROADCASTS]} of "
            f"{len(CASES)} events\n{dashboard.stderr()}"
        )
    events = {e.id: e for e in (c.event for c in seen.calls)}
    problems = []
    for name in BROADCASTS:
        got = browser.got(name)
        assert len(got) == len(CASES), f"{name}: duplicates or strangers"
        by_session = {g.get("session_id"): g for g in got}
        for (method, _, kind, subtype), sid in zip(CASES, sids, strict=True):
            g = by_session.get(sid)
            if g is None:
                problems.append(f"{name} {method} -> {subtype}: no event with session_id {sid}")
                continue
            e = events[g["original_event"]["id"]]
            stamp = datetime.fromisoformat(g["timestamp"])
            have = (g["type"], g["subtype"], stamp.utcoffset(), stamp, g["source"])
            want = (kind, subtype, timedelta(0), e.timestamp, e.source)
            if have != want or g["subtype"] == "unknown":
                problems.append(f"{name} {method}: got {have}, want {want}")
            if g["original_event"]["topic"] != e.topic or g["data"] != e.data:
                problems.append(f"{name} {method}: topic or data changed on the way")
    assert not problems, "\n".join(problems)

    # What the server passes through in the original payload (the browser also reads
    # `cwd` and pairs tools by `correlation_id`).
    got = {g["session_id"]: g["original_event"] for g in browser.got("claude_event")}
    for (method, _call, _, subtype), sid in zip(CASES, sids, strict=True):
        original = got[sid]
        assert original["event"] == "mpm_event" and original["session_id"] == sid
        if method.endswith("publish_raw_hook_event"):
            assert original["cwd"] == "/work/proj", method
        if subtype == "post_tool" and method.endswith("publish_tool_use"):
            assert original["correlation_id"] == "corr-1"
    assert got[sids[0]]["cwd"] == "/p"  # publish_response's payload carried it


async def test_the_demo_reaches_the_real_dashboard(dashboard, browser, tmp_path):
    # `python -m mpm_events demo --socketio URL`, as a user would try it.
    before = len(browser.got("claude_event"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mpm_events",
        "demo",
        "--events",
        "60",
        "--rate",
        "0",
        "--output-dir",
        str(tmp_path),
        "--socketio",
        dashboard.url,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    await browser.wait_for(lambda: len(browser.got("claude_event")) >= before + 60)
    got = browser.got("claude_event")[before:]
    assert len(got) == 60
    subtypes = {g["subtype"] for g in got}
    assert {"startup", "post_tool", "assistant_response", "shutdown"} <= subtypes
    assert "unknown" not in subtypes
    for g in got:
        assert datetime.fromisoformat(g["timestamp"]).utcoffset() == timedelta(0)


EXAMPLE_HOOK = Path(__file__).parent.parent / "examples" / "hook_handler.py"


async def test_the_example_hook_handler_reaches_the_real_dashboard(dashboard, browser, tmp_path):
    # examples/hook_handler.py as Claude Code runs it, one short-lived process per hook.
    hooks = [
        {"hook_event_name": "UserPromptSubmit", "prompt": "fix it"},
        {"hook_event_name": "PreToolUse", "tool_name": "Read", "tool_input": {"file_path": "/r"}},
        {"hook_event_name": "PostToolUse", "tool_name": "Read", "tool_response": {"ok": True}},
        {"hook_event_name": "Stop", "reason": "completed"},
    ]
    env = dict(
        os.environ,
        MPM_EVENTS_DASHBOARD_URL=dashboard.url,
        MPM_EVENTS_HOOK_LOG=str(tmp_path / "hooks.log"),
    )
    for hook in hooks:
        stdin = json.dumps({**hook, "session_id": "claude-session-1", "cwd": "/repo"})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE_HOOK),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
        assert json.loads(out) == {"continue": True}, err.decode()
        assert err == b"", err.decode()  # delivered: no "not delivered" complaint
    await browser.wait_for(lambda: len(browser.got("claude_event")) >= len(hooks))
    got = browser.got("claude_event")
    assert sorted(g["subtype"] for g in got) == sorted(
        ["user_prompt", "pre_tool", "post_tool", "stop"]
    )
    assert {(g["type"], g["session_id"]) for g in got} == {("hook", "claude-session-1")}
    assert {g["original_event"]["cwd"] for g in got} == {"/repo"}


async def test_dashboard_down_then_back_within_the_retry_window(tmp_path, started_bus):
    """The real dashboard goes away mid-session and comes back. A consumer whose retry
    window covers the outage delivers every event once; one with a short window
    dead-letters what it could not deliver, with the reason, and neither blocks the
    publisher or stop()."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Dashboard(tmp_path / "first")
    browser = Browser()
    try:
        await browser.sio.connect(first.url, transports=["websocket"], wait_timeout=10)
        bus = await started_bus("memory")
        patient = SocketIOConsumer(
            url=first.url, reconnect_delay=0.1, retry_delay=0.3, max_retries=7, name="patient"
        )
        impatient = SocketIOConsumer(
            url=first.url, reconnect_delay=0.1, retry_delay=0.05, max_retries=1, name="impatient"
        )
        assert await bus.subscribe(patient) and await bus.subscribe(impatient)
        hook = HookEventProducer(bus)

        async def publish(tag: str, n: int) -> list[str]:
            before = len(seen.calls)
            for i in range(n):
                data = {"hook_event_name": "PreToolUse", "session_id": f"{tag}-{i}", "cwd": "/p"}
                t0 = time.monotonic()
                assert await hook.publish_raw_hook_event("PreToolUse", data)
                assert time.monotonic() - t0 < 0.5, "publish() waited for the dashboard"
            await wait_until(lambda: len(seen.calls) >= before + n, 10, "seen got them")
            return [c.id for c in seen.calls[before:]]

        seen = Recorder("seen")
        assert await bus.subscribe(seen)
        before = await publish("before", 3)
        await browser.wait_for(lambda: len(browser.got("claude_event")) >= 2 * len(before))
        await browser.sio.disconnect()
        first.stop()  # the dashboard goes away

        during = await publish("during", 5)

        def dead(name: str) -> list[dict[str, Any]]:
            return [d for d in bus.get_dead_letters() if d["consumer"] == name]

        await wait_until(lambda: len(dead("impatient")) == len(during), 10, "dead-lettered")
        for d in dead("impatient"):
            assert "cannot reach the Socket.IO server" in d["errors"][-1], d["errors"]
        assert not dead("patient")

        second = Dashboard(tmp_path / "second", port=first.port)  # back where it was
        try:
            browser = Browser()
            await browser.sio.connect(second.url, transports=["websocket"], wait_timeout=10)
            assert await bus.join(timeout=30)
            await bus.stop(timeout=10)
            # NOTE: the patient consumer may have delivered before the browser
            # connected; the server's history has everything its handler processed.
            got = [e["id"] for e in await browser.history()]
            assert sorted(got) == sorted(during), "each event once, from the patient consumer"
            stats = bus.get_metrics()["consumer_stats"]
            assert (stats["patient"]["processed"], stats["patient"]["dead_lettered"]) == (8, 0)
            assert stats["patient"]["failed"] >= len(during)
            assert (stats["impatient"]["processed"], stats["impatient"]["dead_lettered"]) == (3, 5)
            assert patient.get_metrics()["reconnections"] >= 1
        finally:
            await browser.sio.disconnect()
            second.stop()
    finally:
        first.stop()
