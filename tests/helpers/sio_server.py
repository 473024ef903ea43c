"""Minimal python-socketio test server for the Rust Socket.IO sink tests.

Binds 127.0.0.1 on --port (0 = pick a free port), prints ``{"port": N}`` as the
first stdout line, then one JSON line per received event:
``{"event": NAME, "data": DATA, "sid": SID}``. Connections are printed as
``{"connect": SID}`` and refused auth attempts as ``{"refused": AUTH}``.
Every event is acknowledged (the catch-all handler returns a value), so clients
that request acks receive them; with ``--events a,b`` only those names are
handled, and other events are neither printed nor acknowledged (as
python-socketio does for events without a handler). With ``--auth TOKEN`` a client must connect with
the auth payload ``{"token": TOKEN}``, otherwise the connection is refused.
With ``--namespace NS`` the handlers serve that namespace only. A connection line
also carries the namespace and the handshake's HTTP headers:
``{"connect": SID, "namespace": NS, "headers": {"x-token": "...", ...}}`` (names
lowercased).
"""

import argparse
import asyncio
import json
import sys

import socketio
from aiohttp import web


def emit_line(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auth", default=None)
    parser.add_argument(
        "--events",
        default=None,
        help="comma-separated event names to handle; others are ignored and NOT acked",
    )
    parser.add_argument("--namespace", default="/")
    args = parser.parse_args()
    ns = args.namespace

    # NOTE: async_handlers=False runs handlers inline in arrival order, so the
    # printed order is exactly the order in which events reached the server.
    sio = socketio.AsyncServer(async_mode="aiohttp", async_handlers=False)
    app = web.Application()
    sio.attach(app)

    async def connect(sid, environ, auth=None):
        if args.auth is not None and (not isinstance(auth, dict) or auth.get("token") != args.auth):
            emit_line({"refused": auth})
            raise socketio.exceptions.ConnectionRefusedError("bad auth token")
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        emit_line({"connect": sid, "namespace": ns, "headers": headers})

    sio.on("connect", connect, namespace=ns)

    async def catch_all(event, sid, data=None):
        emit_line({"event": event, "data": data, "sid": sid})
        return "ok"

    def named_handler(name):
        # NOTE: must be a coroutine function, or python-socketio won't await it.
        async def handler(sid, data=None):
            return await catch_all(name, sid, data)

        return handler

    if args.events is None:
        sio.on("*", catch_all, namespace=ns)
    else:
        for name in args.events.split(","):
            sio.on(name, named_handler(name), namespace=ns)

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    emit_line({"port": port})
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
