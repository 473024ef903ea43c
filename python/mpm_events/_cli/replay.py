"""``mpm-events replay``: a time window of the log handed again to one consumer name
(only that name; entries it was not handed yet are skipped, it gets them anyway)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mpm_events._cli import output
from mpm_events._cli.target import CliError, log_call, resolve, usage
from mpm_events._cli.timeparse import iso

PAGE = 1000
#: Entries per requeue transaction (smaller when --rate asks for fewer per second).
BATCH = 500
#: Seconds between looks at a monitor's replay job.
POLL_S = 0.2


def run(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise usage("--until must be later than --since")
    target = resolve(args)
    if target.monitor is not None:
        return _monitor(args, target.monitor)
    from mpm_events._cli.direct import check_group
    from mpm_events._core import _log_range, _log_requeue

    url = target.backend
    assert url is not None
    check_group(url, args.to)
    window = {"since_us": args.since, "until_us": args.until, "topics": [args.pattern]}
    ids: list[str] = []
    cursor = None
    while True:
        page = log_call(url, _log_range, **window, after=cursor, limit=PAGE)
        ids += [e["entry_id"] for e in page]
        if len(page) < PAGE:
            break
        cursor = page[-1]["entry_id"]
    result: dict[str, Any] = {"to": args.to, "matched": len(ids)}
    if args.dry_run:
        output.line({**result, "dry_run": True})
        return 0
    batch = BATCH if args.rate is None else max(1, min(BATCH, int(args.rate / 10) or 1))
    replayed = 0
    began = time.monotonic()
    with _progress(args, len(ids)) as advance:
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            replayed += log_call(url, _log_requeue, args.to, chunk)
            advance(len(chunk))
            if args.rate is not None:
                # NOTE: paced by the total so far: at most `rate` entries per second.
                due = began + (i + len(chunk)) / args.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
    output.line({**result, "replayed": replayed, "skipped": len(ids) - replayed})
    return 0


def _monitor(args: argparse.Namespace, monitor: Any) -> int:
    for flag, value in (("--rate", args.rate), ("--dry-run", args.dry_run or None)):
        if value is not None:
            raise usage(f"{flag} needs --backend URL (the monitor's replay API has no such option)")
    if args.since is None:
        raise usage("replay --monitor needs --since (the monitor replays from a start time)")
    body = {
        "since": iso(args.since) if args.since is not None else None,
        "until": iso(args.until) if args.until is not None else None,
        "pattern": args.pattern,
        "to": args.to,
    }
    job = (monitor.post("/api/replay", body) or {}).get("job")
    if job is None:
        raise CliError(f"the monitor at {monitor.base} started no replay job")
    seen = 0
    with _progress(args, None) as advance:
        while True:
            state = monitor.get(f"/api/replay/{job}")
            done_now = int(state.get("replayed", 0))
            advance(done_now - seen, total=state.get("total"))
            seen = done_now
            if state.get("done"):
                break
            time.sleep(POLL_S)
    output.line({"to": args.to, "job": job, **state})
    return 0


class _progress:
    """A ``rich`` progress bar on a terminal; nothing otherwise. Yields
    ``advance(n, total=None)``."""

    def __init__(self, args: argparse.Namespace, total: int | None) -> None:
        self.total = total
        self.bar: Any = None
        if output.wants_tables(args):
            from rich.progress import Progress

            self.bar = Progress(console=output.console(), transient=True)

    def __enter__(self) -> Any:
        if self.bar is None:
            return lambda n, total=None: None
        self.bar.start()
        task = self.bar.add_task("replaying", total=self.total)

        def advance(n: int, total: int | None = None) -> None:
            if total is not None:
                self.bar.update(task, total=total)
            self.bar.advance(task, n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
