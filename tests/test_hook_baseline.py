"""Our hook events against claude-mpm 5.9.10's REAL hook handler, hook kind by hook kind.

The baseline: ``helpers/claude_hook_baseline.py`` runs claude-mpm's handler
(``python -m claude_mpm.hooks.claude_hooks.hook_handler``) once per hook input, as
Claude Code does, and records what it POSTs to the dashboard. Ours, on the same
inputs:

- ``mpm_events.hooks.convert`` (topic, type, session_id, cwd: no server);
- end to end: ``mpm-events hook`` processes append the events to a shared log
  (SQLite); a bus on that log (``EventBus(backend=...)``) delivers them to a default
  ``SocketIOConsumer(url=...)`` pointed at claude-mpm's
  real dashboard server (``UnifiedMonitorServer``, ``helpers/dashboard_server.py``),
  and a Socket.IO client standing in for the browser records what the server
  broadcasts. The baseline's POST bodies go to the same server's ``/api/events``, as
  claude-mpm's handler sends them, and the browser records those broadcasts too;
- ``HookEventProducer.publish_raw_hook_event`` for the same hooks (issue 11's mapping),
  through the same consumer and server.

Compared: ``subtype``, ``session_id``, ``cwd``; ``type`` against the type the
server's ``claude_event`` handler gives the baseline's normalized event (its POST
route broadcasts under a category name instead); and the pre/post tool pairing
(the same ``correlation_id`` on both, in each implementation).

The baseline runs once per test session (the ``baseline`` fixture): one process per
hook kind, concurrently, 1-4 s each.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import socketio
from helpers.claude_hook_baseline import BaselineRun, run_chains
from mpm_events import EventBus, HookEventProducer, SocketIOConsumer, hooks
from mpm_events._core import _log_range
from test_dashboard_real import Dashboard

SESSION = f"baseline-{uuid.uuid4()}"
CWD = "/work/projects/shop"
TRANSCRIPT = "/home/dev/.claude/projects/-work-projects-shop/" + SESSION + ".jsonl"


def hook(name: str, **fields: Any) -> dict[str, Any]:
    """A Claude Code hook input as Claude Code sends it."""
    return {
        "session_id": SESSION,
        "transcript_path": TRANSCRIPT,
        "cwd": CWD,
        "permission_mode": "default",
        "hook_event_name": name,
        **fields,
    }


BASH = {"command": "pytest -q tests/test_cart.py", "description": "Run the cart tests"}

#: One input per hook kind claude-mpm's handler routes; a pre and a post tool hook of
#: one call; and one it does not route (SessionEnd).
HOOKS: dict[str, dict[str, Any]] = {
    "UserPromptSubmit": hook("UserPromptSubmit", prompt="The cart total is wrong; fix it"),
    "PreToolUse": hook("PreToolUse", tool_name="Bash", tool_input=BASH),
    "PostToolUse": hook(
        "PostToolUse",
        tool_name="Bash",
        tool_input=BASH,
        tool_response={"stdout": "4 passed", "stderr": "", "interrupted": False},
    ),
    "Notification": hook("Notification", message="Claude needs your permission to use Bash"),
    "Stop": hook("Stop", stop_hook_active=False, reason="completed"),
    "SubagentStart": hook("SubagentStart", agent_type="research", agent_id="research-1"),
    "SubagentStop": hook(
        "SubagentStop", agent_type="research", reason="completed", stop_hook_active=False
    ),
    "SessionStart": hook("SessionStart", source="startup"),
    "AssistantResponse": hook("AssistantResponse", response="The total now includes tax."),
    "SessionEnd": hook("SessionEnd", reason="exit"),
}
TOOL_CHAIN = ["PreToolUse", "PostToolUse"]
ROUTED = [name for name in HOOKS if name != "SessionEnd"]


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> dict[str, BaselineRun]:
    """claude-mpm's handler on each input of ``HOOKS``, once per test session."""
    root = tmp_path_factory.mktemp("claude-hook-baseline")
    chains = [TOOL_CHAIN] + [[name] for name in HOOKS if name not in TOOL_CHAIN]
    runs = run_chains([[HOOKS[n] for n in chain] for chain in chains], root=root)
    return {
        name: run
        for chain, done in zip(chains, runs, strict=True)
        for name, run in zip(chain, done, strict=True)
    }


def test_the_baseline_is_what_the_spec_says(baseline):
    # What claude-mpm's handler sent, per hook: its main event beside its side events.
    subtypes = {name: sorted(run.subtypes) for name, run in baseline.items()}
    assert subtypes == {
        "UserPromptSubmit": ["command_acknowledged", "hook_execution", "user_prompt"],
        "PreToolUse": ["hook_execution", "pre_tool"],
        "PostToolUse": ["hook_execution", "post_tool"],
        "Notification": ["hook_execution", "notification"],
        "Stop": ["hook_execution", "stop"],
        "SubagentStart": ["hook_execution", "subagent_start"],
        "SubagentStop": ["hook_execution", "subagent_stop"],
        "SessionStart": ["hook_execution", "session_start"],
        "AssistantResponse": ["assistant_response", "hook_execution"],
        "SessionEnd": [],  # not routed: nothing sent
    }
    for name in ROUTED:
        body = baseline[name].bodies[0]
        assert (body["namespace"], body["event"]) == ("", "claude_event")
        main = baseline[name].main_event()
        assert (main["type"], main["session_id"], main["cwd"]) == ("hook", SESSION, CWD), name
    pre, post = baseline["PreToolUse"].main_event(), baseline["PostToolUse"].main_event()
    assert pre["correlation_id"] and pre["correlation_id"] == post["correlation_id"]


def test_convert_gives_the_baselines_fields(baseline, tmp_path):
    store = hooks.CorrelationStore(str(tmp_path / "correlations"))
    ours = {name: hooks.convert(HOOKS[name], store) for name in HOOKS}
    for name in ROUTED:
        want = baseline[name].main_event()
        got = ours[name]
        assert (got.topic, got.subtype, got.type) == (
            f"hook.{want['subtype']}",
            want["subtype"],
            name,
        )
        assert (got.session_id, got.cwd) == (want["session_id"], want["cwd"]), name
        # Where the dashboard mapping (dashboard.rs) looks for them: the data's top level.
        assert (got.data["session_id"], got.data["cwd"]) == (SESSION, CWD)
        assert got.correlation_id == want.get("correlation_id") or name in TOOL_CHAIN
    assert ours["PreToolUse"].correlation_id
    assert ours["PreToolUse"].correlation_id == ours["PostToolUse"].correlation_id
    assert ours["SessionEnd"].topic == "hook.session_end"


class Browser:
    """A Socket.IO client like the dashboard's page: records every broadcast by name."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

        @self.sio.on("*")
        async def record(name: str, data: Any) -> None:
            if isinstance(data, dict) and data.get("session_id") == SESSION:
                self.received.append((name, data))
                self._changed.set()

    def ours(self, marker: str) -> dict[str, dict[str, Any]]:
        """Our events (``claude_event`` broadcasts of what our consumer sent, the
        original payload carrying our ``id``) whose data carries ``marker``, by subtype."""
        return {
            d["subtype"]: d
            for n, d in self.received
            if n == "claude_event" and isinstance(d.get("original_event"), dict)
            if "id" in d["original_event"] and d["data"].get("marker") == marker
        }

    def forwarded(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """The broadcasts of the baseline's POSTs (no ``original_event``), by subtype."""
        return {d["subtype"]: (n, d) for n, d in self.received if "original_event" not in d}

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    server = Dashboard(tmp_path_factory.mktemp("dashboard"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def browser(dashboard):
    b = Browser()
    await b.sio.connect(dashboard.url, transports=["websocket"], wait_timeout=10)
    try:
        yield b
    finally:
        await b.sio.disconnect()


def post(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        url + "/api/events",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


async def run_our_hook(stdin: dict[str, Any], db: Path, env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mpm_events",
        "hook",
        "--backend",
        f"sqlite://{db}",
        "--deadline",
        "30",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(stdin).encode()), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, out, err) == (0, b'{"continue": true}\n', b""), err.decode()


async def replay_into_dashboard(db: Path, url: str) -> SocketIOConsumer:
    """What a relay does: a default consumer on a bus on the shared log
    (``EventBus(backend=...)``) receives what the hook processes appended."""
    assert len(_log_range(f"sqlite://{db}", topics=["hook.**"])) == len(HOOKS)
    bus = EventBus(backend=f"sqlite://{db}")
    consumer = SocketIOConsumer(url=url)
    assert await bus.subscribe(consumer)
    await bus.start()
    try:
        assert await bus.join(timeout=20)
    finally:
        await bus.stop(timeout=10)
    return consumer


async def test_our_hook_events_reach_the_dashboard_as_the_baselines_do(
    baseline, dashboard, browser, tmp_path
):
    # The baseline's POSTs, as claude-mpm's handler sends them to the dashboard.
    marker = f"cli-{uuid.uuid4()}"
    for name in ROUTED:
        for body in baseline[name].bodies:
            if body["data"]["subtype"] == baseline[name].main_event()["subtype"]:
                assert await asyncio.to_thread(post, dashboard.url, body) == 204

    # Ours: one `mpm-events hook` process per hook (the pre before the post, the rest
    # at once), into one log; then the log replayed into the dashboard.
    db = tmp_path / "events.db"
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("MPM_EVENTS_BACKEND", None)

    async def tool_chain() -> None:
        for name in TOOL_CHAIN:
            await run_our_hook({**HOOKS[name], "marker": marker}, db, env)

    others = [
        run_our_hook({**HOOKS[name], "marker": marker}, db, env)
        for name in HOOKS
        if name not in TOOL_CHAIN
    ]
    # Every process is waited for before anything is asserted (none outlives the test).
    results = await asyncio.gather(tool_chain(), *others, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    consumer = await replay_into_dashboard(db, dashboard.url)
    m = consumer.get_metrics()
    assert (m["events_emitted"], m["unacked"], m["events_failed"]) == (len(HOOKS), 0, 0), m

    want = {baseline[name].main_event()["subtype"] for name in ROUTED}
    await browser.wait_for(
        lambda: len(browser.ours(marker)) == len(HOOKS) and want <= set(browser.forwarded())
    )
    ours, forwarded = browser.ours(marker), browser.forwarded()
    problems = []
    for name in ROUTED:
        base = baseline[name].main_event()
        sub = base["subtype"]
        mine = ours.get(sub)
        if mine is None:
            problems.append(f"{name}: none of ours has subtype {sub}; ours: {sorted(ours)}")
            continue
        category, theirs = forwarded[sub]
        original = mine["original_event"]
        have = (mine["type"], mine["subtype"], mine["session_id"], original.get("cwd"))
        # The server's claude_event handler keeps the normalized event's type ("hook");
        # its POST route broadcasts under a category name (tool_event, hook_event, ...).
        want_fields = (base["type"], theirs["subtype"], theirs["session_id"], theirs["cwd"])
        if have != want_fields:
            problems.append(f"{name}: ours {have}, baseline {want_fields} (as {category})")
    assert not problems, "\n".join(problems)
    assert ours["session_end"]["type"] == "hook"  # the baseline sends nothing for it

    pre, post_ = ours["pre_tool"]["original_event"], ours["post_tool"]["original_event"]
    assert pre["correlation_id"] and pre["correlation_id"] == post_["correlation_id"]
    base_pre, base_post = forwarded["pre_tool"][1], forwarded["post_tool"][1]
    assert base_pre["correlation_id"] and base_pre["correlation_id"] == base_post["correlation_id"]


async def test_publish_raw_hook_event_gives_the_baselines_subtypes(
    baseline, dashboard, browser, started_bus
):
    # Issue 11's mapping: the producer's raw hook events, same names, same inputs.
    marker = f"raw-{uuid.uuid4()}"
    bus = await started_bus("memory")
    consumer = SocketIOConsumer(url=dashboard.url)
    assert await bus.subscribe(consumer)
    producer = HookEventProducer(bus)
    for name in ROUTED:
        assert await producer.publish_raw_hook_event(name, {**HOOKS[name], "marker": marker})
    assert await bus.join(timeout=20)
    await browser.wait_for(lambda: len(browser.ours(marker)) == len(ROUTED))
    ours = browser.ours(marker)
    for name in ROUTED:
        base = baseline[name].main_event()
        mine = ours[base["subtype"]]
        assert (mine["type"], mine["session_id"]) == (base["type"], base["session_id"]), name
        assert mine["original_event"]["cwd"] == base["cwd"], name
