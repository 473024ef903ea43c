"""``mpm-events tail``: the log's matching events, then new ones as they come."""

from __future__ import annotations

import argparse
import time
from collections import deque
from typing import Any

from mpm_events._cli import output
from mpm_events._cli.target import log_call, resolve, usage
from mpm_events._cli.timeparse import ago

#: Without --since/--from, how many of the last events come first.
DEFAULT_LAST = 10
#: Seconds between looks at the log while following, when the last look found nothing
#: new. NOTE: polling ``_log_scan`` (GIL released; it returns how far it looked, so
#: entries that do not match are read once) rather than a consumer group: a group
#: would keep entries from retention and count as a consumer in stats.
POLL_S = 0.2
PAGE = 1000


def run(args: argparse.Namespace) -> int:
    target = resolve(args)
    rule = args.rule[1] if args.rule else None
    tables = output.wants_tables(args)
    show = _table_printer() if tables else output.line
    if target.monitor is not None:
        return _tail_monitor(args, target.monitor, show)

    from mpm_events._cli.direct import document
    from mpm_events._core import _log_range, _log_scan, _log_stats

    url = target.backend
    assert url is not None
    since_us = ago(args.since) if args.since is not None else args.from_us
    until_us = args.until
    last = args.last
    if last is None and since_us is None:
        last = DEFAULT_LAST
    window = {
        "since_us": since_us,
        "until_us": until_us,
        "topics": [args.pattern],
        "exclude": args.exclude or None,
    }

    def emit(entries: list[dict[str, Any]]) -> None:
        for e in entries:
            doc = document(e)
            if rule is None or rule.matches(doc):
                show(doc)

    # NOTE: the backlog ends at the log's last entry when tail starts and the follow
    # starts right after it: nothing appended meanwhile is missed or shown twice.
    end = log_call(url, _log_stats, topics=False)["last"]
    if end is not None:
        if last is not None and rule is None:
            if last > 0:
                backlog = log_call(url, _log_range, **window, last=last)
                emit([e for e in backlog if _le(e["entry_id"], end)])
        elif last != 0:
            # The whole window in pages; with a rule and -n, the last N matching.
            kept: deque[dict[str, Any]] | None = deque(maxlen=last) if last else None
            cursor = None
            while cursor is None or not _le(end, cursor):
                page, seen = log_call(url, _log_scan, **window, after=cursor, limit=PAGE)
                page = [e for e in page if _le(e["entry_id"], end)]
                if kept is None:
                    emit(page)
                else:
                    kept.extend(e for e in page if rule is None or rule.matches(document(e)))
                if seen is None or seen == cursor:
                    break
                cursor = seen
            if kept is not None:
                emit(list(kept))
    if args.no_follow or until_us is not None:
        return 0
    cursor = end
    while True:
        page, seen = log_call(url, _log_scan, **window, after=cursor, limit=PAGE)
        emit(page)
        if seen == cursor:
            time.sleep(POLL_S)
        cursor = seen


def _le(a: str, b: str) -> bool:
    """Entry id ``a`` is at or before ``b`` (``major-minor``, compared as numbers)."""
    x, _, y = a.partition("-")
    u, _, v = b.partition("-")
    return (int(x), int(y or 0)) <= (int(u), int(v or 0))


def _tail_monitor(args: argparse.Namespace, monitor: Any, show: Any) -> int:
    history = [
        flag
        for flag, value in (
            ("--since", args.since),
            ("--from", args.from_us),
            ("--until", args.until),
            ("-n", args.last),
            ("--no-follow", args.no_follow or None),
        )
        if value is not None
    ]
    if history:
        raise usage(
            f"{', '.join(history)} read the log's history, which a monitor's stream "
            "does not serve: use --backend URL"
        )
    query = [("pattern", args.pattern)]
    query += [("exclude", p) for p in args.exclude]
    if args.rule:
        query.append(("rule", args.rule[0]))
    for _id, event in monitor.stream(query):
        show(event)
    return 0


def _table_printer() -> Any:
    """One row per event on a terminal: seq, time, topic, source, data."""
    from mpm_events._cli.output import cell, console

    out = console()

    def show(doc: dict[str, Any]) -> None:
        from rich.text import Text

        row = Text()
        row.append(f"{doc.get('seq', '')!s:>8} ", style="dim")
        row.append(f"{str(doc.get('timestamp', ''))[11:23]} ", style="cyan")
        row.append(f"{doc.get('topic', '')} ", style="bold")
        row.append(f"{doc.get('source', '')} ", style="magenta")
        row.append(cell(doc.get("data")))
        out.print(row, soft_wrap=True)

    return show
