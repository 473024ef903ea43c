"""claude-mpm 5.9.10's REAL hook handler as a baseline: what it POSTs for a hook input.

Claude Code runs ``python -m claude_mpm.hooks.claude_hooks.hook_handler`` once per hook,
with one JSON object on stdin. The handler (read from its source):

- first runs ``claude --version`` and does nothing (prints continue, sends nothing)
  unless that prints a version >= 1.0.92: a two-line ``claude`` stub on ``PATH``
  answers it;
- routes on ``hook_event_name`` and POSTs each event it emits, normalized, to
  ``http://$CLAUDE_MPM_SERVER_HOST:$CLAUDE_MPM_SERVER_PORT/api/events`` as
  ``{"namespace": "", "event": "claude_event", "data": <normalized event>}`` from a
  thread pool that the interpreter joins at exit (so every POST has been answered
  when the process has exited);
- keeps the pre-tool correlation id for the post-tool process in
  ``<process cwd>/.claude-mpm/correlations/``, and may write state under
  ``~/.claude-mpm`` (``$HOME``); with ``CLAUDE_MPM_HOOK_DEBUG=true`` it would log to
  ``/tmp/claude-mpm-hook.log`` (we set it false).

:func:`run_baseline` runs it on one hook input with ``HOME`` and the working directory
in a temp dir, the ``claude`` stub first on ``PATH`` and the server address pointed at
a :class:`RecordingServer` of its own (a small HTTP server on a free port that keeps
every POSTed body and answers 204, as the dashboard does), waits for the process to
exit (with a timeout) and returns what it POSTed. :func:`run_chains` runs several
inputs concurrently; the hooks of one chain (a pre and a post tool hook) run one after
the other in one working directory, as Claude Code runs them. Each process costs 1-4 s
here, nearly all imports: keep the number of runs small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HANDLER_MODULE = "claude_mpm.hooks.claude_hooks.hook_handler"
#: What the stub prints for ``claude --version`` (claude-mpm needs >= 1.0.92).
CLAUDE_VERSION = "2.0.50 (Claude Code)"
#: Events claude-mpm's handler emits beside the one each hook is about.
SIDE_SUBTYPES = frozenset(
    {"hook_execution", "command_acknowledged", "todo_updated", "token_usage_updated"}
)


class RecordingServer:
    """An HTTP server on 127.0.0.1 (free port) that records every POST's JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode("utf-8", "replace")}
                with recorder._cond:
                    recorder.bodies.append(body)
                    recorder.paths.append(self.path)
                    recorder._cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once ``count`` bodies arrived; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.bodies) >= count, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class BaselineRun:
    """One run of claude-mpm's handler on one hook input."""

    hook: dict[str, Any]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    #: The POSTed bodies, ``{"namespace", "event", "data": <normalized event>}``.
    bodies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The normalized events (each body's ``data``)."""
        return [b.get("data", {}) for b in self.bodies]

    @property
    def subtypes(self) -> list[str]:
        return [e.get("subtype", "") for e in self.events]

    def main_events(self) -> list[dict[str, Any]]:
        """The events other than the handler's side events (:data:`SIDE_SUBTYPES`)."""
        return [e for e in self.events if e.get("subtype") not in SIDE_SUBTYPES]

    def main_event(self) -> dict[str, Any]:
        """The one event this hook is about; AssertionError unless exactly one."""
        main = self.main_events()
        assert len(main) == 1, f"{self.hook.get('hook_event_name')}: {self.subtypes}"
        return main[0]


def claude_stub(directory: Path) -> Path:
    """Writes an executable ``claude`` that prints :data:`CLAUDE_VERSION`; returns its dir."""
    directory.mkdir(parents=True, exist_ok=True)
    stub = directory / "claude"
    stub.write_text(f'#!/bin/sh\necho "{CLAUDE_VERSION}"\n')
    stub.chmod(0o755)
    return directory


def handler_env(root: Path, port: int) -> dict[str, str]:
    """The environment the handler runs in: stub first on PATH, HOME in ``root``, the
    recording server's address, debug off."""
    bin_dir = claude_stub(root / "bin")
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        CLAUDE_MPM_SERVER_HOST="127.0.0.1",
        CLAUDE_MPM_SERVER_PORT=str(port),
        CLAUDE_MPM_HOOK_DEBUG="false",
    )
    return env


def run_baseline(
    hook: dict[str, Any],
    *,
    root: Path | None = None,
    workdir: Path | None = None,
    python: str = sys.executable,
    timeout: float = 60.0,
) -> BaselineRun:
    """Runs claude-mpm's handler on ``hook`` and returns what it POSTed.

    Args:
        hook: The hook input (written to its stdin as JSON).
        root: Where HOME and the ``claude`` stub go (a fresh temp dir if None).
        workdir: The process's working directory (``root / "work"`` if None): its
            ``.claude-mpm/correlations`` pairs a pre with a post tool hook.
        python: The interpreter with claude-mpm installed.
        timeout: Seconds the process may take; beyond it the run fails.

    Raises:
        AssertionError: It did not exit within ``timeout``, exited non-zero or did
            not print ``{"continue": true}``.
    """
    owned = None
    if root is None:
        owned = tempfile.TemporaryDirectory(prefix="claude-hook-baseline-")
        root = Path(owned.name)
    try:
        workdir = workdir or root / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        with RecordingServer() as server:
            began = time.perf_counter()
            try:
                proc = subprocess.run(
                    [python, "-m", HANDLER_MODULE],
                    input=json.dumps(hook),
                    capture_output=True,
                    text=True,
                    cwd=workdir,
                    env=handler_env(root, server.port),
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"claude-mpm's hook handler took over {timeout} s") from exc
            wall = time.perf_counter() - began
            # NOTE: the handler's POSTs run in a thread pool the interpreter joins at
            # exit, and the server records a body before it answers: once the process
            # has exited, everything it sent is here.
            run = BaselineRun(
                hook=hook,
                returncode=proc.returncode,
                stdout=proc.stdout,
                stderr=proc.stderr,
                wall_s=wall,
                bodies=list(server.bodies),
            )
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"continue": True}, proc.stdout
        return run
    finally:
        if owned is not None:
            owned.cleanup()


def run_chains(
    chains: Iterable[list[dict[str, Any]]],
    *,
    root: Path,
    python: str = sys.executable,
    timeout: float = 60.0,
    max_workers: int = 4,
) -> list[list[BaselineRun]]:
    """Runs each chain's hooks one after another (in one working directory), the
    chains concurrently; returns the runs in the same shape."""
    chains = [list(c) for c in chains]

    def run_chain(i: int) -> list[BaselineRun]:
        chain_root = root / f"chain-{i}"
        return [
            run_baseline(hook, root=chain_root, python=python, timeout=timeout)
            for hook in chains[i]
        ]

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(run_chain, range(len(chains))))


if __name__ == "__main__":
    # python tests/helpers/claude_hook_baseline.py < hook.json: what the handler POSTs.
    result = run_baseline(json.loads(sys.stdin.read()))
    print(json.dumps({"wall_s": result.wall_s, "bodies": result.bodies}, indent=1))
