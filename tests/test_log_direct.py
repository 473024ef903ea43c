"""``_core._log_*``: the shared log without a bus (what ``mpm-events hook``, the
``tail``/``stats``/``dlq``/``replay`` commands and W11 use), on real SQLite files."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mpm_events import Event, InvalidTopicError, PersistenceError
from mpm_events._core import _log_ack, _log_append, _log_range, _log_read


def url_of(path: Path) -> str:
    return f"sqlite://{path}"


def test_append_dicts_and_events_and_read_them_back(tmp_path):
    url = url_of(tmp_path / "sub" / "events.db")
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ev = Event(
        topic="hook.post_tool",
        type="PostToolUse",
        source="hook",
        data={"tool": "Bash", "n": [1, 2.5, None, True]},
        correlation_id="c-1",
        timestamp=at,
    )
    first = _log_append(url, [{"topic": "hook.pre_tool", "type": "PreToolUse", "data": {}}])
    ids = _log_append(url, [ev, {"topic": "system.start", "type": "s", "source": "t"}])
    assert first == ["1-0"] and ids == ["2-0", "3-0"]
    got = _log_range(url)
    assert [e["entry_id"] for e in got] == ["1-0", "2-0", "3-0"]
    e = got[1]
    assert (e["id"], e["topic"], e["type"], e["source"]) == (
        ev.id,
        "hook.post_tool",
        "PostToolUse",
        "hook",
    )
    assert e["data"] == {"tool": "Bash", "n": [1, 2.5, None, True]}
    assert e["correlation_id"] == "c-1" and got[0]["correlation_id"] is None
    assert e["timestamp_us"] == int(at.timestamp()) * 1_000_000 + 678901
    assert e["priority"] == 3  # NORMAL
    # One publisher per process, its counter in log order.
    assert len({x["publisher"] for x in got}) == 1
    # NOTE: the counter is per process, so other tests' appends may come first.
    first = got[0]["publisher_seq"]
    assert first >= 1 and [x["publisher_seq"] for x in got] == [first, first + 1, first + 2]
    assert [x["topic"] for x in _log_range(url, topics=["hook.**"])] == [
        "hook.pre_tool",
        "hook.post_tool",
    ]
    assert [x["entry_id"] for x in _log_range(url, after="1-0", limit=1)] == ["2-0"]


def test_two_processes_append_to_one_log(tmp_path):
    url = url_of(tmp_path / "events.db")
    code = (
        "import sys; from mpm_events._core import _log_append;"
        "[_log_append(sys.argv[1], [{'topic': 'a.b', 'type': 't', 'data': {'i': i}}]) "
        "for i in range(20)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, url]) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    got = _log_range(url)
    assert len(got) == 40 and len({e["id"] for e in got}) == 40
    for who in {e["publisher"] for e in got}:
        mine = [e["data"]["i"] for e in got if e["publisher"] == who]
        assert mine == list(range(20))  # per-publisher order


def test_groups_read_and_ack(tmp_path):
    url = url_of(tmp_path / "events.db")
    _log_append(url, [{"topic": "a.b", "type": "t", "data": {"i": i}} for i in range(5)])
    a = _log_read(url, "relay", "relay-1", 3)
    assert [e["data"]["i"] for e in a] == [0, 1, 2] and {e["deliveries"] for e in a} == {1}
    assert [e["data"]["i"] for e in _log_read(url, "relay", "relay-2", 10)] == [3, 4]
    assert len(_log_read(url, "audit", "audit-1", 10)) == 5  # another name gets all
    assert _log_ack(url, "relay", [e["entry_id"] for e in a]) == 3
    assert _log_ack(url, "relay", [e["entry_id"] for e in a]) == 0  # idempotent
    assert _log_read(url, "relay", "relay-1", 10, block_ms=20) == []
    late = _log_read(url, "late", "l-1", 10, start="latest")
    assert late == []


def test_bad_arguments_and_unusable_logs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PersistenceError, match=str(blocker)):
        _log_append(url_of(blocker / "x.db"), [{"topic": "a", "type": "t"}])
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(PersistenceError, match="corrupt"):
        _log_append(url_of(garbage), [{"topic": "a", "type": "t"}])
    assert garbage.read_bytes() == b"not sqlite at all" * 100
    url = url_of(tmp_path / "ok.db")
    with pytest.raises(ValueError, match=r"sqlite:///path/to/events\.db or redis://"):
        _log_append("ftp://localhost/0", [])
    with pytest.raises(ValueError, match="durability"):
        _log_append(url, [], durability="fast")  # type: ignore[arg-type]
    with pytest.raises(InvalidTopicError):
        _log_append(url, [{"topic": "a.*", "type": "t"}])
    with pytest.raises(TypeError):
        _log_append(url, [None])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        _log_range(url, after="not-an-id")
    # A bad event fails the call before anything is written.
    with pytest.raises(InvalidTopicError):
        _log_append(url, [{"topic": "ok", "type": "t"}, {"topic": "", "type": "t"}])
    assert _log_range(url) == []


def _topics(entries):
    return [(e["entry_id"], e["topic"]) for e in entries]


def test_range_last_and_exclude_and_scan_moves_past_what_does_not_match(tmp_path):
    from mpm_events._core import _log_scan

    url = url_of(tmp_path / "events.db")
    topics = ["a.x", "b", "a.y", "b", "b", "a.x"]
    _log_append(url, [{"topic": t, "type": "T"} for t in topics])
    assert _topics(_log_range(url, topics=["a.**"], exclude=["a.y"])) == [
        ("1-0", "a.x"),
        ("6-0", "a.x"),
    ]
    assert _topics(_log_range(url, topics=["**"], exclude=["b"], limit=2)) == [
        ("1-0", "a.x"),
        ("3-0", "a.y"),
    ]
    assert _topics(_log_range(url, topics=["b"], last=2)) == [("4-0", "b"), ("5-0", "b")]
    assert _log_range(url, last=0) == []
    # _log_scan: what matched, and how far it looked (matching or not).
    got, seen = _log_scan(url, topics=["a.*"], after="3-0")
    assert (_topics(got), seen) == ([("6-0", "a.x")], "6-0")
    got, seen = _log_scan(url, topics=["b"], after="5-0")
    assert (got, seen) == ([], "6-0")
    assert _log_scan(url, topics=["b"], after="6-0") == ([], "6-0")
    got, seen = _log_scan(url, topics=["**"], limit=2)
    assert (_topics(got), seen) == ([("1-0", "a.x"), ("2-0", "b")], "2-0")
    with pytest.raises(InvalidTopicError, match=r"a\.\.b"):
        _log_scan(url, exclude=["a..b"])


def test_groups_stats_and_requeue(tmp_path):
    """(Dead letters, redrive and purge need a failing consumer: tests/test_cli.py.)"""
    from mpm_events._core import (
        _log_dead_letters,
        _log_groups,
        _log_requeue,
        _log_stats,
    )

    url = url_of(tmp_path / "events.db")
    _log_append(url, [{"topic": t, "type": "T", "data": {"i": i}} for i, t in enumerate("aab")])
    got = _log_read(url, "g", "i1", 2)
    assert _log_ack(url, "g", [e["entry_id"] for e in got]) == 2
    assert _log_groups(url) == [
        {"name": "g", "position": "2-0", "pending": 0, "ready": 0, "lag": 1, "dead_letters": 0}
    ]
    stats = _log_stats(url)
    assert (stats["entries"], stats["last"], stats["groups"], stats["topics"]) == (
        3,
        "3-0",
        1,
        {"a": 2, "b": 1},
    )
    assert "topics" not in _log_stats(url, topics=False)
    # Requeue: the two handled entries come back to g; the unread one is skipped.
    assert _log_requeue(url, "g", ["1-0", "2-0", "3-0", "99-0"]) == 2
    assert _log_groups(url)[0]["ready"] == 2
    again = _log_read(url, "g", "i1", 10)
    assert [(e["entry_id"], e["deliveries"]) for e in again] == [("1-0", 1), ("2-0", 1), ("3-0", 1)]
    assert _log_dead_letters(url) == []
    with pytest.raises(PersistenceError, match="nobody"):
        _log_requeue(url, "nobody", ["1-0"])
    with pytest.raises(ValueError, match="entry id"):
        _log_requeue(url, "g", ["x"])
