"""``mpm-events dlq list|show|redrive|purge``: dead letters of a shared log or of a
monitor's bus, in the monitor's shape (``id``, ``consumer``, ``topic``,
``attempts``, ``error``, ``timestamp``, ``event``)."""

from __future__ import annotations

import argparse
from typing import Any

from mpm_events._cli import output
from mpm_events._cli.target import CliError, log_call, resolve, usage

#: How many dead letters a direct redrive/purge looks through to find ids.
ALL = 1 << 40


def run(args: argparse.Namespace) -> int:
    target = resolve(args)
    action = args.dlq_action
    if action in ("redrive", "purge"):
        chosen = sum(bool(x) for x in (args.ids, args.consumer, args.all))
        if chosen == 0:
            raise usage("say which dead letters: ID..., --consumer NAME or --all")
        if args.all and chosen > 1:
            raise usage("--all takes no ids and no --consumer")
    if target.monitor is not None:
        return _monitor(args, target.monitor)
    url = target.backend
    assert url is not None
    from mpm_events._cli.direct import dead_letter
    from mpm_events._core import (
        _log_dead_letters,
        _log_purge,
        _log_redrive,
    )

    # (dead letter in the monitor's shape, its dl_id in the log), oldest first.
    # NOTE: sorted by failure time: a log keeps them in the order they were written,
    # and a consumer failing several events at once writes them in any order (seen on
    # Redis: two letters 0.3 ms apart, the later one first).
    letters = sorted(
        (
            (dead_letter(d), d["dl_id"])
            for d in log_call(url, _log_dead_letters, args.consumer, ALL)
        ),
        key=lambda pair: pair[0]["timestamp"],
    )
    if action == "list":
        # NOTE: the newest `limit`, as the monitor's /api/dead-letters?limit= gives.
        shown = letters[-args.limit :] if args.limit else []
        _print_list(args, [d for d, _ in shown])
        return 0
    if action == "show":
        found = [d for d, _ in letters if d["id"] == args.id]
        if not found:
            raise CliError(f"no dead letter with id {args.id!r} in {url}")
        for d in found:
            _print_one(args, d)
        return 0
    picked = [(d, dl) for d, dl in letters if not args.ids or d["id"] in args.ids]
    missing = sorted(set(args.ids) - {d["id"] for d, _ in picked})
    if missing:
        raise CliError(
            f"no dead letter with id {', '.join(map(repr, missing))}"
            + (f" of consumer {args.consumer!r}" if args.consumer else "")
            + f" in {url}"
        )
    by_group: dict[str, list[int]] = {}
    for d, dl in picked:
        by_group.setdefault(d["consumer"], []).append(dl)
    if action == "redrive":
        n = sum(log_call(url, _log_redrive, group, ids) for group, ids in by_group.items())
        output.line({"redriven": n})
    else:
        ids = [i for group_ids in by_group.values() for i in group_ids]
        output.line({"purged": log_call(url, _log_purge, ids) if ids else 0})
    return 0


def _monitor(args: argparse.Namespace, monitor: Any) -> int:
    action = args.dlq_action
    if action == "list":
        answer = monitor.get("/api/dead-letters", consumer=args.consumer, limit=args.limit)
        items = answer.get("items", answer) if isinstance(answer, dict) else answer
        _print_list(args, list(items or []))
        return 0
    if action == "show":
        import urllib.parse

        d = monitor.get(f"/api/dead-letters/{urllib.parse.quote(args.id, safe='')}")
        if args.consumer and d.get("consumer") != args.consumer:
            raise CliError(f"dead letter {args.id!r} is not consumer {args.consumer!r}'s")
        _print_one(args, d)
        return 0
    body: dict[str, Any] = {}
    if args.consumer:
        body["consumer"] = args.consumer
    if args.ids:
        body["ids"] = list(args.ids)
    output.line(monitor.post(f"/api/dead-letters/{action}", body))
    return 0


def _print_list(args: argparse.Namespace, letters: list[dict[str, Any]]) -> None:
    if not output.wants_tables(args):
        for d in letters:
            output.line(d)
        return
    rows = [
        [
            d.get("id"),
            d.get("consumer"),
            d.get("topic"),
            d.get("attempts"),
            d.get("error", d.get("errors")),
            d.get("timestamp"),
        ]
        for d in letters
    ]
    output.console().print(
        output.table(
            f"{len(letters)} dead letters",
            ["id", "consumer", "topic", "attempts", "error", "failed at"],
            rows,
        )
    )


def _print_one(args: argparse.Namespace, d: dict[str, Any]) -> None:
    if not output.wants_tables(args):
        output.line(d)
        return
    rows = [[k, v] for k, v in d.items() if k != "event"]
    rows += [[f"event.{k}", v] for k, v in (d.get("event") or {}).items()]
    output.console().print(output.table(f"dead letter {d.get('id')}", ["field", "value"], rows))
