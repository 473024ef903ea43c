"""Redis-side cost of one append batch, old layout against new (issue 13).

Starts a private ``redis-server`` (free port, no persistence: the cost measured is
the script's own CPU, not fsync), then for each layout sends ``ROUNDS`` batches of
``BATCH`` bus-like events as one ``EVALSHA`` each, the layouts interleaved round by
round, and reads ``INFO commandstats`` before and after each: the ``evalsha`` usec it
added divided by the batch is the server's cost per event (median over the rounds).

- ``old``: the packed field ``r`` and two time-bucketed de-dup hashes of event id ->
  entry id (per event an ``HSET`` field), the script as of ``git show
  <rev>:src/backend/redis/scripts.rs`` (default ``d6b364a``, the last with it);
- ``new``: the script in this tree (since 2026-12-03: the packed field ``r`` and one
  de-dup range per run of a publisher's records), records packed as
  ``src/backend/redis/packed.rs`` does;
- ``new-real`` (with the extension built): the same through ``_core._log_append``,
  the real client path, to check the replica above matches it.

Also ``MEMORY USAGE`` of the stream per entry and the growth of ``used_memory``
(stream plus de-dup keys) per event. Prints one line per layout with the
load average. Usage: ``python benches/redis_append_cost.py [--rev d6b364a]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.redis_server import _free_port, redis_server_binary  # noqa: E402

BATCH = 1000
ROUNDS = 30


def append_script(source: str) -> str:
    m = re.search(r'fn append\(\).*?r#"(.*?)"#', source, re.S)
    assert m, "no append script found"
    return m.group(1)


class Conn:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def call(self, *args: bytes | str | int) -> object:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            out.append(b"$%d\r\n%s\r\n" % (len(p), p))
        self.s.sendall(b"".join(out))
        return self._read()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 20)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _read(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 20)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def records(n: int, seq0: int) -> list[dict[str, object]]:
    now = int(time.time() * 1e6)
    out = []
    for i in range(n):
        data = {
            "tool_name": "Bash",
            "tool_input": {"command": f"ls -la /tmp/{i}", "description": "list"},
            "session_id": "0b7c5f2e-1d0c-4c8e-9a63-2f0d4c1e9b77",
            "cwd": "/work/project",
        }
        meta = {"type": "PreToolUse", "source": "hook_handler", "published_us": now + i}
        out.append(
            {
                "e": str(uuid.uuid4()),
                "t": "hook.pre_tool",
                "p": 3,
                "ts": now + i,
                "pb": "host:4242:1a2b3c4d",
                "ps": seq0 + i,
                "d": json.dumps(data, separators=(",", ":")).encode(),
                "m": json.dumps(meta, separators=(",", ":")).encode(),
            }
        )
    return out


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def packed(r: dict[str, object]) -> bytes:
    d, m = r["d"], r["m"]
    assert isinstance(d, bytes) and isinstance(m, bytes)
    head = struct.pack("<BBBqQI", 1, 0, r["p"], r["ts"], r["ps"], len(m) + len(d))
    body = b"".join(varint(len(b)) + b for b in (str(r["e"]).encode(), str(r["t"]).encode()))
    body += varint(len(str(r["pb"]))) + str(r["pb"]).encode() + varint(len(m)) + m
    return head + body + d


def run_old(c: Conn, sha: str, prefix: str, batch: list[dict[str, object]]) -> None:
    # NOTE: the layout before 2026-12-03: packed records and two time-bucketed hashes
    # of event id -> entry id.
    keys = [f"{{{prefix}}}:{k}" for k in ("stream", "meta", "eids:600:0", "eids:600:1")]
    args: list[object] = [600, len(batch)]
    for r in batch:
        args += [r["e"], packed(r)]
    c.call("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[arg-type]


def run_new(c: Conn, sha: str, prefix: str, batch: list[dict[str, object]]) -> None:
    # NOTE: one publisher with consecutive sequence numbers: one run, as a bus's batch.
    keys = [f"{{{prefix}}}:{k}" for k in ("stream", "meta", f"pub:{batch[0]['pb']}")]
    args: list[object] = [600_000, 10_000, 1, 3, batch[0]["ps"], len(batch)]
    args += [packed(r) for r in batch]
    c.call("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[arg-type]


def evalsha_usec(c: Conn) -> tuple[float, int]:
    info = c.call("INFO", "commandstats")
    assert isinstance(info, bytes)
    m = re.search(rb"cmdstat_evalsha:calls=(\d+),usec=(\d+)", info)
    return (float(m.group(2)), int(m.group(1))) if m else (0.0, 0)


def used_memory(c: Conn) -> int:
    info = c.call("INFO", "memory")
    assert isinstance(info, bytes)
    m = re.search(rb"used_memory:(\d+)", info)
    assert m, info
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="d6b364a")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    a = ap.parse_args()
    old_src = subprocess.run(
        ["git", "show", f"{a.rev}:src/backend/redis/scripts.rs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    scripts = {
        "old": append_script(old_src),
        "new": append_script((ROOT / "src/backend/redis/scripts.rs").read_text()),
    }
    binary = redis_server_binary()
    assert binary, "no redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(500):
                try:
                    c = Conn(port)
                    c.call("PING")
                    break
                except OSError:
                    time.sleep(0.01)
            layouts = ["old", "new"]
            try:
                from mpm_events._core import _log_append

                layouts.append("new-real")
            except ImportError:
                _log_append = None
            shas = {}
            for layout in layouts:
                loaded = c.call("SCRIPT", "LOAD", scripts[layout.removesuffix("-real")])
                assert isinstance(loaded, bytes)
                shas[layout] = loaded.decode()
            # NOTE: interleaved, one batch of each layout per round, each timed by the
            # evalsha usec counter just before and after it: a load change on the
            # shared machine hits every layout alike; the median is reported.
            per_event: dict[str, list[float]] = {k: [] for k in layouts}
            grown = dict.fromkeys(layouts, 0)
            load0 = os.getloadavg()
            for rnd in range(a.rounds):
                batch = records(BATCH, rnd * BATCH)
                for layout in layouts:
                    prefix = f"b{layout.replace('-', '')}"
                    before, _ = evalsha_usec(c)
                    used0 = used_memory(c)
                    if layout == "old":
                        run_old(c, shas[layout], prefix, batch)
                    elif layout == "new":
                        run_new(c, shas[layout], prefix, batch)
                    else:
                        assert _log_append is not None
                        evs = [
                            {
                                "topic": r["t"],
                                "source": "hook_handler",
                                "type": "PreToolUse",
                                "data": json.loads(r["d"]),  # type: ignore[arg-type]
                            }
                            for r in batch
                        ]
                        _log_append(f"redis://127.0.0.1:{port}/0?prefix={prefix}", evs)
                    after, _ = evalsha_usec(c)
                    grown[layout] += used_memory(c) - used0
                    per_event[layout].append((after - before) / BATCH)
            results = []
            n = a.rounds * BATCH
            for layout in layouts:
                prefix = f"b{layout.replace('-', '')}"
                mem = c.call("MEMORY", "USAGE", f"{{{prefix}}}:stream", "SAMPLES", "0")
                assert isinstance(mem, int)
                count = "return #redis.call('KEYS', ARGV[1]) + #redis.call('KEYS', ARGV[2])"
                dedup_keys = c.call("EVAL", count, 0, f"{{{prefix}}}:eid*", f"{{{prefix}}}:pub:*")
                xs = sorted(per_event[layout])
                results.append(
                    f"{layout:9s} median {statistics.median(xs):6.2f} us/event on the server "
                    f"(min {xs[0]:.2f}, max {xs[-1]:.2f}; {a.rounds} EVALSHA of {BATCH}); "
                    f"stream {mem / n:.0f} B/entry; de-dup keys {dedup_keys}; "
                    f"used_memory +{grown[layout] / n:.0f} B/event"
                )
        finally:
            proc.kill()
            proc.wait()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for line in results:
        print(line)
    print(
        f"load average {' '.join(f'{x:.2f}' for x in load0)} before, {load} after; "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
