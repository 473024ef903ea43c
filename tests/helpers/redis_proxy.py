"""A tiny TCP proxy in front of a redis-server that can swallow one reply.

``RedisProxy(port)`` listens on a free port and relays every connection to
``127.0.0.1:port``. After ``drop_reply_to(b"EVALSHA")`` the next reply the server sends
to a request containing that word is read and thrown away (once); after
``drop_reply_containing(b"marker")`` the first reply carrying those bytes is. The
client sees its command applied by the server and never answered, as with a
connection lost right after the server executed it.

``RedisProxy(port, linger=SECONDS)``: when a client closes its connection (say its
response timeout gave up on a blocking ``XREADGROUP``), the proxy holds the server
side open for ``linger`` seconds more, so a command still running there (the BLOCK)
completes on the server as if the client were still connected; any reply that arrives
meanwhile is held and thrown away. ``lost`` counts those replies that carried
something (not a null reply: a BLOCK that timed out with nothing is not a loss);
``dropped`` counts the replies swallowed on request.
"""

from __future__ import annotations

import socket
import threading
import time

# A null reply (RESP2 null array, RESP3 null): what a BLOCK that found nothing returns.
NULL_REPLIES = (b"*-1\r\n", b"_\r\n")


class RedisProxy:
    def __init__(self, upstream_port: int, linger: float = 0.0) -> None:
        self.upstream = upstream_port
        self.linger = linger
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self._lock = threading.Lock()
        self._drop_word: bytes | None = None
        self._drop_marker: bytes | None = None
        self.dropped = 0
        self.lost = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply_to(self, word: bytes) -> None:
        with self._lock:
            self._drop_word = word

    def drop_reply_containing(self, marker: bytes) -> None:
        """Swallow (once) the first server reply whose bytes contain ``marker``."""
        with self._lock:
            self._drop_marker = marker

    def url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            armed = threading.Event()  # this connection's next reply is to be dropped
            gone = threading.Event()  # the client closed its side
            threading.Thread(
                target=self._up, args=(client, server, armed, gone), daemon=True
            ).start()
            threading.Thread(
                target=self._down, args=(server, client, armed, gone), daemon=True
            ).start()

    def _up(
        self,
        client: socket.socket,
        server: socket.socket,
        armed: threading.Event,
        gone: threading.Event,
    ) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._drop_word is not None and self._drop_word in data:
                        self._drop_word = None
                        armed.set()
                server.sendall(data)
        except OSError:
            pass
        finally:
            gone.set()
            if self.linger > 0:
                # NOTE: the server keeps running what the client sent (a BLOCK still
                # delivers into the pending list); _down throws its reply away.
                time.sleep(self.linger)
            server.close()

    def _down(
        self,
        server: socket.socket,
        client: socket.socket,
        armed: threading.Event,
        gone: threading.Event,
    ) -> None:
        counted = False  # one lost reply per abandoned connection (one command in flight)
        try:
            while data := server.recv(65536):
                with self._lock:
                    marked = self._drop_marker is not None and self._drop_marker in data
                    if marked:
                        self._drop_marker = None
                    if gone.is_set():
                        if not counted and data not in NULL_REPLIES:
                            counted = True
                            self.lost += 1
                        continue
                if armed.is_set() or marked:
                    armed.clear()
                    self.dropped += 1
                    continue
                try:
                    client.sendall(data)
                except OSError:
                    with self._lock:
                        if not counted and data not in NULL_REPLIES:
                            counted = True
                            self.lost += 1
        except OSError:
            pass
        finally:
            client.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
