"""``MetricsConsumer``'s rate over a real bus: exactly the window, decaying to 0.

A producer publishes at a known pace and records, for every chunk of events, the
monotonic time just before and just after publishing it (the engine's clock is the
same ``CLOCK_MONOTONIC``). The expected rate is then bounded from those stamps by
the window arithmetic the stub documents, not by a guessed percentage:

* the rate read at instant ``t`` counts the events received in ``(t - W, t]``, the
  0.1 s bucket the window starts in counted by its share inside it; so it counts
  at least the events received in ``(t - W + B, t]`` and at most those received in
  ``[t - W - B, t]`` (``B`` = one bucket);
* an event is received after it was published and, once ``join()`` returned,
  before the read; it is received at most ``SLACK`` after it was published.

At the read (about 0.9 s into the third second) the old implementation counted
seconds 0, 1 and 2 over 2 s, reporting about 1.45x the pace; the upper bound here
is about (W + B + SLACK) / W = 1.175x, so that bug fails the test, as does a rate
that does not decay or a peak below a rate read.
"""

from __future__ import annotations

import asyncio
import time

from conftest import make_event, wait_until
from mpm_events import EventBus, MetricsConsumer

WINDOW = 2.0  # s, the consumer's window_size
BUCKET = 0.1  # s, the consumer's bucket width
SLACK = 0.25  # s, the longest we allow between publishing an event and counting it
RATE = 500.0  # events/s
CHUNK = 5  # events per publish step (one step every 10 ms)


async def test_rate_is_over_exactly_the_window_and_decays_to_zero() -> None:
    bus = EventBus()
    await bus.start()
    try:
        metrics = MetricsConsumer(window_size=int(WINDOW), report_interval=0)
        # NOTE: the consumer's clock started before this, so its age is at least now - t0.
        t0 = time.monotonic()
        assert await bus.subscribe(metrics)
        stamps: list[tuple[float, float]] = []  # (before, after) publishing each chunk
        sent = 0
        began = time.monotonic()
        while time.monotonic() < t0 + WINDOW + 0.9:
            before = time.monotonic()
            for _ in range(CHUNK):
                assert await bus.publish(make_event("hook.tool"))
            stamps.append((before, time.monotonic()))
            sent += CHUNK
            ahead = began + sent / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        assert await bus.join(timeout=10)
        r0 = time.monotonic()
        got = metrics.get_metrics()
        r1 = time.monotonic()
        rate, peak = got["events_per_second"], got["peak_rate"]
        assert got["total_events"] == sent

        # events surely received inside (t - W + B, t], and all that may be in [t - W - B, t]
        lo = CHUNK * sum(b >= r1 - WINDOW + BUCKET for b, _ in stamps) / WINDOW
        hi = CHUNK * sum(a >= r0 - WINDOW - BUCKET - SLACK for _, a in stamps) / WINDOW
        assert lo <= rate <= hi, f"rate {rate:.1f} outside [{lo:.1f}, {hi:.1f}] (paced {RATE})"

        # the peak is the highest rate at any instant, so never below a rate read, and
        # (evaluated when a chunk arrives, over the consumer's age while under W) bounded
        # by the chunks that can have been counted by then
        def bound(k: int) -> float:
            b, a = stamps[k]
            n = CHUNK * sum(x <= a + SLACK and y >= b - WINDOW - BUCKET - SLACK for x, y in stamps)
            return n / min(WINDOW, max(BUCKET, b - t0))

        assert rate <= peak <= max(bound(k) for k in range(len(stamps)))

        # idle: non-increasing, still > 0 while the last chunk is inside the window,
        # 0 once it has left it (at most one bucket and SLACK later)
        last_before = stamps[-1][0]
        reads: list[tuple[float, float]] = [(r1, rate)]  # (time after the read, rate)

        def idle_rate_is_zero() -> bool:
            value = metrics.get_metrics()["events_per_second"]
            reads.append((time.monotonic(), value))
            return value == 0

        await wait_until(idle_rate_is_zero, within=WINDOW + 5, what="the rate decays to 0")
        values = [v for _, v in reads]
        assert values == sorted(values, reverse=True), values
        first_zero = next(t for t, v in reads if v == 0)
        assert first_zero >= last_before + WINDOW, "the rate fell to 0 before a window passed"
        assert all(v > 0 for t, v in reads if t < last_before + WINDOW)
        assert metrics.get_metrics()["peak_rate"] == peak, "idle reads do not move the peak"
    finally:
        await bus.stop()
