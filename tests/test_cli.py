"""The ``mpm-events`` inspecting commands (issue 14): ``tail``, ``stats``, ``dlq``,
``replay``, ``bench``, run as real subprocesses of ``python -m mpm_events``.

Direct mode reads real shared logs (SQLite files, and a private redis-server where it
is cheap) written by real publisher processes (an ``EventBus(backend=...)``, the
``hook`` command) and consumed by real consumer processes
(tests/helpers/shared_log_child.py). Monitor mode talks to
tests/helpers/monitor_fake.py, a real HTTP server speaking the monitor's API as
docs/cli.md gives it. Output is JSON lines (stdout is a pipe here), parsed and
checked exactly; one test runs ``stats`` on a pseudo-terminal for its table.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.monitor_fake import FakeMonitor
from helpers.sio_helpers import free_port

HELPERS = Path(__file__).parent / "helpers"
CHILD = HELPERS / "shared_log_child.py"
WAIT = 30.0

EVENT_KEYS = {
    "seq",
    "id",
    "topic",
    "type",
    "timestamp",
    "source",
    "data",
    "correlation_id",
    "priority",
}

PUBLISH = textwrap.dedent(
    """
    import asyncio, json, sys
    from mpm_events import Event, EventBus

    async def main(url, items):
        bus = EventBus(backend=url)
        await bus.start()
        for topic, data in items:
            assert await bus.publish(Event(topic=topic, type="T", source="pub", data=data))
        await bus.stop(10)

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
    """
)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "MPM_EVENTS_BACKEND"}
    e["PYTHONPATH"] = os.pathsep.join([str(HELPERS.parent), e.get("PYTHONPATH", "")])
    return e


def cli(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpm_events", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        check=False,
    )


def ok(*args: str) -> list[Any]:
    """The JSON lines of a command that must succeed."""
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [json.loads(line) for line in proc.stdout.splitlines()]


def fails(status: int, *args: str) -> str:
    """The one stderr line of a command that must fail with ``status``."""
    proc = cli(*args)
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def publish(url: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    """A real publisher process: an EventBus on the log publishing ``items``."""
    proc = subprocess.run(
        [sys.executable, "-c", PUBLISH, url, json.dumps(items)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=WAIT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


class Lines:
    """A running command whose stdout lines a thread collects."""

    def __init__(self, *args: str, command: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "mpm_events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, n: int, within: float = WAIT) -> list[str]:
        with self.cond:
            if not self.cond.wait_for(
                lambda: len(self.lines) >= n or self.proc.poll() is not None, within
            ):
                self.stop()
                pytest.fail(f"only {len(self.lines)} of {n} lines in {within} s: {self.lines}")
            if len(self.lines) < n:
                pytest.fail(f"exited {self.proc.returncode}: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            return list(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(WAIT)


def wait_lines(path: Path, n: int, within: float = WAIT) -> list[str]:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if path.exists() and len(lines := path.read_text().splitlines()) >= n:
            return lines
        time.sleep(0.05)
    pytest.fail(f"{path} never had {n} lines")


def consumer(url: str, name: str, out: Path, **opts: str) -> Lines:
    c = Lines(
        command=[
            sys.executable,
            str(CHILD),
            "consume",
            url,
            name,
            str(out),
            *(f"{k}={v}" for k, v in opts.items()),
        ]
    )
    assert c.wait_for(1) == ["READY"]
    return c


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


ITEMS = [
    ("log.a", {"i": 0}),
    ("log.skip", {"i": 1}),
    ("log.b.deep", {"i": 2, "tool": "Bash"}),
    ("other", {"i": 3}),
    ("log.a", {"i": 4, "tool": "Read"}),
]


# ----- tail -----


def seq_key(seq: str) -> tuple[int, int]:
    major, minor = seq.split("-")
    return int(major), int(minor)


def test_tail_prints_the_backlog_filtered_and_in_order(any_url: str) -> None:
    url = any_url
    publish(url, ITEMS)
    got = ok(
        "tail", "log.**", "--exclude", "log.skip", "--no-follow", "--since", "1h", "--backend", url
    )
    assert [(e["topic"], e["data"]) for e in got] == [
        ("log.a", {"i": 0}),
        ("log.b.deep", {"i": 2, "tool": "Bash"}),
        ("log.a", {"i": 4, "tool": "Read"}),
    ]
    assert all(set(e) == EVENT_KEYS for e in got)
    seqs = [e["seq"] for e in got]
    if url.startswith("sqlite:"):
        assert seqs == ["1-0", "3-0", "5-0"]
    else:  # Redis stream ids, <ms>-<n>
        assert seqs == sorted(seqs, key=seq_key) and len(set(seqs)) == 3
    assert {(e["type"], e["source"], e["priority"], e["correlation_id"]) for e in got} == {
        ("T", "pub", "NORMAL", None)
    }
    # The default backlog is the last 10; -n N the last N; --rule filters by content.
    assert [e["data"]["i"] for e in ok("tail", "--no-follow", "--backend", url)] == [0, 1, 2, 3, 4]
    assert [
        e["data"]["i"] for e in ok("tail", "**", "-n", "2", "--no-follow", "--backend", url)
    ] == [3, 4]
    rule = json.dumps({"data": {"tool": [{"exists": True}]}})
    assert [
        e["data"]["i"]
        for e in ok("tail", "--rule", rule, "-n", "1", "--no-follow", "--backend", url)
    ] == [4]
    if url.startswith("sqlite:"):
        # A bare path is a SQLite log, as EventBus(backend=...) takes it.
        path = url.removeprefix("sqlite://")
        assert ok("tail", "-n", "1", "--no-follow", "--backend", path) == got[-1:]
    # Time windows: nothing from the future, nothing until an hour ago.
    assert ok("tail", "--from", "2999-01-01T00:00:00Z", "--no-follow", "--backend", url) == []
    assert ok("tail", "--since", "1h", "--until", "1h", "--backend", url) == []


def hook(url: str, session: str) -> None:
    """A real Claude Code hook process appending one event."""
    proc = subprocess.run(
        [sys.executable, "-m", "mpm_events", "hook", "--backend", url],
        input=json.dumps({"hook_event_name": "Stop", "session_id": session}),
        capture_output=True,
        text=True,
        env=env(),
        timeout=WAIT,
        check=False,
    )
    assert (proc.stdout, proc.stderr) == ('{"continue": true}\n', "")


def test_tail_follows_an_event_published_after_it_started(url: str) -> None:
    publish(url, [("log.a", {"i": 0})])
    hook(url, "s1")
    tail = Lines("tail", "hook.**", "-n", "5", "--backend", url)
    try:
        # The backlog: the one hook event (log.a does not match). Then tail follows.
        first = json.loads(tail.wait_for(1)[0])
        assert (first["seq"], first["data"]["session_id"]) == ("2-0", "s1")
        hook(url, "s2")
        publish(url, [("log.a", {"i": 1})])
        hook(url, "s3")
        got = [json.loads(line) for line in tail.wait_for(3)]
        assert [(e["seq"], e["data"]["session_id"]) for e in got] == [
            ("2-0", "s1"),
            ("3-0", "s2"),
            ("5-0", "s3"),
        ]
        assert all(e["topic"].startswith("hook.") for e in got)
    finally:
        assert tail.stop() == 130
    assert len(tail.lines) == 3


def test_bad_flags_are_one_line_and_exit_2(url: str) -> None:
    publish(url, [("log.a", {"i": 0})])
    assert "invalid duration '10x'" in fails(2, "tail", "--since", "10x", "--backend", url)
    assert "invalid rule: $.data" in fails(2, "tail", "--rule", '{"data": 5}', "--backend", url)
    assert "not allowed with argument" in fails(
        2, "tail", "--since", "1m", "--from", "2026-01-01", "--backend", url
    )
    assert "invalid datetime 'yesterday'" in fails(
        2, "tail", "--from", "yesterday", "--backend", url
    )
    said = fails(2, "tail", "a..b", "--no-follow", "--backend", url)
    assert 'argument PATTERN: invalid topic "a..b": pattern has an empty segment' in said
    assert "argument --exclude: invalid topic" in fails(
        2, "tail", "--exclude", "a*", "--backend", url
    )
    assert "say which dead letters" in fails(2, "dlq", "redrive", "--backend", url)
    assert "the following arguments are required: ACTION" in fails(2, "dlq")
    assert "--to" in fails(2, "replay", "--backend", url)
    assert "not allowed with argument" in fails(
        2, "stats", "--backend", url, "--monitor", "http://x"
    )


def test_unreachable_targets_are_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()
    said = fails(1, "stats", "--monitor", f"http://127.0.0.1:{port}/?token=t")
    assert said.startswith(
        "python -m mpm_events stats: cannot reach the monitor at http://127.0.0.1:"
    )
    assert "refused" in said.lower()
    said = fails(1, "tail", "--monitor", f"http://127.0.0.1:{port}/")
    assert "cannot reach the monitor" in said
    missing = tmp_path / "nothing.db"
    assert f"no event log at {missing}" in fails(1, "stats", "--backend", f"sqlite://{missing}")
    assert not missing.exists()
    dead_redis = f"redis://127.0.0.1:{port}/0"
    assert "cannot use the log" in fails(1, "dlq", "list", "--backend", dead_redis)


# ----- stats, dlq -----


def test_stats_and_dlq_list_show_purge_redrive_then_the_consumer_gets_them(
    tmp_path: Path, any_url: str
) -> None:
    url = any_url
    out = tmp_path / "dl.txt"
    flag = tmp_path / "failing"
    flag.touch()
    c = consumer(url, "dl", out, fail_while=str(flag))
    try:
        publish(url, [("log.ev", {"pub": "p", "i": i}) for i in range(3)])
        end = time.monotonic() + WAIT
        while len(letters := ok("dlq", "list", "--backend", url)) < 3:
            assert time.monotonic() < end, letters
            time.sleep(0.1)
        # Oldest first: in the order the consumer gave up on them.
        assert [d["timestamp"] for d in letters] == sorted(d["timestamp"] for d in letters)
        newest = letters[-1]
        letters.sort(key=lambda d: d["event"]["data"]["i"])
        assert [
            (d["consumer"], d["topic"], d["attempts"], d["event"]["data"]) for d in letters
        ] == [("dl", "log.ev", 1, {"pub": "p", "i": i}) for i in range(3)]
        assert all(
            set(d)
            == {"id", "consumer", "topic", "attempts", "errors", "error", "timestamp", "event"}
            for d in letters
        )
        assert all(d["error"] and d["errors"] == [d["error"]] for d in letters)
        assert all(d["id"] == d["event"]["id"] for d in letters)
        ids = [d["id"] for d in letters]
        assert ok("dlq", "show", ids[1], "--backend", url) == [letters[1]]
        assert ok("dlq", "list", "--limit", "1", "--backend", url) == [newest]
        assert ok("dlq", "list", "--consumer", "nobody", "--backend", url) == []

        [snap] = ok("stats", "--backend", url)
        assert snap["topics"] == {"log.ev": 3}
        assert snap["log"]["entries"] == 3 and snap["log"]["dead_letters"] == 3
        [group] = snap["groups"]
        position = max((d["event"]["seq"] for d in letters), key=seq_key)
        assert group == {
            "name": "dl",
            "position": position,
            "pending": 0,
            "ready": 0,
            "lag": 0,
            "dead_letters": 3,
        }

        assert "no dead letter with id 'nope'" in fails(1, "dlq", "show", "nope", "--backend", url)
        assert ok("dlq", "purge", ids[2], "--backend", url) == [{"purged": 1}]
        flag.unlink()
        assert ok("dlq", "redrive", ids[0], "--backend", url) == [{"redriven": 1}]
        assert wait_lines(out, 1) == [f"p 0 {c.proc.pid}"]
        assert ok("dlq", "redrive", "--consumer", "dl", "--backend", url) == [{"redriven": 1}]
        assert sorted(wait_lines(out, 2)) == [f"p 0 {c.proc.pid}", f"p 1 {c.proc.pid}"]
        assert ok("dlq", "list", "--backend", url) == []
        assert ok("dlq", "redrive", "--all", "--backend", url) == [{"redriven": 0}]
    finally:
        c.stop()


# ----- replay -----


def test_replay_hands_a_window_to_one_consumer_name_only(tmp_path: Path, url: str) -> None:
    outs = {name: tmp_path / f"{name}.txt" for name in ("a", "b")}
    kids = {name: consumer(url, name, out) for name, out in outs.items()}
    try:
        publish(
            url,
            [("log.ev", {"pub": "p", "i": i}) for i in range(4)]
            + [("log.x", {"pub": "p", "i": 9})],
        )
        for out in outs.values():
            wait_lines(out, 5)
        assert ok("replay", "--to", "a", "--pattern", "log.ev", "--dry-run", "--backend", url) == [
            {"to": "a", "matched": 4, "dry_run": True}
        ]
        assert ok(
            "replay",
            "--to",
            "a",
            "--pattern",
            "log.ev",
            "--since",
            "1h",
            "--rate",
            "200",
            "--backend",
            url,
        ) == [{"to": "a", "matched": 4, "replayed": 4, "skipped": 0}]
        lines = wait_lines(outs["a"], 9)
        assert sorted(int(line.split()[1]) for line in lines) == [0, 0, 1, 1, 2, 2, 3, 3, 9]

        # The consumer writes its line, then the bus acknowledges: wait for that.
        def counts() -> dict[str, tuple[int, int, int]]:
            [snap] = ok("stats", "--backend", url)
            return {g["name"]: (g["pending"], g["ready"], g["lag"]) for g in snap["groups"]}

        end = time.monotonic() + WAIT
        while (seen := counts()) != {"a": (0, 0, 0), "b": (0, 0, 0)}:
            assert time.monotonic() < end, seen
            time.sleep(0.1)
        assert len(outs["b"].read_text().splitlines()) == 5
        said = fails(1, "replay", "--to", "nobody", "--backend", url)
        assert "no consumer named 'nobody' (known: a, b)" in said
        assert ok("replay", "--to", "a", "--until", "1h", "--backend", url) == [
            {"to": "a", "matched": 0, "replayed": 0, "skipped": 0}
        ]
    finally:
        for k in kids.values():
            k.stop()


# ----- monitor mode -----


@pytest.fixture
def monitor() -> Iterator[FakeMonitor]:
    m = FakeMonitor()
    try:
        yield m
    finally:
        m.close()


def _letter(i: int, consumer: str) -> dict[str, Any]:
    return {
        "id": f"ev/{i}",
        "consumer": consumer,
        "topic": "hook.x",
        "attempts": 3,
        "errors": ["boom"],
        "error": "boom",
        "timestamp": "2026-12-02T05:00:00+00:00",
        "event": {"topic": "hook.x", "data": {"i": i}},
    }


def test_monitor_stats_and_dlq_speak_the_api(monitor: FakeMonitor) -> None:
    monitor.metrics = {"events_published": 7, "consumers": {"c": {"processed": 7}}}
    monitor.consumers = [{"name": "c", "topics": ["**"]}]
    monitor.dead_letters = [_letter(1, "c"), _letter(2, "c"), _letter(3, "d")]
    assert ok("stats", "--monitor", monitor.url) == [
        {"monitor": monitor.base, "metrics": monitor.metrics, "consumers": monitor.consumers}
    ]
    assert (
        ok("dlq", "list", "--consumer", "c", "--limit", "5", "--monitor", monitor.url)
        == monitor.dead_letters[:2]
    )
    assert monitor.requests[-1].path == "/api/dead-letters?consumer=c&limit=5"
    assert ok("dlq", "show", "ev/3", "--monitor", monitor.url) == [monitor.dead_letters[2]]
    assert monitor.requests[-1].path == "/api/dead-letters/ev%2F3"
    assert "HTTP 404" in fails(1, "dlq", "show", "ev/9", "--monitor", monitor.url)
    # State changes need the token: without it the monitor's 401 is one line.
    said = fails(1, "dlq", "redrive", "ev/1", "--monitor", monitor.base + "/")
    assert "HTTP 401 (pass the monitor URL with the ?token= it printed)" in said
    assert ok("dlq", "redrive", "ev/1", "--monitor", monitor.url) == [{"redriven": 1}]
    post = monitor.requests[-1]
    assert (post.method, post.path, post.body) == (
        "POST",
        "/api/dead-letters/redrive",
        {"ids": ["ev/1"]},
    )
    assert post.headers["Authorization"] == f"Bearer {monitor.token}"
    assert "Origin" not in post.headers
    assert ok("dlq", "purge", "--consumer", "d", "--monitor", monitor.url) == [{"purged": 1}]
    assert monitor.requests[-1].body == {"consumer": "d"}
    assert ok("dlq", "redrive", "--all", "--monitor", monitor.url) == [{"redriven": 1}]
    assert monitor.requests[-1].body == {}


def test_monitor_replay_polls_its_job(monitor: FakeMonitor) -> None:
    assert ok(
        "replay",
        "--to",
        "c",
        "--since",
        "2026-12-01T00:00:00Z",
        "--pattern",
        "hook.**",
        "--monitor",
        monitor.url,
    ) == [{"to": "c", "job": "job1", "done": True, "replayed": 3, "total": 3}]
    start = next(r for r in monitor.requests if r.method == "POST")
    assert start.body == {
        "since": "2026-12-01T00:00:00+00:00",
        "until": None,
        "pattern": "hook.**",
        "to": "c",
    }
    assert "--rate needs --backend" in fails(
        2, "replay", "--to", "c", "--rate", "5", "--monitor", monitor.url
    )


def test_monitor_tail_follows_the_stream_and_resumes_without_gap(monitor: FakeMonitor) -> None:
    for i in range(3):
        monitor.publish("hook.a", {"i": i})
    monitor.publish("hook.skip", {"i": 99})
    monitor.drop_after = 2  # the server drops the stream after two events, once
    tail = Lines("tail", "hook.**", "--exclude", "hook.skip", "--monitor", monitor.url)
    try:
        tail.wait_for(3)
        monitor.publish("hook.a", {"i": 3})
        got = [json.loads(line) for line in tail.wait_for(4)]
        assert [(e["seq"], e["data"]["i"]) for e in got] == [(1, 0), (2, 1), (3, 2), (5, 3)]
        streams = [r for r in monitor.requests if r.path.startswith("/api/stream")]
        assert streams[0].path == "/api/stream?pattern=hook.%2A%2A&exclude=hook.skip"
        assert streams[1].headers.get("Last-Event-ID") == "2"
    finally:
        assert tail.stop() == 130
    said = fails(2, "tail", "-n", "5", "--monitor", monitor.url)
    assert "-n read the log's history, which a monitor's stream does not serve" in said


# ----- terminal, hook path, bench -----


def on_terminal(*args: str, extra_env: dict[str, str] | None = None) -> str:
    """What a command writes to stdout when that is a pseudo-terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpm_events", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**env(), "COLUMNS": "120", "TERM": "dumb", **(extra_env or {})},
    )
    os.close(slave)
    chunks = []
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # NOTE: Linux answers EIO once the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(WAIT) == 0, proc.stderr.read()  # type: ignore[union-attr]
    return b"".join(chunks).decode()


def test_stats_on_a_terminal_is_a_table_and_json_lines_without_rich(
    tmp_path: Path, url: str
) -> None:
    pytest.importorskip("rich")
    publish(url, [("log.ev", {"i": 0})])
    text = on_terminal("stats", "--backend", url)
    assert "events per topic" in text and "log.ev" in text and "consumer groups" in text
    assert not text.lstrip().startswith("{")
    # rich missing (a package that fails to import shadows it): JSON lines on a terminal.
    shadow = tmp_path / "shadow" / "rich"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('rich is not installed')\n")
    path = os.pathsep.join([str(shadow.parent), env()["PYTHONPATH"]])
    text = on_terminal("stats", "--backend", url, extra_env={"PYTHONPATH": path})
    assert json.loads(text)["topics"] == {"log.ev": 1}


def test_stats_watch_prints_a_snapshot_per_refresh(url: str) -> None:
    publish(url, [("log.ev", {"i": 0})])
    watch = Lines("stats", "--watch", "--interval", "0.1", "--backend", url)
    try:
        snaps = [json.loads(line) for line in watch.wait_for(2)]
    finally:
        assert watch.stop() == 130
    assert [s["topics"] for s in snaps[:2]] == [{"log.ev": 1}, {"log.ev": 1}]


def test_the_hook_path_imports_none_of_the_new_commands(url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mpm_events", "hook", "--backend", url],
        input=json.dumps({"hook_event_name": "Stop", "session_id": "s"}),
        capture_output=True,
        text=True,
        env=env(),
        timeout=WAIT,
        check=False,
    )
    assert proc.stdout == '{"continue": true}\n'
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "mpm_events.hooks" in imported
    assert not [m for m in imported if m.startswith("mpm_events._cli") or m in ("argparse", "rich")]


def test_bench_runs_the_built_in_benchmark() -> None:
    rows = ok("bench", "--events", "500")
    assert [(r["bench"], r["events"]) for r in rows] == [
        ("publish", 500),
        ("log_append", 500),
        ("log_read", 500),
    ]
    assert all(r["events_per_s"] > 0 and r["seconds"] > 0 for r in rows)
