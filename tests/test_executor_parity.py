"""The two executors give the same outcomes for the same consumer behaviour.

A consumer whose ``consume`` is a coroutine function runs on the event loop, its
``filter_func``/``transform_func``/``error_handler`` called by the Rust executor; a
plain ``def`` consumer runs on a worker thread, where the same steps are Python
(``mpm_events._bus.workers``; kept in Python so that a consumer still busy at
interpreter exit dies in Python frames, not inside Rust). Each case below runs once
through each and the two outcomes must be identical: what the consumer received,
its ``consumer_stats``, the bus's counters, the dead letters with their exact
error messages, the error_handler calls and what was logged when a handler raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Recorder, SyncRecorder, make_event, wait_until
from mpm_events import Event, EventBus

N_EVENTS = 4
TIMING_KEYS = {"latency_p50_ms", "latency_p99_ms"}
BUS_KEYS = (
    "events_published",
    "events_processed",
    "events_failed",
    "events_dead_lettered",
    "dead_letter_queue_size",
    "events_in_flight",
)


def n_of(event: Any) -> int:
    return event.data["n"]


# ----- behaviours (each a function of the event, or of the batch) -----


def keep_even(event: Any) -> bool:
    return n_of(event) % 2 == 0


def filter_raises_on_1(event: Any) -> bool:
    if n_of(event) == 1:
        raise ValueError(f"no filter for {n_of(event)}")
    return True


def filter_raises_empty_on_1(event: Any) -> bool:
    if n_of(event) == 1:
        raise ValueError()
    return True


class BadBool:
    def __bool__(self) -> bool:
        raise RuntimeError("undecidable")


def filter_returns_bad_bool_on_1(event: Any) -> Any:
    return BadBool() if n_of(event) == 1 else True


def retype(event: Any) -> Event:
    return Event(event.id, event.topic, "Transformed", None, event.source, dict(event.data))


def transform_none_on_1(event: Any) -> Event | None:
    return None if n_of(event) == 1 else retype(event)


def transform_raises_on_2(event: Any) -> Event:
    if n_of(event) == 2:
        raise KeyError("missing")
    return retype(event)


def consume_false_on_1(event: Any) -> bool:
    return n_of(event) != 1


def consume_none_on_1(event: Any) -> bool | None:
    return None if n_of(event) == 1 else True


def consume_falsy_values(event: Any) -> Any:
    return {0: 0, 1: "", 2: [], 3: "yes"}[n_of(event)]


def consume_raises_on_1(event: Any) -> bool:
    if n_of(event) == 1:
        raise RuntimeError(f"cannot consume {n_of(event)}")
    return True


def consume_raises_empty_on_1(event: Any) -> bool:
    if n_of(event) == 1:
        raise RuntimeError()
    return True


def batch_returns(value: Any) -> Callable[[list[Any]], Any]:
    def behaviour(events: list[Any]) -> Any:
        return value

    behaviour.__name__ = f"returns_{value!r}"
    return behaviour


def batch_raises(events: list[Any]) -> Any:
    raise RuntimeError(f"batch of {len(events)} failed")


# ----- the table -----


@dataclass
class Case:
    name: str
    behaviour: Callable[[Any], Any] | None = None
    batch_behaviour: Callable[[list[Any]], Any] | None = None
    handler: str | None = None  # None, "sync", "async", "sync_raise", "async_raise"
    batch: bool = False
    dead: int = 0  # how many dead letters the case produces (it tests what it says)
    config: dict[str, Any] = field(default_factory=dict)
    differs: str | None = None  # a known difference between the executors (the case is xfail)


CASES = [
    Case("filter_true", config={"filter_func": lambda e: True}),
    Case("filter_false_for_odd", config={"filter_func": keep_even}),
    Case("filter_raises", handler="sync", dead=1, config={"filter_func": filter_raises_on_1}),
    Case(
        "filter_raises_empty_message",
        handler="sync",
        dead=1,
        config={"filter_func": filter_raises_empty_on_1},
    ),
    Case(
        "filter_bool_raises",
        handler="sync",
        dead=1,
        config={"filter_func": filter_returns_bad_bool_on_1},
    ),
    Case("transform_returns_event", config={"transform_func": retype}),
    Case(
        "transform_returns_none",
        handler="sync",
        dead=1,
        config={"transform_func": transform_none_on_1},
    ),
    Case(
        "transform_raises", handler="sync", dead=1, config={"transform_func": transform_raises_on_2}
    ),
    Case("consume_true"),
    Case("consume_false", consume_false_on_1, handler="sync", dead=1),
    Case("consume_none", consume_none_on_1, handler="sync", dead=1),
    Case("consume_falsy_values", consume_falsy_values, dead=3),
    Case("consume_raises_no_handler", consume_raises_on_1, dead=1),
    Case("consume_raises_sync_handler", consume_raises_on_1, handler="sync", dead=1),
    Case("consume_raises_async_handler", consume_raises_on_1, handler="async", dead=1),
    Case("consume_raises_raising_handler", consume_raises_on_1, handler="sync_raise", dead=1),
    Case(
        "consume_raises_raising_async_handler", consume_raises_on_1, handler="async_raise", dead=1
    ),
    Case("consume_raises_empty_message", consume_raises_empty_on_1, handler="sync", dead=1),
    Case(
        "filter_raises_async_handler",
        handler="async",
        dead=1,
        config={"filter_func": filter_raises_on_1},
    ),
    Case(
        "transform_raises_raising_async_handler",
        handler="async_raise",
        dead=1,
        config={"transform_func": transform_raises_on_2},
    ),
    # batch consumers (batch_size > 1: consume_batch gets the events that pass)
    Case("batch_returns_len", batch=True),
    Case("batch_returns_int", batch_behaviour=batch_returns(2), batch=True, dead=2),
    Case("batch_returns_big_int", batch_behaviour=batch_returns(10), batch=True),
    Case("batch_returns_negative", batch_behaviour=batch_returns(-1), batch=True, dead=4),
    Case("batch_returns_true", batch_behaviour=batch_returns(True), batch=True),
    Case("batch_returns_false", batch_behaviour=batch_returns(False), batch=True, dead=4),
    Case("batch_returns_none", batch_behaviour=batch_returns(None), batch=True, dead=4),
    Case("batch_returns_str", batch_behaviour=batch_returns("3"), batch=True, dead=4),
    Case(
        "batch_raises",
        batch_behaviour=batch_raises,
        handler="sync",
        batch=True,
        dead=4,
    ),
    Case(
        "batch_raises_async_handler",
        batch_behaviour=batch_raises,
        handler="async",
        batch=True,
        dead=4,
    ),
    Case(
        "batch_raises_raising_handler",
        batch_behaviour=batch_raises,
        handler="sync_raise",
        batch=True,
        dead=4,
    ),
    Case("batch_filter", batch=True, config={"filter_func": keep_even}),
    Case(
        "batch_filter_raises",
        batch=True,
        handler="sync",
        dead=1,
        config={"filter_func": filter_raises_on_1},
    ),
    Case("batch_transform", batch=True, config={"transform_func": retype}),
    Case(
        "batch_transform_none",
        batch=True,
        handler="sync",
        dead=1,
        config={"transform_func": transform_none_on_1},
    ),
    Case(
        "batch_filter_and_transform_raise",
        batch_behaviour=batch_returns(1),
        batch=True,
        handler="async",
        dead=1,
        config={"filter_func": keep_even, "transform_func": transform_raises_on_2},
    ),
    Case(
        "batch_transform_raises_raising_async_handler",
        batch=True,
        handler="async_raise",
        dead=1,
        config={"transform_func": transform_raises_on_2},
    ),
    Case(
        "batch_all_filtered",
        batch_behaviour=batch_raises,
        batch=True,
        config={"filter_func": lambda e: False},
    ),
]


# ----- running a case -----


class Handler:
    """An error_handler of the given kind recording ``(event id, exception type)`` per call."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls: list[tuple[str, str]] = []
        self.done = 0

    def func(self) -> Callable[[Any, BaseException], Any]:
        def sync(event: Any, exc: BaseException) -> None:
            self.calls.append((event.id, type(exc).__name__))
            self.done += 1
            if self.kind == "sync_raise":
                raise LookupError(f"handler failed for {n_of(event)}")

        async def asynchronous(event: Any, exc: BaseException) -> None:
            self.calls.append((event.id, type(exc).__name__))
            await asyncio.sleep(0.001)  # really suspends
            self.done += 1
            if self.kind == "async_raise":
                raise LookupError(f"async handler failed for {n_of(event)}")

        return sync if self.kind.startswith("sync") else asynchronous


async def outcome(case: Case, executor: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    config: dict[str, Any] = {"max_retries": 1, "retry_delay": 0.01, **case.config}
    if case.batch:
        # NOTE: one batch of all events (published together), no retries: which
        # events a retry batch holds would depend on timing.
        config.update(batch_size=N_EVENTS, batch_timeout=0.5, max_retries=0)
    handler = Handler(case.handler) if case.handler else None
    if handler is not None:
        config["error_handler"] = handler.func()
    cls = Recorder if executor == "loop" else SyncRecorder
    consumer = cls(
        "parity", ["**"], behaviour=case.behaviour, batch_behaviour=case.batch_behaviour, **config
    )
    bus = EventBus()
    await bus.start()
    try:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="mpm_events"):
            assert await bus.subscribe(consumer)
            events = [make_event("parity.case", {"n": i}) for i in range(N_EVENTS)]
            ids = [e.id for e in events]
            assert await bus.publish_batch(events) == N_EVENTS
            await bus.join(timeout=10)
            if handler is not None:
                await wait_until(lambda: handler.done == len(handler.calls), what="handlers done")
            await asyncio.sleep(0.01)  # a detached handler's failure is logged after it ends
        metrics = bus.get_metrics()
        dead = bus.get_dead_letters()
    finally:
        await bus.stop(timeout=5)
    stats = {k: v for k, v in metrics["consumer_stats"]["parity"].items() if k not in TIMING_KEYS}
    return {
        "consumed": sorted((n_of(c.event), c.event.type) for c in consumer.calls),
        "batches": [len(b) for b in consumer.batches],
        "consumer_stats": stats,
        "bus": {k: metrics[k] for k in BUS_KEYS},
        "dead_letters": sorted(
            (n_of(d["event"]), d["consumer"], d["attempts"], tuple(d["errors"])) for d in dead
        ),
        # NOTE: by position in the publish order, the ids differing between the runs
        "handler_calls": sorted((ids.index(i), t) for i, t in handler.calls) if handler else None,
        "logged": sorted(r.getMessage() for r in caplog.records if r.name.startswith("mpm_events")),
    }


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.differs)] if case.differs else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
async def test_loop_and_thread_executors_agree(case: Case, caplog: pytest.LogCaptureFixture):
    on_loop = await outcome(case, "loop", caplog)
    on_thread = await outcome(case, "thread", caplog)
    assert len(on_loop["dead_letters"]) == case.dead, on_loop
    assert on_thread == on_loop
