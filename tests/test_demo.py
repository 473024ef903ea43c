"""``python -m mpm_events demo`` runs, exits 0 and shows retries ending in dead letters."""

from __future__ import annotations

import re
import subprocess
import sys

import mpm_events


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpm_events", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _count(label: str, text: str) -> int:
    m = re.search(rf"^{label}: (\d+)$", text, re.MULTILINE)
    assert m, f"no {label!r} line in:\n{text}"
    return int(m.group(1))


def test_demo_shows_retries_and_dead_letters() -> None:
    proc = _run("demo", "--events", "200", "--seed", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "events: 200 published" in out
    assert _count("retries", out) > 0
    assert _count("dead letters", out) > 0
    # every consumer row is there, and the flaky one dead-lettered something
    row = re.search(r"^flaky-webhook\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    assert row, out
    _processed, failed, retried, dead = map(int, row.groups())
    assert dead == _count("dead letters", out)
    assert failed == retried + dead
    assert re.search(r"after 4 attempts \(waits between attempts: \d+ ms, \d+ ms, \d+ ms\)", out)
    for name in ("transcript", "tool-audit", "batch-counter", "subagents"):
        assert re.search(rf"^{name}\s+\d+\s+0\s+0\s+0", out, re.MULTILINE), out


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"mpm-events {mpm_events.__version__}"


def test_no_command_prints_help_and_fails() -> None:
    proc = _run()
    assert proc.returncode == 2
    assert "demo" in proc.stdout
