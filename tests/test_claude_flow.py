"""The whole Claude Code flow with real processes: `mpm-events hook` processes (one per
hook, as Claude Code starts them) append to the shared SQLite log, `mpm-events relay`
forwards the log to claude-mpm's REAL dashboard server, and the dashboard goes away
mid-session and comes back on the same port. Nothing is lost: every hook reaches the
dashboard once, in order per session, and the hooks never wait for the dashboard."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_real import Browser, Dashboard

SESSIONS = ("s-1", "s-2")


def hook(url: str, session: str, n: int, home: Path) -> float:
    """Runs one `mpm-events hook` process for prompt `n` of `session`; its wall time."""
    stdin = json.dumps(
        {
            "hook_event_name": "UserPromptSubmit",
            "session_id": session,
            "cwd": "/work/proj",
            "prompt": f"{session}/{n}",
        }
    )
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "mpm_events", "hook", "--backend", url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, HOME=str(home)),
    )
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"continue": True}, out.stdout
    assert out.stderr == "", out.stderr
    return took


def start_relay(url: str, to: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mpm_events", "relay", "--backend", url, "--to", to],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def prompts(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The prompt numbers the dashboard holds, per session, in its order."""
    got: dict[str, list[int]] = {s: [] for s in SESSIONS}
    for e in events:
        session, n = e["data"]["prompt"].split("/")
        assert e["session_id"] == session and e["subtype"] == "user_prompt", e
        got[session].append(int(n))
    return got


async def wait_for_history(
    browser: Browser, count: int, within: float, what: str
) -> dict[str, list[int]]:
    """The dashboard's history once it holds `count` of our hooks (polled, since the
    relay may deliver before the browser connected)."""
    end = time.monotonic() + within
    for _ in range(10_000):
        got = prompts(await browser.history())
        if sum(len(v) for v in got.values()) >= count:
            return got
        if time.monotonic() > end:
            break
        await asyncio.sleep(0.1)
    pytest.fail(f"the dashboard never got {what}: {got}")


async def test_hooks_through_the_log_and_relay_survive_a_dashboard_restart(tmp_path: Path):
    for d in ("first", "second", "home"):
        (tmp_path / d).mkdir()
    url = f"sqlite:///{tmp_path / 'events.db'}"
    first = Dashboard(tmp_path / "first")
    relay = start_relay(url, first.url)
    second = None
    try:
        assert relay.stdout is not None
        assert "forwarding" in relay.stdout.readline()
        browser = Browser()
        await browser.sio.connect(first.url, transports=["websocket"], wait_timeout=10)
        for n in range(5):
            for s in SESSIONS:
                await asyncio.to_thread(hook, url, s, n, tmp_path / "home")

        before = await wait_for_history(browser, 10, 30, "the first hooks")
        await browser.sio.disconnect()
        first.stop()  # the dashboard goes away mid-session

        # Hooks go on while it is away, and none of them waits for it.
        walls = [
            await asyncio.to_thread(hook, url, s, n, tmp_path / "home")
            for n in range(5, 10)
            for s in SESSIONS
        ]
        assert max(walls) < 10, walls

        second = Dashboard(tmp_path / "second", port=first.port)
        browser = Browser()
        await browser.sio.connect(second.url, transports=["websocket"], wait_timeout=10)
        after = await wait_for_history(browser, 10, 60, "the hooks from the outage")
        await browser.sio.disconnect()
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(timeout=20)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        first.stop()
        if second is not None:
            second.stop()
    assert relay.returncode == 0, relay.stderr.read() if relay.stderr else ""
    # Each hook once, in order per session: the first five before the outage, the
    # other five after it (none on both dashboards, none lost).
    assert before == {s: [0, 1, 2, 3, 4] for s in SESSIONS}
    assert after == {s: [5, 6, 7, 8, 9] for s in SESSIONS}
