"""MetricsConsumer's counts, rate window and peak, exactly (issue 9).

The rate promised: the events of the last ``window_size`` seconds over that window
(or over the elapsed time since the consumer started, while that is shorter); it
decays to 0 when idle; the peak is the highest rate it reported. The window is
measured from the consumer's creation, so the tests note the time around it and
wait for time to pass with ``wait_until`` (a condition with a deadline).
"""

from __future__ import annotations

import time

import pytest
from conftest import BUS_KINDS, make_event, wait_until
from mpm_events import MetricsConsumer

kinds = pytest.mark.parametrize("kind", BUS_KINDS)


async def elapse(since: float, seconds: float) -> None:
    """Wait until ``seconds`` have passed since ``since`` (monotonic)."""
    await wait_until(
        lambda: time.monotonic() - since >= seconds, seconds + 10, f"{seconds} s passed"
    )


async def burst(bus, n: int, topic: str = "hook.tool", **kw) -> None:
    assert await bus.publish_batch([make_event(topic, **kw) for _ in range(n)]) == n
    assert await bus.join(timeout=10)


@kinds
async def test_counts_and_top_n_exactly(started_bus, kind):
    bus = await started_bus(kind)
    m = MetricsConsumer(top_n=2, window_size=10)
    assert await bus.subscribe(m)
    await burst(bus, 4, "hook.tool", type="ToolUse", source="hook")
    await burst(bus, 3, "hook.response", type="Resp", source="cli")
    await burst(bus, 2, "system.health", type="Health", source="sys")
    await burst(bus, 1, "hook.tool", type="Other", source="cli")
    got = m.get_metrics()
    assert got["total_events"] == 10
    assert got["topic_counts"] == {"hook.tool": 5, "hook.response": 3, "system.health": 2}
    assert got["type_counts"] == {"ToolUse": 4, "Resp": 3, "Health": 2, "Other": 1}
    assert got["source_counts"] == {"hook": 4, "cli": 4, "sys": 2}
    assert list(got["top_topics"].items()) == [("hook.tool", 5), ("hook.response", 3)]
    assert list(got["top_events"].items()) == [("hook.tool:ToolUse", 4), ("hook.response:Resp", 3)]
    assert (got["unique_topics"], got["unique_types"], got["window_size_seconds"]) == (3, 4, 10)
    assert got["error_counts"] == {}


@kinds
async def test_rate_over_the_elapsed_time_while_shorter_than_the_window(started_bus, kind):
    bus = await started_bus(kind)
    before = time.monotonic()
    m = MetricsConsumer(window_size=300)
    after = time.monotonic()
    assert await bus.subscribe(m)
    await elapse(after, 0.5)
    await burst(bus, 20)
    t0 = time.monotonic()
    rate = m.get_metrics()["events_per_second"]
    t1 = time.monotonic()
    # elapsed since creation is between t0 - after and t1 - before
    assert 20 / (t1 - before) <= rate <= 20 / (t0 - after), rate


@kinds
async def test_rate_over_the_whole_window_once_it_has_passed(started_bus, kind):
    bus = await started_bus(kind)
    m = MetricsConsumer(window_size=2)
    assert await bus.subscribe(m)
    await elapse(time.monotonic(), 2.2)
    await burst(bus, 10)
    assert m.get_metrics()["events_per_second"] == pytest.approx(10 / 2)


@kinds
async def test_events_older_than_the_window_leave_the_rate(started_bus, kind):
    # Burst A early in the consumer's second 0, burst B 2.4 s later (in its second
    # 2): with a 2 s window only B counts, 10 events over 2 s. Keeping one second
    # too many, A counts as well and the rate doubles.
    bus = await started_bus(kind)
    created = time.monotonic()
    m = MetricsConsumer(window_size=2)
    assert await bus.subscribe(m)
    await elapse(created, 0.1)
    await burst(bus, 10)
    await elapse(created, 2.5)
    await burst(bus, 10)
    assert time.monotonic() - created < 3.0, "too slow to check the window boundary"
    assert m.get_metrics()["events_per_second"] == pytest.approx(10 / 2)


@kinds
async def test_rate_decays_to_zero_when_idle(started_bus, kind):
    bus = await started_bus(kind)
    m = MetricsConsumer(window_size=1)
    assert await bus.subscribe(m)
    await burst(bus, 30)
    last = time.monotonic()
    assert m.get_metrics()["events_per_second"] > 0
    await elapse(last, 2.5)  # more than a window without events
    got = m.get_metrics()
    assert got["events_per_second"] == 0
    assert got["total_events"] == 30


@kinds
async def test_peak_is_the_highest_rate_reported(started_bus, kind):
    # After the window has passed, one burst of 10 gives 10 / 2 = 5 events/s; no
    # rate above 5 was ever reported, so the peak is 5 (not the 10 of one second).
    bus = await started_bus(kind)
    m = MetricsConsumer(window_size=2)
    assert await bus.subscribe(m)
    await elapse(time.monotonic(), 2.2)
    await burst(bus, 10)
    got = m.get_metrics()
    assert got["events_per_second"] == pytest.approx(5.0)
    assert got["peak_rate"] == pytest.approx(5.0)


@kinds
async def test_peak_is_never_below_the_current_rate(started_bus, kind):
    # Within the first second: 20 events over ~0.3 s are ~60 events/s, which the
    # peak must include (a per-second bucket count of 20 is not a peak of it).
    bus = await started_bus(kind)
    created = time.monotonic()
    m = MetricsConsumer(window_size=300)
    assert await bus.subscribe(m)
    await elapse(created, 0.3)
    await burst(bus, 20)
    got = m.get_metrics()
    assert got["events_per_second"] > 20
    assert got["peak_rate"] >= got["events_per_second"]
