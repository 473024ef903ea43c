"""A client of a running monitor's HTTP API, standard library only.

The contract (``docs/cli.md``): ``GET /api/metrics``, ``/api/consumers``,
``/api/dead-letters?consumer=&limit=``, ``/api/dead-letters/<id>``,
``/api/stream?pattern=&exclude=&rule=`` (SSE: ``id: <seq>``, ``data: <event JSON>``;
resume with ``Last-Event-ID``), ``POST /api/dead-letters/redrive`` and ``/purge``
(``{"consumer"?, "ids"?}``), ``POST /api/replay`` and ``GET /api/replay/<job>``.
State-changing requests carry the URL's ``?token=`` as ``Authorization: Bearer``
(and no ``Origin``: the monitor checks one only when a browser sends it).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from mpm_events._cli.target import CliError

#: Seconds to connect and to wait for an answer (not for stream events).
TIMEOUT_S = 10.0


class Monitor:
    """``Monitor("http://127.0.0.1:8765/?token=abc")``."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(
                f"monitor URL {url!r} is not http(s)://host:port (use the URL the monitor printed)",
                status=2,
            )
        self.url = url
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.token = urllib.parse.parse_qs(parts.query).get("token", [None])[0]

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.netloc, timeout=timeout)

    def _headers(self, body: bool) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if body:
            h["Content-Type"] = "application/json"
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The answer's JSON.

        Raises:
            CliError: The monitor cannot be reached (1), or answered an error (1;
                the message has the status and what the server said).
        """
        conn = self._connect(TIMEOUT_S)
        data = None if body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers=self._headers(data is not None))
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"cannot reach the monitor at {self.base}: {_reason(exc)}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise CliError(self._refused(method, path, resp.status, raw))
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise CliError(
                f"the monitor at {self.base} answered {method} {path} with something "
                f"that is not JSON: {raw[:200]!r}"
            ) from None

    def _refused(self, method: str, path: str, status: int, raw: bytes) -> str:
        what = raw.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        hint = ""
        if status in (401, 403):
            hint = (
                " (pass the monitor URL with the ?token= it printed)"
                if not self.token
                else " (is the token the one this monitor printed?)"
            )
        return f"the monitor refused {method} {path}: HTTP {status}{hint}" + (
            f": {what}" if what else ""
        )

    def get(self, path: str, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", path + (f"?{urllib.parse.urlencode(q)}" if q else ""))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def stream(
        self, query: list[tuple[str, str]], *, reconnects: int = 5
    ) -> Iterator[tuple[str | None, Any]]:
        """``(id, event)`` of the SSE stream, following until the caller stops.

        A dropped stream is opened again with ``Last-Event-ID`` (no gap, no
        duplicate), up to ``reconnects`` times in a row without an event between.

        Raises:
            CliError: The monitor cannot be reached or refuses the stream.
        """
        last: str | None = None
        failures = 0
        path = "/api/stream?" + urllib.parse.urlencode(query)
        while True:
            conn = self._connect(TIMEOUT_S)
            headers = {"Accept": "text/event-stream", **self._headers(False)}
            headers.pop("Content-Type", None)
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                if resp.status >= 400:
                    raise CliError(self._refused("GET", path, resp.status, resp.read()))
                if conn.sock is not None:
                    conn.sock.settimeout(None)  # NOTE: a quiet stream is not an error
                for event_id, data in _sse(resp):
                    failures = 0
                    if event_id is not None:
                        last = event_id
                    try:
                        yield event_id, json.loads(data)
                    except ValueError:
                        continue
            except (OSError, http.client.HTTPException) as exc:
                failures += 1
                if last is None or failures > reconnects:
                    raise CliError(
                        f"cannot reach the monitor at {self.base}: {_reason(exc)}"
                    ) from None
            finally:
                conn.close()
            # The server ended the stream: open it again where it stopped.
            failures += 1
            if failures > reconnects:
                raise CliError(f"the monitor at {self.base} keeps closing the stream")
            time.sleep(min(0.1 * 2**failures, 2.0))


def _sse(resp: http.client.HTTPResponse) -> Iterator[tuple[str | None, str]]:
    """``(id, data)`` of each server-sent event (comments and other fields skipped)."""
    event_id: str | None = None
    data: list[str] = []
    while True:
        raw = resp.readline()
        if not raw:
            return
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data:
                yield event_id, "\n".join(data)
            event_id, data = None, []
            continue
        if text.startswith(":"):
            continue
        name, _, value = text.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text
