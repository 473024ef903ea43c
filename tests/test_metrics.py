"""get_metrics(): the original's keys plus per-consumer statistics."""

from __future__ import annotations

from datetime import datetime

from conftest import Recorder, make_event

ORIGINAL_KEYS = {
    "events_published",
    "events_processed",
    "events_failed",
    "events_dropped",
    "consumers_active",
    "queue_size",
    "processing_time_ms",
    "last_event_time",
    "dead_letter_queue_size",
    "consumers",
}
NEW_KEYS = {"consumer_stats", "events_in_flight", "subscriptions"}
CONSUMER_KEYS = {
    "processed",
    "failed",
    "retried",
    "dead_lettered",
    "in_flight",
    "latency_p50_ms",
    "latency_p99_ms",
}


async def test_metrics_keys_on_a_fresh_bus(bus):
    m = bus.get_metrics()
    assert ORIGINAL_KEYS | NEW_KEYS <= set(m)
    assert m["events_published"] == 0
    assert m["last_event_time"] is None
    assert m["consumers"] == {}
    assert m["consumers_active"] == 0


async def test_metrics_after_traffic(bus):
    ok = Recorder("ok", ["**"])
    bad = Recorder("bad", ["t.bad"], behaviour=lambda e: False, max_retries=1, retry_delay=0.01)
    await bus.subscribe(ok)
    await bus.subscribe(bad)
    for _ in range(4):
        await bus.publish(make_event("t.good"))
    await bus.publish(make_event("t.bad"))
    await bus.join(timeout=5)
    m = bus.get_metrics()
    assert m["events_published"] == 5
    # NOTE: the t.bad event was dead-lettered by "bad": it counts there, not as
    # processed, so published = processed + dead-lettered + in flight.
    assert m["events_processed"] == 4
    assert m["events_dead_lettered"] == 1
    assert m["events_pending_in_store"] == 0
    assert m["events_failed"] == 1
    assert m["events_dropped"] == 0
    assert m["consumers_active"] == 2
    assert m["queue_size"] == 0
    assert m["events_in_flight"] == 0
    assert m["dead_letter_queue_size"] == 1
    assert isinstance(m["last_event_time"], datetime)
    assert isinstance(m["processing_time_ms"], float)
    assert m["processing_time_ms"] >= 0
    assert m["subscriptions"] == 2
    assert m["consumers"] == {"ok": {"calls": 5}, "bad": {"calls": 2}}
    cs = m["consumer_stats"]
    assert set(cs) == {"ok", "bad"}
    for stats in cs.values():
        assert CONSUMER_KEYS <= set(stats)
    assert cs["ok"]["processed"] == 5
    assert cs["ok"]["failed"] == 0
    assert cs["bad"]["processed"] == 0
    assert cs["bad"]["failed"] == 2
    assert cs["bad"]["retried"] == 1
    assert cs["bad"]["dead_lettered"] == 1
    assert cs["ok"]["received"] == 5
    assert cs["bad"]["received"] == 1
    assert cs["ok"]["in_flight"] == 0
    assert 0 <= cs["ok"]["latency_p50_ms"] <= cs["ok"]["latency_p99_ms"]


async def test_consumer_get_metrics_raising_does_not_break_bus_metrics(bus):
    c = Recorder("c")

    def broken():
        raise RuntimeError("no metrics today")

    c.get_metrics = broken  # type: ignore[method-assign]
    await bus.subscribe(c)
    m = bus.get_metrics()
    assert "no metrics today" in str(m["consumers"]["c"])


async def test_event_without_consumers_counts_as_processed(bus):
    await bus.publish(make_event("nobody.listens"))
    await bus.join(timeout=5)
    m = bus.get_metrics()
    assert m["events_published"] == 1
    assert m["events_processed"] == 1
