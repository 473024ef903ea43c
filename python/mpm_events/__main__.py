"""Command line (``mpm-events``, also ``python -m mpm_events``): ``demo``, ``hook``,
``relay``, ``--version``.

Only ``argparse`` is imported up front; each command imports what it needs when it
runs (``hook`` runs once per Claude Code hook in a fresh process: its import cost is
its wall time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mpm_events import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mpm_events.hooks import HookEvent

#: What ``hook`` prints on stdout, whatever happened: Claude Code goes on.
CONTINUE = '{"continue": true}\n'
#: The hook command's default hard deadline, seconds.
HOOK_DEADLINE_S = 2.0
#: What the store says when another process opens or creates it at the same moment.
_OPEN_RACES = ("database is locked", "database table is locked", "busy", "already exists")


def _at_least_one(text: str) -> int:
    """``--events``: an int >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _not_negative(text: str) -> float:
    """``--rate``: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value >= 0:  # NOTE: also refuses NaN
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _positive(text: str) -> float:
    """``--deadline``: a number > 0."""
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
        import threading

        self._lock = threading.Lock()
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


def _publish(event: HookEvent, backend_url: str, deadline: float) -> None:
    """Stores ``event`` durably in the log at ``backend_url`` by ``deadline``
    (a ``time.monotonic()`` value).

    Raises:
        ValueError: The backend URL is not supported.
        Exception: Whatever kept the event out of the log (its message says what).
    """
    # NOTE: this moves to the shared log backend (issue 12: EventBus(backend=URL),
    # one log shared by every process, SQLite by default) once it is on main. Until
    # then the event goes through what exists: a bus with SQLite persistence on the
    # URL's file, stopped after the publish (the stored event has no consumer yet; a
    # relay reads it back with replay).
    path = sqlite_path(backend_url)
    import asyncio

    from mpm_events import Event, EventBus, PersistenceError

    async def open_bus() -> EventBus:
        pause = 0.005
        while True:
            try:
                return EventBus(
                    enable_persistence=True, persistence_path=path, retention_interval=None
                )
            except PersistenceError as exc:
                # NOTE: the bus's store is made for one process. When many hook
                # processes open it at once, SQLite can answer "database is locked" at
                # open despite its busy timeout, and two processes creating a new file
                # both create its tables ("table events already exists"). Both are
                # retried (jittered backoff) until the deadline; the shared log backend
                # is to take concurrent openers itself.
                if not any(m in str(exc) for m in _OPEN_RACES):
                    raise
                if time.monotonic() + pause >= deadline:
                    raise
                await asyncio.sleep(pause * (0.5 + os.urandom(1)[0] / 255))
                pause = min(pause * 2, 0.1)

    async def run() -> None:
        bus = await open_bus()
        await bus.start()
        try:
            stored = await bus.publish(
                Event(
                    topic=event.topic,
                    type=event.type,
                    source=event.source,
                    data=event.data,
                    correlation_id=event.correlation_id,
                )
            )
        finally:
            await bus.stop(timeout=max(0.05, deadline - time.monotonic()))
        if not stored:
            raise OSError(f"the event log {path} did not store the event (disk full or I/O error)")

    asyncio.run(asyncio.wait_for(run(), max(0.0, deadline - time.monotonic())))


def run_hook(backend_url: str | None, deadline_s: float, *, exit_process: bool = False) -> int:
    """``mpm-events hook``: one Claude Code hook object from stdin into the log.

    Always answers ``{"continue": true}`` on stdout and returns 0: bad input, an
    unusable log and a passed deadline are one line on stderr, never a blocked or
    failed hook. With ``exit_process`` (the command line) the process ends right after
    the answer (``os._exit``): the bus is stopped and the event committed by then, and
    interpreter teardown would only add to Claude Code's wait.
    """
    began = time.monotonic()
    deadline = began + deadline_s
    answer = _Answer()

    def too_late() -> None:
        if answer.give(
            f"gave up after the {deadline_s:g} s deadline; the event may not be in the log"
        ):
            os._exit(0)  # NOTE: the main thread may be blocked in I/O; SQLite stays consistent

    import threading

    timer = threading.Timer(deadline_s, too_late)
    timer.daemon = True
    timer.start()
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
            _publish(event, url, deadline)
        except TimeoutError:
            answer.give(
                f"the event log {url} did not confirm the event within the {deadline_s:g} s "
                "deadline; it may not be in the log"
            )
        except Exception as exc:
            answer.give(f"the event was not stored in {url}: {type(exc).__name__}: {exc}")
        else:
            answer.give()
        return 0
    except BaseException as exc:  # NOTE: never fail the hook, not even on a bug here
        answer.give(f"internal error: {type(exc).__name__}: {exc}")
        return 0
    finally:
        timer.cancel()
        if exit_process:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def _prog() -> str:
    """``python -m mpm_events`` when run so, else the script's name (``mpm-events``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m mpm_events" if name in ("", "__main__.py", "-c") else name


def main(argv: list[str] | None = None, *, exit_process: bool = False) -> int:
    """Runs the command line; returns the exit status.

    ``exit_process``: a ``hook`` command ends the process itself once it has answered
    (what the ``mpm-events`` script and ``python -m mpm_events`` do).
    """
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
    args = parser.parse_args(argv)
    if args.command == "relay":
        import asyncio

        from mpm_events import relay as relay_command

        return asyncio.run(relay_command.run(args.backend or default_backend(), args.to, args.via))
    if args.command == "hook":
        return run_hook(args.backend, args.deadline, exit_process=exit_process)
    if args.command != "demo":
        parser.print_help()
        return 2

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
