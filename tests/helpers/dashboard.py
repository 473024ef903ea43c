"""claude-mpm's real dashboard server in a process of its own (``Dashboard``), a
browser-like Socket.IO client recording what it broadcasts (``Browser``), and their
fixtures, for every test against the real dashboard."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import socketio

HELPER = Path(__file__).parent / "dashboard_server.py"
BROADCASTS = ("claude_event", "hook:event")
# The names the server broadcasts POST /api/events under (its _categorize_event).
CATEGORIES = (
    "claude_event",
    "hook_event",
    "tool_event",
    "session_event",
    "response_event",
    "agent_event",
    "file_event",
    "system_event",
)


class Dashboard:
    """The real server's process; ``url`` once it serves."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.stderr_path = workdir / "dashboard-server.stderr"
        self._stderr = self.stderr_path.open("wb")
        # NOTE: HOME and the working directory point at a temp dir, so whatever the
        # server writes (logs, state) stays out of the real home and the checkout.
        env = dict(os.environ, HOME=str(workdir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), *([str(port)] if port else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workdir,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = self.lines.get(timeout=60)
        except queue.Empty:
            first = {"error": "no answer within 60 s"}
        if "port" not in first:
            self.stop()
            pytest.fail(f"the real dashboard server did not start: {first}\n{self.stderr()}")
        self.port = first["port"]
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Closes its stdin (it then calls the server's ``stop()``); kills it if it
        has not exited within 20 s."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class Browser:
    """A Socket.IO client like the dashboard's page: records every broadcast."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        for name in {*BROADCASTS, *CATEGORIES}:
            self.sio.on(name, self._recorder(name))
        self.sio.on("hook:history:response", self._recorder("hook:history:response"))

    def _recorder(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def record(data: Any) -> None:
            self.received.append((name, data))
            self._changed.set()

        return record

    def got(self, name: str) -> list[dict[str, Any]]:
        """Broadcasts ``name`` of our events (the original payload carries our id)."""
        return [
            d
            for n, d in self.received
            if n == name and isinstance(d.get("original_event"), dict)
            if "id" in d["original_event"]
        ]

    async def history(self) -> list[dict[str, Any]]:
        """The server's event history (what its claude_event handler processed, also
        before this client connected): our events' original payloads."""
        before = len(self.received)
        await self.sio.emit("hook:history:get", {"limit": 1000})
        await self.wait_for(
            lambda: any(n == "hook:history:response" for n, _ in self.received[before:])
        )
        (answer,) = [d for n, d in self.received[before:] if n == "hook:history:response"]
        return [
            e["original_event"]
            for e in answer["events"]
            if isinstance(e.get("original_event"), dict) and "id" in e["original_event"]
        ]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()
