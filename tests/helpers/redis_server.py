"""A private ``redis-server`` for tests: a free port, ``--appendonly yes
--appendfsync always`` in a temporary directory, killed at the end.

Never the shared server on 6379. With ``MPM_TEST_PYTHON`` or ``CI`` set a missing
binary fails the test with the reason; otherwise the test is skipped, visibly,
naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def redis_server_binary() -> str | None:
    return (
        os.environ.get("MPM_REDIS_SERVER")
        or shutil.which("redis-server")
        or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None)
    )


def require_redis_server() -> str:
    """The binary, or fail (MPM_TEST_PYTHON set) / skip (otherwise) saying why."""
    binary = redis_server_binary()
    if binary is not None:
        return binary
    why = (
        "no redis-server binary ($MPM_REDIS_SERVER, PATH, /usr/bin/redis-server); "
        "install it with apt-get install redis-server"
    )
    if os.environ.get("MPM_TEST_PYTHON") or os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a free port, data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):
            self.port = _free_port()
            if self.start():
                return
        raise RuntimeError("could not start redis-server on a free port")

    def start(self) -> bool:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if _answers(self.port):
                return True
            time.sleep(0.01)
        return False

    def url(self, prefix: str = "mpm") -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
