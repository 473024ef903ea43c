"""A stand-in dashboard for ``mpm-events demo --processes``: accepts what claude-mpm's
hooks POST to ``/api/events`` and appends each body's event as a JSON line to a file.

``python -m mpm_events._demo_dashboard PORT FILE``; prints ``ready`` once it serves.
Standard library only (the real dashboard is claude-mpm's; the demo must run without
it).
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    """Appends each POSTed body's ``data`` (with its arrival time) to the server's file."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            event = json.loads(body)["data"]
        except (ValueError, KeyError, TypeError):
            self.send_response(400)
            self.end_headers()
            return
        event["_received_at"] = time.time()
        out = self.server.out  # type: ignore[attr-defined]
        out.write(json.dumps(event) + "\n")
        out.flush()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    port, path = int(sys.argv[1]), sys.argv[2]
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    # NOTE: open for the server's life.
    server.out = open(path, "a", encoding="utf-8")  # type: ignore[attr-defined]
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
