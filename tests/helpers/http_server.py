"""A real aiohttp server in a thread of its own that records every request, for the
HTTP consumer's tests (``tests/test_http_consumer.py``, ``tests/test_tls.py``).

Answers follow a script: ``server.answer(Answer(500), Answer(204))`` makes the next
requests get those answers in order; when the script is empty every request gets
the default (204 No Content). Each recorded :class:`Request` carries the server's
arrival time (monotonic ``at``, epoch ``wall``), the peer's address (one per TCP connection, so the
connection count shows keep-alive reuse) and, over TLS, the client certificate.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Answer:
    """One scripted answer; ``delay`` seconds pass before it is sent."""

    status: int = 204
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Request:
    """One request as the server saw it."""

    at: float
    wall: float
    method: str
    path: str
    content_type: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]
    peercert: dict[str, Any] | None

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingServer:
    """``with RecordingServer() as s: ... s.url ... s.requests``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, path: str = "/api/events"):
        self.ssl_context = ssl_context
        self.path = path
        self.requests: list[Request] = []
        self.script: deque[Answer] = deque()
        self.default = Answer(204)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    def answer(self, *answers: Answer) -> None:
        with self._lock:
            self.script.extend(answers)

    def connections(self) -> set[tuple[str, int]]:
        with self._lock:
            return {r.peer for r in self.requests}

    def wait_for(self, n: int, timeout: float = 15.0) -> list[Request]:
        """The requests once there are at least ``n``; fails after ``timeout`` s."""
        end = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.requests)} requests arrived, {n} expected in {timeout}s"
                    )
                self._changed.wait(left)
            return list(self.requests)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else ("?", 0)
        sslobj = transport.get_extra_info("ssl_object") if transport else None
        rec = Request(
            at=time.monotonic(),
            wall=time.time(),
            method=request.method,
            path=request.path,
            content_type=request.headers.get("Content-Type", ""),
            headers=dict(request.headers),
            body=body,
            peer=(peer[0], peer[1]),
            peercert=sslobj.getpeercert() if sslobj else None,
        )
        with self._changed:
            self.requests.append(rec)
            answer = self.script.popleft() if self.script else self.default
            self._changed.notify_all()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
