"""W10: wall time of one cold hook process, ours beside claude-mpm's real handler.

    python benches/hookprobe.py [OURS_RUNS] [ORIGINAL_RUNS]    # prints one JSON line

Both get the same Claude Code ``PreToolUse`` input on stdin, in a fresh process each,
timed from spawn to exit in this process:

- ours: ``python -m mpm_events hook --backend sqlite:///<tmp>/events.db`` (the event is
  committed to the log, fsynced, before it answers);
- the original: ``python -m claude_mpm.hooks.claude_hooks.hook_handler`` through
  ``tests/helpers/claude_hook_baseline.py`` (its ``claude --version`` stub on PATH, HOME
  in a temp dir, its POSTs answered by a local recording server, as with a dashboard
  up).

Runs alternate between the two. Each gets one untimed warm-up run first, and
``PYTHONDONTWRITEBYTECODE`` is removed from their environment, so that compiled
bytecode is cached as in a normal installation (pip compiles claude-mpm's at install;
an editable build of ours has none until a first run writes it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"

HOOK = {
    "session_id": "bench-0000-4000-8000-000000000010",
    "transcript_path": "/home/dev/.claude/projects/p/bench.jsonl",
    "cwd": "/work/projects/shop",
    "permission_mode": "default",
    "hook_event_name": "PreToolUse",
    "tool_name": "Bash",
    "tool_input": {"command": "pytest -q", "description": "Run the tests"},
}


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    env.pop("MPM_EVENTS_BACKEND", None)
    env["HOME"] = str(home)
    return env


def ours_once(root: Path, backend: str | None = None) -> float:
    """Seconds for one ``mpm-events hook`` process (on ``backend``, default a SQLite
    log under ``root``); raises if it did not store the event."""
    env = _env(root / "home")
    (root / "home").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "mpm_events",
        "hook",
        "--backend",
        backend or f"sqlite://{root / 'events.db'}",
    ]
    began = time.perf_counter()
    proc = subprocess.run(
        cmd, input=json.dumps(HOOK).encode(), capture_output=True, env=env, timeout=60, check=False
    )
    took = time.perf_counter() - began
    if proc.returncode != 0 or proc.stdout != b'{"continue": true}\n' or proc.stderr:
        raise RuntimeError(f"mpm-events hook failed: {proc.stdout!r} {proc.stderr[-500:]!r}")
    return took


def original_once(root: Path) -> float:
    """Seconds for one run of claude-mpm's handler; raises if it sent no pre_tool."""
    sys.path.insert(0, str(TESTS))
    from helpers.claude_hook_baseline import run_baseline

    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        run = run_baseline(HOOK, root=root, timeout=60)
    finally:
        if saved is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = saved
    if "pre_tool" not in run.subtypes:
        raise RuntimeError(f"claude-mpm's handler sent {run.subtypes}, no pre_tool")
    return run.wall_s


def measure(ours_runs: int, original_runs: int) -> dict[str, Any]:
    """``{"ours": {"samples_ms": [...], "median_ms"}, "original": {...}}`` (or ``error``)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mpm-w10-") as tmp:
        root = Path(tmp)
        kinds = {"ours": (ours_once, ours_runs), "original": (original_once, original_runs)}
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        failed: dict[str, str] = {}
        for name, (fn, _) in kinds.items():
            try:
                fn(root / name)  # warm-up: bytecode, the log's file, the stub
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
        for i in range(max(ours_runs, original_runs)):
            order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
            for name in order:
                fn, runs = kinds[name]
                if name in failed or len(samples[name]) >= runs:
                    continue
                try:
                    samples[name].append(fn(root / name) * 1000)
                except Exception as exc:
                    failed[name] = f"{type(exc).__name__}: {exc}"
        for name in kinds:
            if name in failed:
                out[name] = {"error": failed[name]}
            else:
                out[name] = {
                    "samples_ms": samples[name],
                    "median_ms": statistics.median(samples[name]),
                }
    return out


if __name__ == "__main__":
    ours_n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    orig_n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(json.dumps(measure(ours_n, orig_n)))
