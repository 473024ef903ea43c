"""Plain clients for the monitor (tests/test_monitor_*.py): a bus with a monitor,
an SSE reader on aiohttp."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SseMessage:
    """One SSE message: its ``event`` name (``message`` by default), id and data."""

    event: str = "message"
    id: str | None = None
    data: str = ""

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Reads ``text/event-stream`` messages from an open aiohttp response."""

    resp: aiohttp.ClientResponse
    _buf: list[str] = field(default_factory=list)

    async def next(self, timeout: float = 5.0) -> SseMessage | None:
        """The next message (None when the stream ended); comments are skipped."""
        msg = SseMessage()
        seen = False
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not raw:
                return msg if seen else None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if seen:
                    return msg
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            seen = True
            if name == "event":
                msg.event = value
            elif name == "id":
                msg.id = value
            elif name == "data":
                msg.data = value if not msg.data else msg.data + "\n" + value

    async def take(self, n: int, timeout: float = 5.0) -> list[SseMessage]:
        """The next ``n`` data messages (fails on the stream's end)."""
        out: list[SseMessage] = []
        while len(out) < n:
            m = await self.next(timeout)
            assert m is not None, f"stream ended after {len(out)} of {n} messages"
            if m.event == "message":
                out.append(m)
        return out


def base_of(url: str) -> str:
    """``http://127.0.0.1:PORT`` of a monitor URL."""
    return url.split("/?", 1)[0]


def token_of(url: str) -> str:
    """The token in a monitor URL."""
    return url.split("token=", 1)[1]
