"""Command line: ``python -m mpm_events demo`` and ``python -m mpm_events --version``."""

from __future__ import annotations

import argparse
import sys

from mpm_events import __version__


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


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mpm_events",
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
