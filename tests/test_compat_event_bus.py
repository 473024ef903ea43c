"""``mpm_events.compat.event_bus`` against claude-mpm 5.9.10's ``services.event_bus``.

Each scenario runs the same calls on the original (pyee) class and on ours and
compares what can be observed: return values, handler calls, stats, history. The
original calls sync handlers inside ``publish``; ours delivers on the bus's thread,
so each side gets a ``settle()`` that waits (with a deadline) until delivery is done:
a no-op for the original, ``bus.flush()`` for ours.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("pyee")
from claude_mpm.services.event_bus import event_bus as original_module
from claude_mpm.services.event_bus import relay as original_relay
from mpm_events.compat import event_bus as ours_module

DEADLINE = 5.0


class Side:
    """One implementation: its bus and how to wait until its handlers ran."""

    def __init__(self, name: str, bus: Any, settle: Callable[[], None]) -> None:
        self.name = name
        self.bus = bus
        self.settle = settle


def _reset_original() -> None:
    original_module.EventBus._instance = None
    original_relay._relay_instance = None


def _reset_ours() -> None:
    ours_module.stop_relay()
    bus = ours_module.EventBus._instance
    if bus is not None:
        bus.shutdown(2.0)


@pytest.fixture
def sides() -> Iterator[list[Side]]:
    _reset_original()
    _reset_ours()
    orig = original_module.EventBus.get_instance()
    ours = ours_module.EventBus.get_instance()

    def settle_ours() -> None:
        assert ours.flush(DEADLINE), "our bus did not go idle in time"

    yield [Side("original", orig, lambda: None), Side("ours", ours, settle_ours)]
    _reset_original()
    _reset_ours()


def wait_until(cond: Callable[[], bool], within: float = DEADLINE, what: str = "") -> None:
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {within}s: {what}")
        time.sleep(0.002)


async def await_until(cond: Callable[[], bool], within: float = DEADLINE, what: str = "") -> None:
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {within}s: {what}")
        await asyncio.sleep(0.002)


def both(sides: list[Side], scenario: Callable[[Side], Any]) -> Any:
    """Run ``scenario`` on each side; assert the results are equal; return ours."""
    results = [scenario(side) for side in sides]
    assert results[0] == results[1], f"original {results[0]!r} != ours {results[1]!r}"
    return results[1]


def _stats(bus: Any) -> dict[str, Any]:
    stats = dict(bus.get_stats())
    stats["last_event_time"] = stats["last_event_time"] is not None
    return stats


# -- singleton and API ------------------------------------------------------------


def test_singleton_and_same_public_api(sides: list[Side]) -> None:
    for side in sides:
        cls = type(side.bus)
        assert cls.get_instance() is side.bus
        assert cls() is side.bus
    public = {n for n in dir(original_module.EventBus) if not n.startswith("_")}
    assert public <= {n for n in dir(ours_module.EventBus) if not n.startswith("_")}


def test_not_imported_by_mpm_events() -> None:
    import subprocess

    code = "import sys, mpm_events; print('mpm_events.compat' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- publish / on / once / remove -------------------------------------------------


def test_publish_on_once_remove(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, calls = side.bus, []

        def a(data: Any) -> None:
            calls.append(("a", data))

        def b(data: Any) -> None:
            calls.append(("b", data))

        def once(data: Any) -> None:
            calls.append(("once", data))

        bus.on("hook.pre_tool", a)
        bus.once("hook.pre_tool", once)
        bus.on("hook.pre_tool", b)
        r1 = bus.publish("hook.pre_tool", {"n": 1})
        side.settle()
        r2 = bus.publish("hook.pre_tool", {"n": 2})
        side.settle()
        bus.remove_listener("hook.pre_tool", a)
        with pytest.raises(KeyError):  # pyee: the event has handlers, not this one
            bus.remove_listener("hook.pre_tool", a)
        bus.remove_listener("never.registered", b)  # no handlers at all: a no-op
        r3 = bus.publish("hook.pre_tool", {"n": 3})
        side.settle()
        bus.remove_all_listeners("hook.pre_tool")
        r4 = bus.publish("hook.pre_tool", {"n": 4})
        bus.on("x", a)
        bus.on("y", b)
        bus.remove_all_listeners()
        r5 = bus.publish("x", 5), bus.publish("y", 6)
        side.settle()
        return [r1, r2, r3, r4, r5], calls, _stats(bus)

    calls = both(sides, scenario)[1]
    assert calls[:3] == [("a", {"n": 1}), ("once", {"n": 1}), ("b", {"n": 1})]


def test_handlers_get_the_published_object(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        seen: list[Any] = []
        payloads: list[Any] = [{"k": [1, 2]}, [1, "two"], "text", 7, None, {1: "int key"}]
        side.bus.on("evt", seen.append)
        results = [side.bus.publish("evt", p) for p in payloads]
        side.settle()
        return results, [s is p for s, p in zip(seen, payloads, strict=True)]

    assert both(sides, scenario)[1] == [True] * 6


# -- wildcards --------------------------------------------------------------------


def test_trailing_star_prefix_wildcards(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, calls = side.bus, []
        bus.on("hook.*", lambda t, d: calls.append(("hook.*", t, d)))
        bus.on("hook.pre*", lambda t, d: calls.append(("hook.pre*", t, d)))
        bus.on("*", lambda t, d: calls.append(("*", t, d)))
        bus.on("hook.pre_tool", lambda d: calls.append(("exact", d)))
        for event_type in [
            "hook.pre_tool",
            "hook.post_tool",
            "hooks",
            "hook",
            "system.x",
            "hook.a.b",
        ]:
            bus.publish(event_type, {"t": event_type})
        side.settle()
        return calls

    calls = both(sides, scenario)
    # exact-name handlers first, then wildcard prefixes in registration order
    assert [c[0] for c in calls[:4]] == ["exact", "hook.*", "hook.pre*", "*"]


def test_wildcard_removal_differs_on_purpose(sides: list[Side]) -> None:
    """The original never removes wildcard handlers; ours does (module docstring)."""
    counts = {}
    for side in sides:
        calls: list[str] = []

        def h(t: str, d: Any, calls: list[str] = calls) -> None:
            calls.append(t)

        side.bus.on("hook.*", h)
        side.bus.remove_listener("hook.*", h)
        side.bus.publish("hook.a", {})
        side.bus.on("sys.*", h)
        side.bus.remove_all_listeners()
        side.bus.publish("sys.b", {})
        side.settle()
        counts[side.name] = calls
    assert counts == {"original": ["hook.a", "sys.b"], "ours": []}


# -- sync and async handlers, one raising -------------------------------------------


def test_a_raising_handler_does_not_stop_the_others(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, calls = side.bus, []

        def bad(data: Any) -> None:
            raise RuntimeError("boom")

        def bad_wild(t: str, d: Any) -> None:
            raise ValueError("boom")

        bus.on("e", bad)
        bus.on("e", lambda d: calls.append(("sync", d)))
        bus.on("e*", bad_wild)
        bus.on("e*", lambda t, d: calls.append(("wild", t)))
        result = bus.publish("e", 1)
        side.settle()
        return result, calls, _stats(bus)

    assert both(sides, scenario)[1] == [("sync", 1), ("wild", "e")]


async def test_sync_and_async_handlers_with_a_running_loop(sides: list[Side]) -> None:
    results = {}
    for side in sides:
        calls: list[Any] = []

        async def async_wild(t: str, d: Any, calls: list[Any] = calls) -> None:
            await asyncio.sleep(0)
            calls.append(("async", t, d))

        async def async_bad(t: str, d: Any) -> None:
            raise RuntimeError("boom")

        def bad(d: Any) -> None:
            raise RuntimeError("boom")

        side.bus.on("hook.*", async_bad)
        side.bus.on("hook.*", async_wild)
        side.bus.on("hook.x", bad)
        side.bus.on("hook.x", lambda d, calls=calls: calls.append(("sync", d)))
        ok = await side.bus.publish_async("hook.x", {"v": 1})
        await await_until(lambda calls=calls: len(calls) == 2, what=f"{side.name} handlers")
        results[side.name] = (ok, sorted(calls, key=str))
    assert results["original"] == results["ours"]


async def test_async_exact_handler_runs_here_not_in_the_original(sides: list[Side]) -> None:
    """The original drops the coroutine of an ``async def`` registered with ``on``."""
    orig, ours = sides
    for side in sides:
        side.calls = []  # type: ignore[attr-defined]

        async def handler(d: Any, side: Side = side) -> None:
            side.calls.append(d)  # type: ignore[attr-defined]

        side.bus.on("exact", handler)
        with pytest.warns(RuntimeWarning) if side is orig else _nothing():
            assert side.bus.publish("exact", 1) is True
            if side is orig:
                import gc

                gc.collect()
    await await_until(lambda: ours.calls == [1], what="our async handler")  # type: ignore[attr-defined]
    assert orig.calls == []  # type: ignore[attr-defined]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- filters and enable/disable -----------------------------------------------------


def test_filters(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, seen = side.bus, []
        bus.on("*", lambda t, d: seen.append(t))
        out = [bus.publish("a.b", 0)]
        bus.add_filter("hook.*")
        bus.add_filter("system.start")
        bus.add_filter("hook.*")  # a set: counted once
        out += [bus.get_stats()["filter_count"], bus.get_stats()["filters_active"]]
        for t in ["hook.pre", "hook", "hookx", "system.start", "system.startup", "a.b"]:
            out.append((t, bus.publish(t, {})))
        bus.remove_filter("hook.*")
        bus.remove_filter("not.there")
        out.append(bus.publish("hook.pre", {}))
        bus.clear_filters()
        out.append(bus.publish("hook.pre", {}))
        side.settle()
        return out, seen, _stats(bus), [e["type"] for e in bus.get_recent_events(100)]

    both(sides, scenario)


def test_enable_disable_and_debug(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, seen = side.bus, []
        bus.on("e", seen.append)
        bus.set_debug(True)
        bus.disable()
        out = [bus.publish("e", 1), bus.get_stats()["enabled"]]
        bus.add_filter("other")
        out.append(bus.publish("e", 2))  # disabled wins: not counted as filtered
        bus.clear_filters()
        bus.enable()
        bus.set_debug(False)
        out += [bus.publish("e", 3), bus.get_stats()["enabled"]]
        side.settle()
        return out, seen, _stats(bus)

    both(sides, scenario)


# -- stats, history -----------------------------------------------------------------


def test_stats_history_clear_and_reset(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus = side.bus
        empty = bus.get_stats()
        for i in range(130):
            bus.publish(f"hook.n{i % 3}", {"i": i})
        side.settle()
        stats = _stats(bus)
        recent = bus.get_recent_events()
        last = bus.get_recent_events(1)
        all_kept = bus.get_recent_events(1000)
        shape = sorted(recent[0]), [type(r["timestamp"]) for r in recent[:1]]
        bus.clear_history()
        after_clear = _stats(bus)
        bus.reset_stats()
        after_reset = bus.get_stats()
        return (
            empty,
            stats,
            [(r["type"], r["data"]) for r in recent],
            [(r["type"], r["data"]) for r in last],
            len(all_kept),
            all_kept[0]["data"],
            shape,
            after_clear,
            after_reset,
        )

    result = both(sides, scenario)
    assert result[1]["events_published"] == 130 and result[4] == 100
    assert result[0] == {
        "events_published": 0,
        "events_filtered": 0,
        "events_failed": 0,
        "last_event_time": None,
        "enabled": True,
        "filters_active": False,
        "filter_count": 0,
        "history_size": 0,
    }


def test_history_timestamps_are_iso_utc(sides: list[Side]) -> None:
    from datetime import datetime

    for side in sides:
        side.bus.publish("t", {})
        stamp = side.bus.get_recent_events(1)[0]["timestamp"]
        assert datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0
        assert datetime.fromisoformat(side.bus.get_stats()["last_event_time"])


# -- threads and loops --------------------------------------------------------------


def test_publish_from_other_threads_and_without_a_loop(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, seen, lock = side.bus, [], threading.Lock()

        def handler(d: Any) -> None:
            with lock:
                seen.append(d)

        bus.on("thread.evt", handler)
        results: list[bool] = []

        def worker(n: int) -> None:
            for i in range(50):
                results.append(bus.publish("thread.evt", {"w": n, "i": i}))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        # and from this thread, which has no running loop
        results.append(bus.publish("thread.evt", {"w": "main", "i": 0}))
        side.settle()
        wait_until(lambda: len(seen) == 201, what=f"{side.name}: 201 deliveries")
        per_worker = {w: [d["i"] for d in seen if d["w"] == w] for w in {d["w"] for d in seen}}
        return (
            all(results),
            len(results),
            {w: v == sorted(v) for w, v in per_worker.items()},
            _stats(bus)["events_published"],
            _stats(bus)["history_size"],
        )

    both(sides, scenario)


def test_publish_from_a_loop_in_another_thread(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        seen: list[Any] = []
        side.bus.on("loop.*", lambda t, d: seen.append((t, d)))
        out: list[bool] = []

        async def in_loop() -> None:
            out.append(side.bus.publish("loop.sync", 1))
            out.append(await side.bus.publish_async("loop.async", 2))

        t = threading.Thread(target=lambda: asyncio.run(in_loop()))
        t.start()
        t.join(DEADLINE)
        side.settle()
        wait_until(lambda: len(seen) == 2, what=side.name)
        return out, seen

    both(sides, scenario)


def test_handler_may_publish(sides: list[Side]) -> None:
    def scenario(side: Side) -> Any:
        bus, seen = side.bus, []
        bus.on("first", lambda d: bus.publish("second", d + 1))
        bus.on("second", seen.append)
        bus.publish("first", 1)
        side.settle()
        wait_until(lambda: seen == [2], what=side.name)
        return seen, _stats(bus)["events_published"]

    both(sides, scenario)


def test_shutdown_makes_a_fresh_instance(sides: list[Side]) -> None:
    ours = sides[1].bus
    ours.publish("a", 1)
    ours.shutdown(2.0)
    fresh = ours_module.EventBus.get_instance()
    assert fresh is not ours
    assert fresh.get_stats()["events_published"] == 0
    assert fresh.publish("a", 1) is True


# -- relay to a real Socket.IO server -------------------------------------------------


@pytest.mark.timeout(60)
async def test_relay_to_a_real_socketio_server(sides: list[Side]) -> None:
    from helpers.sio_helpers import Server

    received: dict[str, list[dict[str, Any]]] = {}
    for side, module in [(sides[0], original_relay), (sides[1], ours_module)]:
        server = await Server().start()
        try:
            relay = module.start_relay(server.port)
            assert relay is module.get_relay()
            assert side.bus.publish("hook.pre_tool", {"tool_name": "Read", "session_id": "s1"})
            assert side.bus.publish("system.other", {"x": 1})  # not a hook event: not relayed
            assert side.bus.publish("hook.post_tool", {"tool_name": "Read"})
            await server.wait_for(
                lambda server=server: (
                    len([e for e in server.events() if e["event"] == "claude_event"]) >= 2
                ),
                timeout=20,
            )
            stats = relay.get_stats()
            assert set(stats) == {
                "events_relayed",
                "events_failed",
                "connection_failures",
                "last_relay_time",
                "enabled",
                "connected",
                "port",
            }
            assert stats["events_relayed"] == 2 and stats["port"] == server.port
            received[side.name] = [
                e["data"] for e in server.events() if e["event"] == "claude_event"
            ]
            await asyncio.to_thread(module.stop_relay)
        finally:
            await server.stop()
    for name, payloads in received.items():
        assert [(p["type"], p["subtype"]) for p in payloads] == [
            ("hook", "pre_tool"),
            ("hook", "post_tool"),
        ], name
        assert [p["data"]["tool_name"] for p in payloads] == ["Read", "Read"], name
        assert all(p["source"] == "event_bus" for p in payloads), name
        assert all(isinstance(p["timestamp"], str) for p in payloads), name


def test_events_published_just_before_exit_reach_their_handlers() -> None:
    """A hook process publishes and exits: the exit handler delivers what is queued."""
    import subprocess

    code = (
        "from mpm_events.compat.event_bus import EventBus\n"
        "bus = EventBus.get_instance()\n"
        "bus.on('hook.*', lambda t, d: print(t, d['n'], flush=True))\n"
        "for n in range(3):\n"
        "    bus.publish('hook.pre_tool', {'n': n})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.splitlines() == [f"hook.pre_tool {n}" for n in range(3)]
    assert "Traceback" not in out.stderr


def test_flush_waits_for_async_handlers(sides: list[Side]) -> None:
    ours = sides[1].bus
    done: list[int] = []
    gate = threading.Event()

    async def slow(t: str, d: Any) -> None:
        await asyncio.to_thread(gate.wait, DEADLINE)
        done.append(d)

    ours.on("slow.*", slow)
    ours.publish("slow.x", 1)
    assert ours.flush(0.05) is False  # the handler is still waiting
    gate.set()
    assert ours.flush(DEADLINE) is True
    assert done == [1]
