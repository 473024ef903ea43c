"""A small real HTTP server (standard library, a thread of its own) that speaks the
monitor's API as the command line codes against it (docs/cli.md), for
tests/test_cli.py while the real monitor is built elsewhere.

It keeps what a monitor would show in plain lists (``events``, ``dead_letters``,
``replay_jobs``), records every request, and checks the token on state-changing
requests (401 without ``Authorization: Bearer <token>``). The SSE stream sends
events after ``Last-Event-ID`` (or ``?after=``) whose topic matches ``pattern``, and
closes the connection after ``drop_after`` events once, so a client's resume can be
checked.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mpm_events import Event


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeMonitor:
    token: str = "s3cret"
    events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    drop_after: int | None = None
    requests: list[Seen] = field(default_factory=list)
    replay_total: int = 3

    def __post_init__(self) -> None:
        self.changed = threading.Condition()
        self.closing = False
        self.jobs: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _answer(self, status: int, obj: Any) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _record(self, body: Any = None) -> tuple[str, dict[str, list[str]]]:
                parts = urllib.parse.urlsplit(self.path)
                fake.requests.append(Seen(self.command, self.path, dict(self.headers), body))
                return parts.path, urllib.parse.parse_qs(parts.query)

            def do_GET(self) -> None:
                path, q = self._record()
                if path == "/api/metrics":
                    return self._answer(200, fake.metrics)
                if path == "/api/consumers":
                    return self._answer(200, fake.consumers)
                if path == "/api/dead-letters":
                    items = [
                        d
                        for d in fake.dead_letters
                        if "consumer" not in q or d["consumer"] == q["consumer"][0]
                    ]
                    return self._answer(200, items[: int(q.get("limit", ["1000"])[0])])
                if path.startswith("/api/dead-letters/"):
                    want = urllib.parse.unquote(path.rsplit("/", 1)[1])
                    for d in fake.dead_letters:
                        if d["id"] == want:
                            return self._answer(200, d)
                    return self._answer(404, {"error": f"no dead letter {want}"})
                if path.startswith("/api/replay/"):
                    job = path.rsplit("/", 1)[1]
                    if job not in fake.jobs:
                        return self._answer(404, {"error": "no such job"})
                    fake.jobs[job] = min(fake.jobs[job] + 1, fake.replay_total)
                    n = fake.jobs[job]
                    return self._answer(
                        200,
                        {"done": n >= fake.replay_total, "replayed": n, "total": fake.replay_total},
                    )
                if path == "/api/stream":
                    return self._stream(q)
                return self._answer(404, {"error": "not found"})

            def _stream(self, q: dict[str, list[str]]) -> None:
                after = int(self.headers.get("Last-Event-ID") or q.get("after", ["0"])[0])
                pattern = q.get("pattern", ["**"])[0]
                excludes = q.get("exclude", [])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                sent = 0
                while True:
                    with fake.changed:
                        fake.changed.wait_for(
                            lambda after=after: (
                                fake.closing or (fake.events and fake.events[-1]["seq"] > after)
                            ),
                            timeout=0.5,
                        )
                        if fake.closing:
                            return
                        todo = [e for e in fake.events if e["seq"] > after]
                    for e in todo:
                        after = e["seq"]
                        ev = Event(topic=e["topic"])
                        if not ev.matches_topic(pattern) or any(
                            ev.matches_topic(x) for x in excludes
                        ):
                            continue
                        try:
                            self.wfile.write(f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n".encode())
                            self.wfile.flush()
                        except OSError:
                            return
                        sent += 1
                        if fake.drop_after is not None and sent >= fake.drop_after:
                            fake.drop_after = None
                            self.close_connection = True
                            return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                path, _ = self._record(body)
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._answer(401, {"error": "token required"})
                ids = body.get("ids")
                consumer = body.get("consumer")
                picked = [
                    d
                    for d in fake.dead_letters
                    if (ids is None or d["id"] in ids)
                    and (consumer is None or d["consumer"] == consumer)
                ]
                if path in ("/api/dead-letters/redrive", "/api/dead-letters/purge"):
                    fake.dead_letters = [d for d in fake.dead_letters if d not in picked]
                    key = "redriven" if path.endswith("redrive") else "purged"
                    return self._answer(200, {key: len(picked)})
                if path == "/api/replay":
                    job = f"job{len(fake.jobs) + 1}"
                    fake.jobs[job] = 0
                    return self._answer(200, {"job": job})
                return self._answer(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.base = f"http://{host}:{port}"
        self.url = f"{self.base}/?token={self.token}"

    def publish(self, topic: str, data: dict[str, Any]) -> dict[str, Any]:
        with self.changed:
            e = {
                "seq": len(self.events) + 1,
                "topic": topic,
                "type": "T",
                "source": "fake",
                "data": data,
            }
            self.events.append(e)
            self.changed.notify_all()
        return e

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
