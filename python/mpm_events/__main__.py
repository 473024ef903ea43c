"""Command line: ``python -m mpm_events demo`` and ``python -m mpm_events --version``."""

from __future__ import annotations

import argparse
import sys

from mpm_events import __version__


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
            "an error) through the bus into Python consumers, one of them flaky, and "
            "prints a summary: per-consumer counts, retries, dead letters, rate."
        ),
    )
    demo.add_argument("--events", type=int, default=2000, help="events to publish (2000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the session (7)")
    demo.add_argument(
        "--socketio",
        metavar="URL",
        default=None,
        help="also forward to a Socket.IO dashboard (needs the built-in SocketIOConsumer)",
    )
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help()
        return 2
    if args.events < 1:
        parser.error("--events must be at least 1")

    from mpm_events._demo import run

    return run(events=args.events, seed=args.seed, socketio_url=args.socketio)


if __name__ == "__main__":
    sys.exit(main())
