"""A real python-socketio server (``sio_server.py`` beside this file) in a subprocess, for the
Socket.IO tests; it collects the JSON lines the server prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).parent / "sio_server.py"


class Server:
    """The helper server; ``lines`` holds what it printed, in order."""

    def __init__(
        self,
        port: int = 0,
        auth: str | None = None,
        namespace: str = "/",
        events: list[str] | None = None,
    ) -> None:
        args = [sys.executable, str(SERVER), "--port", str(port), "--namespace", namespace]
        if auth:
            args += ["--auth", auth]
        if events is not None:
            # NOTE: only these names get a handler (and an ack), as on a real server.
            args += ["--events", ",".join(events)]
        self.args = args
        self.lines: list[dict] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.port = port
        self._changed = asyncio.Event()

    async def start(self) -> Server:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        first = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10))
        self.port = first["port"]
        self._reader = asyncio.create_task(self._read())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))
            self._changed.set()

    def events(self) -> list[dict]:
        return [x for x in self.lines if "event" in x]

    def connects(self) -> list[dict]:
        return [x for x in self.lines if "connect" in x]

    async def wait_for(self, cond, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(Exception):
            await self._reader


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
