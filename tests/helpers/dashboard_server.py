"""claude-mpm 5.9.10's real dashboard server, ``UnifiedMonitorServer``, in a process of
its own, for ``tests/test_dashboard_real.py``.

Picks a free port on 127.0.0.1 (or takes the one given as its argument, to restart a
dashboard where it was), starts the server there (what ``claude-mpm monitor``
runs) and prints ``{"port": N}`` as its first stdout line once ``start()`` returned
True; if it cannot start, prints ``{"error": "..."}`` and exits 1. It then serves
until its stdin is closed (the test's finalizer does that), calls the server's own
``stop()``, prints ``{"stopped": true}`` and exits 0.
"""

from __future__ import annotations

import json
import socket
import sys
import traceback


def out(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    try:
        from claude_mpm.services.monitor.server import UnifiedMonitorServer
    except BaseException:
        out({"error": "cannot import UnifiedMonitorServer:\n" + traceback.format_exc()})
        return 1
    errors = []
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else None
    # NOTE: another process may take the free port between the probe and the bind;
    # then start() reports it and the next port is tried (a wanted port is retried).
    for _ in range(3):
        port = wanted or free_port()
        server = UnifiedMonitorServer(host="127.0.0.1", port=port)
        if server.start():
            break
        errors.append(f"port {port}: {server.startup_error or 'start() returned False'}")
        server.stop()
    else:
        out({"error": "UnifiedMonitorServer did not start: " + "; ".join(errors)})
        return 1
    out({"port": port})
    sys.stdin.read()  # until the test closes our stdin
    server.stop()
    out({"stopped": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
