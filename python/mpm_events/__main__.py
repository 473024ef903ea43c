"""Command line (``mpm-events``, also ``python -m mpm_events``): ``demo``, ``hook``,
``relay``, ``monitor``, ``--version``.

Each command imports what it needs when it runs. ``hook`` runs once per Claude Code
hook in a fresh process, so its import cost is its wall time: its usual arguments
are read without ``argparse`` (which with ``shutil``, ``gettext`` and ``locale`` costs
about 4 ms of a 60 ms budget); anything else (``--help``, a bad value) goes through
the full parser.

``tail``, ``stats``, ``dlq``, ``replay`` and ``bench`` live in :mod:`mpm_events._cli`:
``_cli.commands`` (argparse only) registers them once the full parser is built, and
each command's module is imported only when it runs.
"""

from __future__ import annotations

import os
import sys

from mpm_events import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mpm_events.hooks import HookEvent

#: What ``hook`` prints on stdout, whatever happened: Claude Code goes on.
CONTINUE = '{"continue": true}\n'
#: The hook command's default hard deadline, seconds.
HOOK_DEADLINE_S = 2.0


def _at_least_one(text: str) -> int:
    """``--events``: an int >= 1 (argparse names the option in its error)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _not_negative(text: str) -> float:
    """``--rate``: a number >= 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value >= 0:  # NOTE: also refuses NaN
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _positive(text: str) -> float:
    """``--deadline``: a number > 0."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0:  # NOTE: also refuses NaN
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def default_backend() -> str:
    """``$MPM_EVENTS_BACKEND``, else a SQLite log at ``~/.claude-mpm/mpm-events/events.db``."""
    env = os.environ.get("MPM_EVENTS_BACKEND")
    if env:
        return env
    path = os.path.join(os.path.expanduser("~"), ".claude-mpm", "mpm-events", "events.db")
    return "sqlite://" + path


def sqlite_path(backend_url: str) -> str:
    """The file of a ``sqlite:///path/to/events.db`` URL (``/path/to/events.db``).

    Raises:
        ValueError: Not a ``sqlite:///`` URL with a path (the message names it).
    """
    prefix = "sqlite://"
    rest = backend_url[len(prefix) :] if backend_url.startswith(prefix) else None
    if not rest or not rest.startswith("/") or rest == "/":
        raise ValueError(
            f"backend {backend_url!r} is not supported by this build: "
            "expected sqlite:///path/to/events.db"
        )
    return rest


class _Answer:
    """Prints :data:`CONTINUE` once, from the main thread or the deadline's timer."""

    def __init__(self) -> None:
        import _thread

        self._lock = _thread.allocate_lock()
        self._done = False

    def give(self, complaint: str | None = None) -> bool:
        """Writes ``complaint`` (a stderr line) and the answer unless already given."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            if complaint:
                sys.stderr.write(f"mpm-events hook: {complaint}\n")
                sys.stderr.flush()
            sys.stdout.write(CONTINUE)
            sys.stdout.flush()
            return True


def _publish(event: HookEvent, backend_url: str) -> None:
    """Appends ``event`` to the shared log at ``backend_url``, committed and fsynced
    when this returns.

    No bus and no asyncio: ``_core._log_append`` opens the log (many hook processes
    may open it at once; SQLite's busy timeout serialises their commits), appends in
    one transaction with the GIL released (so the deadline's timer thread can answer
    meanwhile) and encodes the event as the bus's readers decode it. On a
    ``redis://`` backend the event goes to Redis, or to the local spool
    (``spool=default`` unless the URL says ``spool=``) while Redis is unreachable.

    Raises:
        ValueError: The backend URL is not supported.
        Exception: Whatever kept the event out of the log (its message says what;
            a ``PersistenceError`` names the path).
    """
    redis = backend_url.startswith(
        ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")
    )
    if not redis:
        sqlite_path(backend_url)  # NOTE: only absolute sqlite:/// URLs (the check's message)
    from mpm_events._core import _log_append

    # NOTE: on Redis the local spool is on by default (``spool=off`` in the URL to
    # refuse): a hook must not lose its event while the team's Redis is unreachable.
    _log_append(
        backend_url,
        [
            {
                "topic": event.topic,
                "type": event.type,
                "source": event.source,
                "data": event.data,
                "correlation_id": event.correlation_id,
            }
        ],
        default_spool=redis,
    )


def run_hook(backend_url: str | None, deadline_s: float, *, exit_process: bool = False) -> int:
    """``mpm-events hook``: one Claude Code hook object from stdin into the log.

    Always answers ``{"continue": true}`` on stdout and returns 0: bad input, an
    unusable log and a passed deadline are one line on stderr, never a blocked or
    failed hook. With ``exit_process`` (the command line) the process ends right after
    the answer (``os._exit``): the event is committed by then, and interpreter
    teardown would only add to Claude Code's wait.
    """
    answer = _Answer()

    def too_late() -> None:
        if answer.give(
            f"gave up after the {deadline_s:g} s deadline; the event may not be in the log"
        ):
            os._exit(0)  # NOTE: the main thread may be blocked in I/O; SQLite stays consistent

    # NOTE: _thread rather than threading.Timer: it is built in, threading costs 1-3
    # ms of imports. The watcher waits on a lock the main thread releases when done.
    import _thread

    finished = _thread.allocate_lock()
    finished.acquire()

    def watch() -> None:
        if not finished.acquire(timeout=deadline_s):
            too_late()

    _thread.start_new_thread(watch, ())
    try:
        from mpm_events import hooks

        try:
            hook = hooks.parse(sys.stdin.buffer.read())
            event = hooks.convert(hook)
        except hooks.HookInputError as exc:
            answer.give(f"bad hook input: {exc}; nothing published")
            return 0
        url = backend_url or default_backend()
        try:
            _publish(event, url)
        except Exception as exc:
            answer.give(f"the event was not stored in {url}: {type(exc).__name__}: {exc}")
        else:
            answer.give()
        return 0
    except BaseException as exc:  # NOTE: never fail the hook, not even on a bug here
        answer.give(f"internal error: {type(exc).__name__}: {exc}")
        return 0
    finally:
        finished.release()
        if exit_process:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def _fast_hook_args(argv: list[str]) -> tuple[str | None, float] | None:
    """``hook [--backend URL] [--deadline SECONDS]`` read without ``argparse``:
    ``(backend, deadline)``, or None when the arguments need the full parser (help,
    abbreviations, bad or missing values: it gives the usual messages)."""
    if not argv or argv[0] != "hook":
        return None
    backend: str | None = None
    deadline = HOOK_DEADLINE_S
    args = argv[1:]
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if not value or value.startswith("-"):
            return None
        if name == "--backend":
            backend = value
        elif name == "--deadline":
            try:
                deadline = float(value)
            except ValueError:
                return None
            if not deadline > 0:  # NOTE: also refuses NaN
                return None
        else:
            return None
    return backend, deadline


def _prog() -> str:
    """``python -m mpm_events`` when run so, else the script's name (``mpm-events``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m mpm_events" if name in ("", "__main__.py", "-c") else name


def main(argv: list[str] | None = None, *, exit_process: bool = False) -> int:
    """Runs the command line; returns the exit status.

    ``exit_process``: a ``hook`` command ends the process itself once it has answered
    (what the ``mpm-events`` script and ``python -m mpm_events`` do).
    """
    fast = _fast_hook_args(sys.argv[1:] if argv is None else argv)
    if fast is not None:
        return run_hook(fast[0], fast[1], exit_process=exit_process)
    import argparse

    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="mpm-events: an event bus for Python whose engine is Rust.",
    )
    parser.add_argument("--version", action="version", version=f"mpm-events {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="simulate a Claude session's hook stream through the bus",
        description=(
            "Simulates a Claude session's hook stream (responses, tool uses, subagents, "
            "errors) through the bus into the built-in LoggingConsumer (to events.log in "
            "the output dir), MetricsConsumer and DeadLetterConsumer, and Python consumers, "
            "one of them flaky: its retries end in dead-letter files. Shows a live progress "
            "line, then a summary."
        ),
    )
    demo.add_argument(
        "--events", type=_at_least_one, default=3000, help="events to publish, >= 1 (3000)"
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the session (7)")
    demo.add_argument(
        "--rate",
        type=_not_negative,
        default=1000.0,
        help="events per second to publish (1000); 0 publishes as fast as possible",
    )
    demo.add_argument(
        "--output-dir",
        metavar="DIR",
        default=None,
        help="where dead-letter files and events.log go (default: a fresh temp dir)",
    )
    demo.add_argument(
        "--processes",
        action="store_true",
        help=(
            "the cross-process flow instead: hook processes append to a shared log, a "
            "relay forwards it to a dashboard that goes away and comes back"
        ),
    )
    demo.add_argument(
        "--hooks",
        type=_at_least_one,
        default=30,
        help="with --processes: hook processes to run (30)",
    )
    demo.add_argument(
        "--socketio",
        metavar="URL",
        default=None,
        help="also forward every event to a Socket.IO dashboard, e.g. http://127.0.0.1:8765",
    )
    hook = commands.add_parser(
        "hook",
        help="publish one Claude Code hook (JSON on stdin) to the event log",
        description=(
            "A Claude Code hook command: reads one hook JSON object from stdin, turns it "
            "into an event as claude-mpm's hook handler does (topic hook.<subtype>, the "
            "dashboard's type/subtype, session_id, cwd, pre/post tool correlation_id), "
            'stores it durably in the event log and prints {"continue": true}. It always '
            "exits 0: bad input, an unusable log or the deadline passing are reported on "
            "stderr and nothing blocks Claude Code."
        ),
    )
    hook.add_argument(
        "--backend",
        metavar="URL",
        default=None,
        help=(
            "the event log, sqlite:///path/to/events.db (default: $MPM_EVENTS_BACKEND, "
            "else sqlite://~/.claude-mpm/mpm-events/events.db)"
        ),
    )
    hook.add_argument(
        "--deadline",
        type=_positive,
        default=HOOK_DEADLINE_S,
        metavar="SECONDS",
        help=(
            "seconds the command may take, counted from its start after Python's own "
            f"start-up; then it answers and exits whatever happened ({HOOK_DEADLINE_S:g})"
        ),
    )
    relay = commands.add_parser(
        "relay",
        help="forward the shared event log to a dashboard until SIGTERM/SIGINT",
        description=(
            "Subscribes a dashboard consumer under the name dashboard-relay to the shared "
            "event log and forwards every event, in order, until SIGTERM or SIGINT, then "
            "stops gracefully (exit 0). While the dashboard is away it retries (at most "
            "5 s apart) and loses nothing; what is not delivered stays in the log for the "
            "next relay."
        ),
    )
    relay.add_argument(
        "--backend",
        metavar="URL",
        default=None,
        help=(
            "the event log, sqlite:///path/to/events.db (default: $MPM_EVENTS_BACKEND, "
            "else sqlite://~/.claude-mpm/mpm-events/events.db)"
        ),
    )
    relay.add_argument(
        "--to",
        metavar="URL",
        required=True,
        help=(
            "the dashboard: a Socket.IO URL (http://127.0.0.1:8765), or its HTTP route "
            "(a URL ending in /api/events, or any URL with --via http)"
        ),
    )
    relay.add_argument(
        "--via",
        choices=("socketio", "http"),
        default=None,
        help="how to reach the dashboard (default: http for .../api/events, else socketio)",
    )
    monitor = commands.add_parser(
        "monitor",
        help="serve the monitor page over the shared event log until SIGTERM/SIGINT",
        description=(
            "Serves the monitor (docs/monitor.md) over the shared event log: its live "
            "entries, dead letters (redrive, purge) and replay. Prints the page's URL."
        ),
    )
    monitor.add_argument(
        "--backend", metavar="URL", default=None, help="the event log (default as for relay)"
    )
    monitor.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    monitor.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    from mpm_events._cli import commands as cli_commands

    cli_commands.register(commands)
    args = parser.parse_args(argv)
    if getattr(args, "cli_module", None):
        return cli_commands.run(args, parser.prog)
    if args.command == "monitor":
        from mpm_events import monitor_cli

        return monitor_cli.run(args.backend or default_backend(), args.host, args.port)
    if args.command == "relay":
        import asyncio

        from mpm_events import relay as relay_command

        return asyncio.run(relay_command.run(args.backend or default_backend(), args.to, args.via))
    if args.command == "hook":
        return run_hook(args.backend, args.deadline, exit_process=exit_process)
    if args.command != "demo":
        parser.print_help()
        return 2

    if args.processes:
        from mpm_events._demo_processes import run as run_processes

        return run_processes(hooks=args.hooks, output_dir=args.output_dir)
    from mpm_events._demo import run

    return run(
        events=args.events,
        seed=args.seed,
        socketio_url=args.socketio,
        rate=args.rate,
        output_dir=args.output_dir,
    )


def cli() -> None:
    """The ``mpm-events`` console script and ``python -m mpm_events``."""
    sys.exit(main(exit_process=True))


if __name__ == "__main__":
    cli()
