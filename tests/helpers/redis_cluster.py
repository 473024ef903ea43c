"""A private 3-master Redis Cluster for tests: three ``redis-server --cluster-enabled
yes`` on free ports (``--appendonly yes --appendfsync always``, each in its own
directory), joined with ``redis-cli --cluster create ... --cluster-replicas 0``, killed
at the end. Skips (or fails under ``MPM_TEST_PYTHON``/``CI``) without the binaries.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers.redis_server import _answers, require_redis_server


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port(taken: list[int]) -> int:
    """A free port p <= 55535 whose bus port p + 10000 is free too (Redis's rule)."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20000, 55535)
        if p not in taken and p + 10000 not in taken and _bindable(p) and _bindable(p + 10000):
            return p
    raise RuntimeError("no free port pair for a cluster node")


def _cli(args: list[str], timeout: float = 30) -> str:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


class RedisCluster:
    """Three masters covering all 16384 slots; ``url()`` is ``redis+cluster://``."""

    def __init__(self, directory: Path) -> None:
        binary = require_redis_server()
        if not (shutil.which("redis-cli") or Path("/usr/bin/redis-cli").is_file()):
            why = "no redis-cli binary for the cluster tests (apt-get install redis-tools)"
            if os.environ.get("MPM_TEST_PYTHON") or os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        for n in range(3):
            port = _cluster_port(self.ports)
            d = directory / f"node{n}"
            d.mkdir(parents=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--dir",
                        str(d),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.ports.append(port)
        try:
            self._wait(lambda: all(_answers(p) for p in self.ports), "the nodes to answer")
            out = _cli(
                [
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ]
            )
            if "All 16384 slots covered" not in out:
                raise RuntimeError(f"redis-cli --cluster create failed: {out}")
            self._wait(
                lambda: all(
                    "cluster_state:ok" in _cli(["-p", str(p), "cluster", "info"])
                    for p in self.ports
                ),
                "cluster_state:ok on every node",
            )
        except BaseException:
            self.kill()
            raise

    @staticmethod
    def _wait(cond: object, what: str, within: float = 20) -> None:
        end = time.monotonic() + within
        while time.monotonic() < end:
            if cond():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")

    def url(self, prefix: str = "mpm") -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+cluster://{nodes}?prefix={prefix}"

    def slot_owner(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot."""
        slot = int(_cli(["-p", str(self.ports[0]), "cluster", "keyslot", key]).strip())
        for p in self.ports:
            if _cli(["-p", str(p), "cluster", "countkeysinslot", str(slot)]).strip() != "0":
                return p
        raise LookupError(key)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
