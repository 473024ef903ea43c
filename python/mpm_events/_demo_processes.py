"""``mpm-events demo --processes``: the cross-process flow with real processes.

Claude Code hook processes (``mpm-events hook``, one per hook) append to a shared
SQLite log; ``mpm-events relay`` forwards it to a dashboard (a small stand-in that
records what claude-mpm's ``POST /api/events`` would get, or ``--to`` a real one);
the dashboard goes away for the middle third of the session and comes back. The
summary shows that no hook waited for it and that every event arrived once, in
order per session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SESSIONS = ("demo-session-a", "demo-session-b")
#: The least time the dashboard stays away, seconds.
OUTAGE = 2.0
HOOKS = ("UserPromptSubmit", "PreToolUse", "PostToolUse", "Notification", "Stop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hook_input(session: str, n: int) -> dict[str, Any]:
    name = HOOKS[n % len(HOOKS)]
    data: dict[str, Any] = {
        "hook_event_name": name,
        "session_id": session,
        "cwd": "/work/demo-project",
        "demo_seq": n,
    }
    if name == "UserPromptSubmit":
        data["prompt"] = f"step {n}"
    elif name in ("PreToolUse", "PostToolUse"):
        data["tool_name"] = "Bash"
        data["tool_input"] = {"command": f"echo {n}"}
        data["tool_use_id"] = f"{session}-tool-{n - (name == 'PostToolUse')}"
        if name == "PostToolUse":
            data["tool_response"] = {"stdout": str(n)}
    return data


class _Dashboard:
    def __init__(self, port: int, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpm_events._demo_dashboard", str(port), str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the demo dashboard did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)


def _received(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(cond: Any, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def run(hooks: int = 30, output_dir: str | None = None) -> int:
    """Runs the demo; returns the exit status (0 when every event arrived once)."""
    out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="mpm-events-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'events.db'}"
    port = _free_port()
    record = out / "dashboard.jsonl"
    env = dict(os.environ, HOME=str(out))
    print(f"mpm-events demo --processes: {hooks} hook processes in {len(SESSIONS)} sessions")
    print(f"  log {url}; dashboard http://127.0.0.1:{port}/api/events (stand-in, {record})")
    dashboard = _Dashboard(port, record)
    relay = subprocess.Popen(
        [sys.executable, "-m", "mpm_events", "relay", "--backend", url, "--to",
         f"http://127.0.0.1:{port}/api/events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert relay.stdout is not None
    relay.stdout.readline()
    walls: list[float] = []
    lock = threading.Lock()
    per_session = max(1, hooks // len(SESSIONS))
    thirds = [per_session // 3, 2 * per_session // 3, per_session]

    def session_hooks(session: str, start: int, stop: int) -> None:
        for n in range(start, stop):
            t0 = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "mpm_events", "hook", "--backend", url],
                input=json.dumps(_hook_input(session, n)),
                capture_output=True, text=True, env=env, timeout=30, check=True,
            )  # fmt: skip
            with lock:
                walls.append(time.monotonic() - t0)

    def phase(start: int, stop: int) -> None:
        threads = [threading.Thread(target=session_hooks, args=(s, start, stop)) for s in SESSIONS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    status = 0
    try:
        phase(0, thirds[0])
        _wait_for(lambda: len(_received(record)) >= thirds[0] * len(SESSIONS), 30)
        print(f"  1. dashboard up:   {thirds[0] * len(SESSIONS)} hooks, all on the dashboard")
        dashboard.stop()
        down_at = time.monotonic()
        phase(thirds[0], thirds[1])
        during = (thirds[1] - thirds[0]) * len(SESSIONS)
        print(f"  2. dashboard DOWN: {during} hooks ran anyway; they wait in the log")
        # NOTE: the outage lasts at least OUTAGE seconds: the scenario, so the relay's
        # attempts fail and it holds its place, not a wait for a condition.
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
        dashboard = _Dashboard(port, record)
        back_at = time.time()
        print(f"  3. dashboard back after {time.monotonic() - down_at:.1f} s")
        phase(thirds[1], thirds[2])
        total = per_session * len(SESSIONS)
        caught_up = _wait_for(lambda: len(_received(record)) >= total, 60)
        got = _received(record)
        ids = [e.get("id") for e in got]
        order_ok = all(
            [e["data"]["demo_seq"] for e in got if e.get("session_id") == s]
            == list(range(per_session))
            for s in SESSIONS
        )
        late = sum(1 for e in got if e["_received_at"] >= back_at)
        lost = total - len(set(ids))
        dups = len(ids) - len(set(ids))
        walls.sort()
        print(
            f"  hooks: {len(walls)} processes, wall median {statistics.median(walls) * 1000:.0f}"
            f" ms, max {walls[-1] * 1000:.0f} ms (none waited for the dashboard)"
        )
        print(
            f"  dashboard received {len(set(ids))} of {total} events: lost {lost}, "
            f"duplicates {dups}, in order per session: {'yes' if order_ok else 'NO'}; "
            f"{late} arrived after it came back (the outage's and the last third's)"
        )
        if not (caught_up and lost == 0 and dups == 0 and order_ok):
            status = 1
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(timeout=20)
        except subprocess.TimeoutExpired:
            relay.kill()
        dashboard.stop()
    print(f"  relay stopped (exit {relay.returncode}); output dir: {out}")
    return status
