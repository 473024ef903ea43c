"""A python-socketio server over TLS for ``tests/test_tls.py``.

``--cert`` and ``--key`` are the server's PEM certificate chain and key; with
``--client-ca FILE`` a client must present a certificate issued by that CA
(mutual TLS). Binds 127.0.0.1 on a free port, prints ``{"port": N}`` as the first
stdout line, then ``{"connect": SID}`` per connection and ``{"event": NAME,
"data": DATA, "sid": SID}`` per event, each acknowledged (as ``sio_server.py``
beside this file does over plain TCP).
"""

import argparse
import asyncio
import json
import ssl
import sys

import socketio
from aiohttp import web


def emit_line(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", default=None)
    args = parser.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.client_ca)

    sio = socketio.AsyncServer(async_mode="aiohttp", async_handlers=False)
    app = web.Application()
    sio.attach(app)

    async def connect(sid, environ, auth=None):
        emit_line({"connect": sid})

    async def catch_all(event, sid, data=None):
        emit_line({"event": event, "data": data, "sid": sid})
        return "ok"

    sio.on("connect", connect)
    sio.on("*", catch_all)

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    emit_line({"port": site._server.sockets[0].getsockname()[1]})
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
