"""``mpm-events stats``: consumer groups and events per topic of a shared log, or a
monitor's metrics and consumers; ``--watch`` refreshes."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mpm_events._cli import output
from mpm_events._cli.target import Target, log_call, resolve


def snapshot(target: Target) -> dict[str, Any]:
    """One snapshot. From a log: ``{"backend", "log", "groups", "topics"}``; from a
    monitor: ``{"monitor", "metrics", "consumers"}``."""
    if target.monitor is not None:
        m: Any = target.monitor
        return {
            "monitor": m.base,
            "metrics": m.get("/api/metrics"),
            "consumers": m.get("/api/consumers"),
        }
    from mpm_events._cli.direct import groups
    from mpm_events._core import _log_stats

    url = target.backend
    assert url is not None
    st = dict(log_call(url, _log_stats))
    topics = st.pop("topics")
    return {"backend": url, "log": st, "groups": groups(url), "topics": topics}


def run(args: argparse.Namespace) -> int:
    target = resolve(args)
    if not output.wants_tables(args):
        while True:
            output.line(snapshot(target))
            if not args.watch:
                return 0
            time.sleep(args.interval)
    con = output.console()
    if not args.watch:
        con.print(render(snapshot(target)))
        return 0
    from rich.live import Live

    with Live(render(snapshot(target)), console=con, auto_refresh=False) as live:
        while True:
            time.sleep(args.interval)
            live.update(render(snapshot(target)), refresh=True)


def render(snap: dict[str, Any]) -> Any:
    """The snapshot as ``rich`` tables."""
    from rich.console import Group

    from mpm_events._cli.output import table

    if "metrics" in snap:
        metrics = snap["metrics"] or {}
        top = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
        parts = [table(f"bus at {snap['monitor']}", ["metric", "value"], sorted(top.items()))]
        consumers = snap["consumers"]
        if isinstance(consumers, dict):
            consumers = [
                {"name": k, **(v if isinstance(v, dict) else {"value": v})}
                for k, v in consumers.items()
            ]
        if consumers:
            cols = sorted({k for c in consumers for k in c if k != "name"})
            parts.append(
                table(
                    "consumers",
                    ["name", *cols],
                    [[c.get("name"), *(c.get(k) for k in cols)] for c in consumers],
                )
            )
        return Group(*parts)
    log = snap["log"]
    parts = [
        table(
            f"log {snap['backend']}",
            ["entries", "bytes", "first", "last", "dead letters", "dropped unhandled"],
            [
                [
                    log["entries"],
                    log["bytes"],
                    log["first"],
                    log["last"],
                    log["dead_letters"],
                    log["dropped_unhandled"],
                ]
            ],
        ),
        table(
            "consumer groups",
            ["name", "position", "pending", "ready", "lag", "dead letters"],
            [
                [g["name"], g["position"], g["pending"], g["ready"], g["lag"], g["dead_letters"]]
                for g in snap["groups"]
            ],
        ),
        table("events per topic", ["topic", "events"], sorted(snap["topics"].items())),
    ]
    return Group(*parts)
