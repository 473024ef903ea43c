"""Redis down at publish, with the local spool (issue 13): ``?spool=PATH`` (or
``spool=default``; the default for ``mpm-events hook``) sends a publish that cannot
reach Redis to a local SQLite spool, and the next process (or a running bus) that
reaches Redis forwards it, once and in order.

Each test starts its own ``redis-server`` (``tests/helpers/redis_server.py``) and
real ``mpm-events hook`` processes or buses; Redis is SIGKILLed and restarted (its AOF
with ``appendfsync always`` keeps what it acknowledged). Assertion messages report
lost / duplicate counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.redis_server import RedisServer
from mpm_events import EventBus
from mpm_events._core import _log_append, _log_range
from test_shared_log import ev, wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    yield s
    s.kill()


def hook(url: str, prompt: str, env: dict[str, str] | None = None) -> str:
    """Runs ``mpm-events hook --backend URL`` on one prompt; returns its stderr."""
    r = subprocess.run(
        [sys.executable, "-m", "mpm_events", "hook", "--backend", url],
        input=json.dumps(
            {"hook_event_name": "UserPromptSubmit", "session_id": "s", "prompt": prompt}
        ).encode(),
        capture_output=True,
        timeout=30,
        env=env,
    )
    assert r.returncode == 0 and r.stdout == b'{"continue": true}\n', r
    return r.stderr.decode()


def prompts(url: str) -> list[str]:
    return [e["data"]["prompt"] for e in _log_range(url) if e["topic"].startswith("hook.")]


def counts(got: list[str], want: list[str]) -> str:
    c = Counter(got)
    lost = [w for w in want if w not in c]
    dup = sum(n - 1 for n in c.values() if n > 1)
    return f"lost={len(lost)} {lost[:5]} duplicates={dup} handled={len(c)} got={got}"


def test_hooks_spool_while_redis_is_down_and_the_next_hook_forwards_in_order(
    server: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.db"
    url = server.url(prefix=f"t{uuid.uuid4().hex[:8]}") + f"&spool={spool}"
    assert hook(url, "p0") == ""
    server.kill()
    for i in (1, 2, 3):
        assert hook(url, f"p{i}") == "", "a spooled hook must not complain"
    assert spool.exists() and Path(f"{spool}.pending").exists()
    assert server.start(), "redis-server did not come back"
    assert hook(url, "p4") == ""
    want = [f"p{i}" for i in range(5)]
    got = prompts(url)
    assert got == want, counts(got, want)
    assert not Path(f"{spool}.pending").exists(), "the marker stays after a full forward"
    # Forwarded once: another hook finds nothing left to forward.
    assert hook(url, "p5") == ""
    got = prompts(url)
    assert got == [*want, "p5"], counts(got, [*want, "p5"])


def test_the_hook_spools_to_the_default_spool_unless_the_url_says_off(
    server: RedisServer, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = server.url(prefix=prefix)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    server.kill()
    assert hook(url, "d0", env) == ""
    default = (
        tmp_path / "home/.claude-mpm/mpm-events/spool" / f"127.0.0.1_{server.port}_0_{prefix}.db"
    )
    assert default.exists(), sorted(p.name for p in (tmp_path / "home").rglob("*"))
    complaint = hook(url + "&spool=off", "d1", env)
    assert "was not stored" in complaint and f"127.0.0.1:{server.port}" in complaint, complaint
    assert server.start()
    assert hook(url, "d2", env) == ""
    got = prompts(url)
    assert got == ["d0", "d2"], counts(got, ["d0", "d2"])


def test_publishing_the_same_event_again_is_a_new_publish_as_on_sqlite(
    server: RedisServer,
) -> None:
    """What Redis de-duplicates is a retried append of the same records (publisher and
    publisher sequence number: the bus's own retry after a lost reply, a spool forward
    retried after a dead forwarder, `cargo test backend::redis`), not an event
    published twice by the caller: that is stored twice, as on SQLite."""
    url = server.url(prefix=f"t{uuid.uuid4().hex[:8]}")
    event = {"id": "same-id", "topic": "log.ev", "data": {"i": 0}, "source": "t"}
    first = _log_append(url, [event])
    again = _log_append(url, [event])
    assert first != again
    got = _log_range(url)
    assert [r["id"] for r in got] == ["same-id", "same-id"]
    assert got[0]["publisher"] == got[1]["publisher"]
    assert got[1]["publisher_seq"] == got[0]["publisher_seq"] + 1


async def test_a_running_bus_spools_and_forwards_in_the_background(
    server: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.db"
    url = server.url(prefix=f"t{uuid.uuid4().hex[:8]}") + f"&spool={spool}"
    bus = EventBus(backend=url)
    await bus.start()
    assert await bus.publish(ev(0)) is True
    server.kill()
    for i in range(1, 6):
        assert await bus.publish(ev(i)) is True, f"publish {i} with the spool on"
    assert server.start()
    # No further publish: the bus's forwarder notices Redis is back.
    want = list(range(6))

    def forwarded() -> list[int]:
        try:
            return [e["data"]["i"] for e in _log_range(url)]
        except Exception:
            return []

    wait_for(lambda: len(forwarded()) >= 6, within=20, what="the background forward")
    got = forwarded()
    assert got == want, counts([str(g) for g in got], [str(w) for w in want])
    await bus.stop(5)


def test_hooks_racing_to_forward_one_spool_keep_its_order_and_one_copy(
    server: RedisServer, tmp_path: Path
) -> None:
    """Four hook processes start at once after Redis came back; one forwards (the
    lock), the others queue behind the spool: the spooled events reach Redis in
    spool order, each once, and so do the four new ones."""
    spool = tmp_path / "spool.db"
    url = server.url(prefix=f"t{uuid.uuid4().hex[:8]}") + f"&spool={spool}"
    server.kill()
    _log_append(url, [{"topic": "hook.s", "data": {"prompt": f"s{i}"}} for i in range(10)])
    assert server.start()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mpm_events", "hook", "--backend", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for n, p in enumerate(procs):  # all inputs first: the four publish at once
        assert p.stdin is not None
        p.stdin.write(
            json.dumps(
                {"hook_event_name": "UserPromptSubmit", "session_id": "s", "prompt": f"n{n}"}
            ).encode()
        )
        p.stdin.close()
    for p in procs:
        assert p.wait(60) == 0 and p.stderr is not None and p.stdout is not None
        err = p.stderr.read()
        assert p.stdout.read() == b'{"continue": true}\n' and err == b"", err
    want_spooled = [f"s{i}" for i in range(10)]
    want_new = [f"n{n}" for n in range(4)]

    # A hook that found the lock taken spooled behind the forward; if it did so after
    # that forward's last read, its event waits (marker set) for the next process.
    if spool_left(url):
        hook(url, "flush")
        want_new.append("flush")
    assert not spool_left(url)
    got = prompts(url)
    assert [g for g in got if g.startswith("s")] == want_spooled, counts(got, want_spooled)
    assert sorted(g for g in got if not g.startswith("s")) == sorted(want_new), counts(
        got, want_new
    )


def spool_left(url: str) -> bool:
    spool = url.split("spool=")[1].split("&")[0]
    return Path(f"{spool}.pending").exists()
