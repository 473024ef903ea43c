"""Registers ``tail``, ``stats``, ``dlq``, ``replay`` and ``bench`` with the
``mpm-events`` parser, and runs the chosen one.

Importing this module costs only what ``argparse`` already cost; each command's own
module is imported in :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from mpm_events.__main__ import _positive
from mpm_events._cli import timeparse

BACKEND_HELP = (
    "read the shared log directly: sqlite:///path/to/events.db or redis://host:port/0 "
    "(default: $MPM_EVENTS_BACKEND, else sqlite://~/.claude-mpm/mpm-events/events.db, "
    "the log `mpm-events hook` writes)"
)
MONITOR_HELP = (
    "talk to a running monitor instead: the URL it printed, with its ?token= "
    "(needed by dlq redrive/purge and replay)"
)


class _OneLine(argparse.ArgumentParser):
    """A parser whose errors are one line on stderr (exit 2), not usage and error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add(commands: argparse._SubParsersAction, name: str, **kw: Any) -> argparse.ArgumentParser:
    """``commands.add_parser`` making a :class:`_OneLine` parser (its own subparsers
    are of that class too)."""
    # NOTE: add_parser builds `commands._parser_class(**kw)`; swapped for these only,
    # so the other commands' parsers are as __main__ makes them.
    before = commands._parser_class
    commands._parser_class = _OneLine
    try:
        return commands.add_parser(name, **kw)
    finally:
        commands._parser_class = before


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a parser that raises ValueError with its message."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    check.__name__ = parse.__name__
    return check


def count(text: str) -> int:
    """An int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise ValueError(f"must not be negative, not {value}")
    return value


def pattern(text: str) -> str:
    """A topic pattern (``hook.**``), checked as subscriptions check it."""
    from mpm_events import Event

    Event(topic="x").matches_topic(text)  # NOTE: InvalidTopicError is a ValueError
    return text


def rule(text: str) -> tuple[str, Any]:
    """``--rule``: ``(text, Rule)``, compiled at once, so a bad rule is argparse's one
    line and exit 2."""
    from mpm_events import Rule

    try:
        return text, Rule(text)
    except ValueError as exc:  # NOTE: InvalidRuleError is a ValueError
        raise ValueError(f"invalid rule: {exc}") from None


_count = _checked(count)
_pattern = _checked(pattern)
_rule = _checked(rule)
_duration = _checked(timeparse.parse_duration)
_when = _checked(timeparse.parse_when)
_iso = _checked(timeparse.parse_iso)


def _target(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--backend", metavar="URL", default=None, help=BACKEND_HELP)
    where.add_argument("--monitor", metavar="URL", default=None, help=MONITOR_HELP)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines even on a terminal (the default when stdout is not a terminal)",
    )


def register(commands: argparse._SubParsersAction) -> None:
    """Adds the commands to ``mpm-events``'s subparsers."""
    tail = _add(
        commands,
        "tail",
        help="print the events whose topic matches PATTERN, then follow new ones",
        description=(
            "Prints the log's events whose topic matches PATTERN (a subscription pattern: "
            "hook.**, hook.*, **), oldest first, then follows new ones until Ctrl-C. "
            "Without --since/--from it starts with the last 10 (-n). JSON lines (one event "
            "each, with its log position as seq) unless stdout is a terminal."
        ),
    )
    tail.add_argument("pattern", metavar="PATTERN", type=_pattern, nargs="?", default="**")
    tail.add_argument(
        "--exclude",
        metavar="P",
        type=_pattern,
        action="append",
        default=[],
        help="leave out topics matching P (repeatable)",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--since", type=_duration, metavar="DURATION", help="events of the last 10s/10m/2h/1d"
    )
    start.add_argument(
        "--from", dest="from_us", type=_iso, metavar="ISO", help="events at or after this time"
    )
    tail.add_argument(
        "--until",
        type=_when,
        metavar="WHEN",
        help="events before this time (ISO or a duration ago); implies --no-follow",
    )
    tail.add_argument(
        "-n",
        dest="last",
        type=_count,
        default=None,
        metavar="N",
        help="start with the last N matching events (default 10 without --since/--from)",
    )
    tail.add_argument("--no-follow", action="store_true", help="exit after the backlog")
    tail.add_argument(
        "--rule",
        type=_rule,
        metavar="JSON",
        help=(
            "only events matching this EventBridge-style rule, "
            'e.g. \'{"data": {"tool_name": ["Bash"]}}\''
        ),
    )
    _json(tail)
    _target(tail)
    tail.set_defaults(cli_module="tail")

    stats = _add(
        commands,
        "stats",
        help="consumer groups (position, pending, dead letters) and events per topic",
        description=(
            "Shows each consumer name's position, pending, ready and dead-letter counts "
            "and the log's events per topic (with --monitor: the bus's metrics and "
            "consumers). One JSON object per snapshot unless stdout is a terminal."
        ),
    )
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument(
        "--interval",
        type=_positive,
        default=2.0,
        metavar="SECONDS",
        help="with --watch: seconds between refreshes (2)",
    )
    _json(stats)
    _target(stats)
    stats.set_defaults(cli_module="stats")

    dlq = _add(
        commands,
        "dlq",
        help="dead letters: list, show, redrive to their consumer, purge",
        description="Dead letters kept in the log (or by the monitor's bus).",
    )
    actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    dl_list = actions.add_parser("list", help="list dead letters, oldest first")
    dl_list.add_argument("--consumer", metavar="NAME", help="only this consumer's")
    dl_list.add_argument(
        "--limit", type=_count, default=1000, metavar="N", help="the newest N at most (1000)"
    )
    dl_show = actions.add_parser("show", help="one dead letter with its event")
    dl_show.add_argument("id", metavar="ID", help="its id (the event's id, from dlq list)")
    dl_show.add_argument("--consumer", metavar="NAME", help="the one of this consumer")
    for name, verb in (("redrive", "hand back to their consumer"), ("purge", "delete")):
        act = actions.add_parser(name, help=f"{verb}: the given ids, one consumer's, or --all")
        act.add_argument("ids", metavar="ID", nargs="*", help="dead-letter ids (event ids)")
        act.add_argument("--consumer", metavar="NAME", help="all of this consumer's")
        act.add_argument("--all", action="store_true", help="every dead letter")
    for act in (dl_list, dl_show, *(actions.choices[n] for n in ("redrive", "purge"))):
        _json(act)
        _target(act)
        act.set_defaults(cli_module="dlq")

    replay = _add(
        commands,
        "replay",
        help="hand a time window of the log to one consumer name again",
        description=(
            "Re-enqueues the log's events of a time window whose topic matches --pattern "
            "for the consumer name --to (only that name gets them again, at least once). "
            "Events that name has not been handed yet are skipped: it gets them anyway."
        ),
    )
    replay.add_argument(
        "--since", type=_when, metavar="WHEN", help="window start: ISO or a duration ago (10m)"
    )
    replay.add_argument(
        "--until", type=_when, metavar="WHEN", help="window end: ISO or a duration ago"
    )
    replay.add_argument("--pattern", type=_pattern, default="**", help="topic pattern (**)")
    replay.add_argument("--to", metavar="CONSUMER", required=True, help="the consumer name")
    replay.add_argument(
        "--rate", type=_positive, metavar="N", help="at most N events per second (--backend)"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="count what would be replayed, change nothing"
    )
    _json(replay)
    _target(replay)
    replay.set_defaults(cli_module="replay")

    bench = _add(
        commands,
        "bench",
        help="a quick built-in benchmark of this installation",
        description=(
            "A small built-in benchmark (not benches/run.py, which is not installed): "
            "publish throughput of an in-process bus into one consumer, and append and "
            "read throughput of a shared log in a temporary directory. Prints one JSON "
            "line per measurement unless stdout is a terminal."
        ),
    )
    bench.add_argument(
        "--events", type=_count, default=10_000, metavar="N", help="events per measurement"
    )
    _json(bench)
    bench.set_defaults(cli_module="bench")


def run(args: argparse.Namespace, prog: str) -> int:
    """Runs the command ``args`` names; one line on stderr and exit 1 for an
    unreachable or unusable target."""
    from mpm_events._cli.target import CliError

    module = importlib.import_module(f"mpm_events._cli.{args.cli_module}")
    name = args.command if args.command != "dlq" else f"dlq {args.dlq_action}"
    try:
        return int(module.run(args))
    except CliError as exc:
        sys.stderr.write(f"{prog} {name}: {exc}\n")
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # NOTE: `mpm-events tail | head`: the reader left; say nothing more.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
