"""The monitor's JSON API (``EventBus.serve_monitor``, docs/monitor.md).

The HTTP server, the page, the streams and the security checks are Rust
(``src/monitor``); each JSON request other than the stream and
``/api/events/<id>`` is queued to the bus's event loop and answered here by
:func:`api`, from the bus's public methods. Runs on the loop: keep it quick.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpm_events._core import EventBus

#: Replay jobs per bus (by id); finished ones are kept for their last status.
_jobs: dict[int, dict[str, Any]] = {}
_job_ids = itertools.count(1)
_MAX_JOBS = 100


class ApiError(Exception):
    """An answer other than 200: ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    return str(o)


def _metrics(bus: EventBus) -> dict[str, Any]:
    """``bus.get_metrics()`` for JSON: a consumer's ``get_metrics()`` that is a
    coroutine (``IEventConsumer``'s is async) is closed unawaited and shown as None
    (this runs as a plain call on the bus's loop; awaiting each would let one slow
    consumer hold the answer)."""
    m = bus.get_metrics()
    per = m.get("consumers")
    if isinstance(per, dict):
        for name, value in per.items():
            if inspect.iscoroutine(value):
                value.close()
                per[name] = None
    return m


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_default)


def api(
    bus: EventBus, method: str, path: str, query: list[tuple[str, str]], body: str | None
) -> tuple[int, str]:
    """One request: ``(status, JSON text)``; never raises."""
    params: dict[str, str] = {}
    for k, v in query:
        params.setdefault(k, v)
    try:
        payload: Any = None
        if body:
            try:
                payload = json.loads(body)
            except ValueError as e:
                raise ApiError(400, f"the body is not JSON: {e}") from None
        return 200, _dumps(_route(bus, method, path.strip("/"), params, payload))
    except ApiError as e:
        return e.status, _dumps({"error": str(e)})
    except (ValueError, TypeError) as e:
        return 400, _dumps({"error": str(e)})
    except Exception as e:
        return 500, _dumps({"error": f"{type(e).__name__}: {e}"})


def _route(bus: EventBus, method: str, path: str, params: dict[str, str], body: Any) -> Any:
    parts = path.split("/")
    if method == "GET":
        if path == "metrics":
            return _metrics(bus)
        if path == "consumers":
            return consumers(bus)
        if path == "dead-letters":
            return dead_letters(bus, params.get("consumer"), _limit(params))
        if parts[0] == "dead-letters" and len(parts) == 2:
            for d in dead_letters(bus, None, None):
                if d["id"] == parts[1]:
                    return d
            raise ApiError(404, f"no dead letter with id {parts[1]!r}")
        if path == "routing":
            topic = params.get("topic", "")
            if not topic:
                raise ApiError(400, "routing needs ?topic=...")
            return {"topic": topic, "consumers": bus._route(topic)}
        if parts[0] == "replay" and len(parts) == 2:
            job = _jobs.get(int(parts[1])) if parts[1].isdigit() else None
            if job is None:
                raise ApiError(404, f"no replay job {parts[1]!r}")
            return {k: v for k, v in job.items() if k != "task"}
    elif method == "POST":
        if path in ("dead-letters/redrive", "dead-letters/purge"):
            consumer, ids = _selection(body)
            if path.endswith("redrive"):
                return {"redriven": bus.replay_dead_letters(consumer, ids)}
            return {"purged": _purge(bus, consumer, ids)}
        if path == "replay":
            return {"job": start_replay(bus, body)}
    raise ApiError(404, f"no such endpoint: {method} /api/{path}")


def _limit(params: dict[str, str]) -> int | None:
    raw = params.get("limit")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ApiError(400, f"limit must be a whole number, not {raw!r}")
    return int(raw)


def _selection(body: Any) -> tuple[str | None, list[str] | None]:
    if body is None:
        return None, None
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object: {"consumer": ..., "ids": [...]}')
    consumer = body.get("consumer")
    ids = body.get("ids")
    if consumer is not None and not isinstance(consumer, str):
        raise ApiError(400, "consumer must be a string")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise ApiError(400, "ids must be a list of strings")
    return consumer, ids


def consumers(bus: EventBus) -> list[dict[str, Any]]:
    """``/api/consumers``: one object per consumer."""
    m = _metrics(bus)
    out = []
    for name, s in m.get("consumer_stats", {}).items():
        out.append(
            {
                "name": name,
                "received": s["received"],
                "processed": s["processed"],
                "failed": s["failed"],
                "retried": s["retried"],
                "dead_lettered": s["dead_lettered"],
                "in_flight": s["in_flight"],
                "queue_depth": s["pending"],
                "capacity": bus.max_queue_size,
                "latency_p50_ms": s["latency_p50_ms"],
                "latency_p99_ms": s["latency_p99_ms"],
                "filtered": s["filtered"],
                "retrying": s["retrying"],
                "topics": bus._topics(name) or [],
            }
        )
    # NOTE: on a shared log, the groups of every process (a standalone monitor's bus
    # has no consumers of its own): what the log knows of them.
    groups = bus._log_groups() if bus.backend is not None else None
    mine = {c["name"] for c in out}
    for g in groups or []:
        if g["name"] in mine:
            for c in out:
                if c["name"] == g["name"]:
                    c["log"] = g
            continue
        out.append(
            {
                "name": g["name"],
                "processed": None,
                "failed": None,
                "retried": None,
                "dead_lettered": g["dead_letters"],
                "in_flight": g["pending"],
                "queue_depth": g["lag"] + g["ready"],
                "capacity": None,
                "latency_p50_ms": None,
                "latency_p99_ms": None,
                "filtered": None,
                "log": g,
            }
        )
    return out


def dead_letters(bus: EventBus, consumer: str | None, limit: int | None) -> list[dict[str, Any]]:
    """``/api/dead-letters``: the dead letters, oldest first. The id is the event's."""
    out = []
    for d in bus.get_dead_letters():
        if consumer is not None and d.get("consumer") != consumer:
            continue
        ev: Any = d.get("event")
        doc = ev.to_dict() if hasattr(ev, "to_dict") else ev
        errors = list(d.get("errors") or [])
        at = d.get("failed_at")
        out.append(
            {
                "id": doc.get("id") if isinstance(doc, dict) else None,
                "consumer": d.get("consumer"),
                "topic": doc.get("topic") if isinstance(doc, dict) else None,
                "attempts": d.get("attempts"),
                "errors": errors,
                "error": errors[-1] if errors else None,
                "timestamp": at.isoformat() if isinstance(at, datetime) else at,
                "event": doc,
            }
        )
    if limit is not None:
        out = out[-limit:] if limit else []
    return out


def _purge(bus: EventBus, consumer: str | None, ids: list[str] | None) -> int:
    return bus._purge_dead_letters(consumer, ids)


def _parse_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{what} must be an ISO 8601 string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{what} is not an ISO 8601 time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def start_replay(bus: EventBus, body: Any) -> int:
    """``POST /api/replay``: starts ``bus.replay`` as a task; returns the job id."""
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object: {"since": ISO, "to": CONSUMER}')
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise ApiError(400, "replay needs to: the consumer to replay into")
    since = _parse_time(body.get("since"), "since")
    if since is None:
        raise ApiError(400, "replay needs since: an ISO 8601 time")
    until = _parse_time(body.get("until"), "until")
    pattern = body.get("pattern")
    if pattern is not None and not isinstance(pattern, str):
        raise ApiError(400, "pattern must be a string")
    if not bus.enable_persistence and bus.backend is None:
        raise ApiError(409, "replay needs a store (enable_persistence=True) or a shared log")
    if to not in {c["name"] for c in consumers(bus)}:
        raise ApiError(400, f"consumer {to!r} is not subscribed")
    job_id = next(_job_ids)
    job: dict[str, Any] = {"job": job_id, "done": False, "replayed": 0, "total": None}

    async def run() -> None:
        try:
            n = await bus.replay(since=since, until=until, topics=pattern, to=to)
            job.update(replayed=n, total=n)
        except Exception as e:
            job["error"] = f"{type(e).__name__}: {e}"
        finally:
            job["done"] = True

    job["task"] = asyncio.get_running_loop().create_task(run())
    _jobs[job_id] = job
    while len(_jobs) > _MAX_JOBS:
        del _jobs[next(iter(_jobs))]
    return job_id
