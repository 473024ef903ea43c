"""``ConsumerConfig(ordered=True)``: a failed attempt holds the consumer's queue
until its retry, so the consumer sees events in publish order across retries."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import BUS_KINDS, Recorder, make_event
from helpers.sio_helpers import Server, free_port
from mpm_events import ConsumerConfig, SocketIOConsumer


def flaky_on(bad: str, failures: int):
    """Fails the event whose data tag is ``bad`` ``failures`` times, then succeeds."""
    left = {"n": failures}

    def behaviour(event: Any) -> bool:
        if event.data["tag"] == bad and left["n"] > 0:
            left["n"] -= 1
            return False
        return True

    return behaviour


def delivered(rec: Recorder, ok_tags: set[str] | None = None) -> list[str]:
    return [c.event.data["tag"] for c in rec.calls]


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_ordered_consumer_waits_for_the_retry(started_bus, kind):
    bus = await started_bus(kind)
    rec = Recorder(
        "ordered", behaviour=flaky_on("e3", 2), ordered=True, retry_delay=0.05, max_retries=5
    )
    assert rec.config.ordered is True
    plain = Recorder("plain", behaviour=flaky_on("e3", 2), retry_delay=0.05, max_retries=5)
    await bus.subscribe(rec)
    await bus.subscribe(plain)
    for i in range(10):
        assert await bus.publish(make_event("work.x", {"tag": f"e{i}"}))
    assert await bus.join(timeout=10)
    tags = [f"e{i}" for i in range(10)]
    # Every call the ordered consumer got, in order: e3 three times, nothing between.
    assert delivered(rec) == tags[:3] + ["e3"] * 3 + tags[4:]
    # Without `ordered` the later events overtake the failed one.
    got = delivered(plain)
    assert got.index("e4") < len(got) - 1 - got[::-1].index("e3")
    m = bus.get_metrics()["consumer_stats"]["ordered"]
    assert (m["processed"], m["failed"], m["retried"], m["retrying"]) == (10, 2, 2, 0)


async def test_ordered_consumer_dead_letters_then_goes_on(started_bus):
    bus = await started_bus("memory")
    rec = Recorder(
        "ordered", behaviour=flaky_on("e1", 99), ordered=True, retry_delay=0.01, max_retries=2
    )
    await bus.subscribe(rec)
    for i in range(4):
        await bus.publish(make_event("work.x", {"tag": f"e{i}"}))
    assert await bus.join(timeout=10)
    assert delivered(rec) == ["e0", "e1", "e1", "e1", "e2", "e3"]
    (letter,) = bus.get_dead_letters()
    assert letter["event"].data["tag"] == "e1" and letter["attempts"] == 3


async def test_stop_does_not_wait_out_an_ordered_hold(started_bus):
    bus = await started_bus("memory")
    rec = Recorder(
        "ordered", behaviour=flaky_on("e0", 99), ordered=True, retry_delay=60, max_retries=3
    )
    await bus.subscribe(rec)
    for i in range(3):
        await bus.publish(make_event("work.x", {"tag": f"e{i}"}))
    # The first attempt fails and the hold starts (60 s); stop() fires it at once.
    import time

    t0 = time.monotonic()
    await bus.stop(timeout=5)
    assert time.monotonic() - t0 < 3
    m = bus.get_metrics()
    assert m["events_published"] == m["events_processed"] + m["events_dead_lettered"]
    assert m["events_processed"] == 2 and m["events_dead_lettered"] == 1


def test_ordered_is_read_from_any_config_object():
    cfg = ConsumerConfig("x")
    assert cfg.ordered is False and "ordered=False" in repr(cfg)
    cfg.ordered = True
    assert "ordered=True" in repr(cfg)


async def test_ordered_socketio_relay_keeps_publish_order_across_an_outage(started_bus):
    """A relay's consumer: the server is away, the events wait in order and arrive in
    publish order, once each, when it is back."""
    port = free_port()
    c = SocketIOConsumer(
        url=f"http://127.0.0.1:{port}", reconnect_delay=0.05, retry_delay=0.1, max_retries=1000
    )
    c.config.ordered = True
    c.config.max_retry_delay = 0.3
    bus = await started_bus("memory")
    await bus.subscribe(c)
    ids = []
    for i in range(30):
        e = make_event("hook.x", {"i": i})
        ids.append(e.id)
        await bus.publish(e)
    from conftest import wait_until

    await wait_until(lambda: c.get_metrics()["events_failed"] >= 3, 10, "attempts failed")
    srv = await Server(port=port).start()
    try:
        assert await bus.join(timeout=20)
        await srv.wait_for(lambda: len(srv.events()) >= 30)
        got = [g["data"]["id"] for g in srv.events()]
        assert got == ids  # in publish order, each once
        assert not bus.get_dead_letters()
    finally:
        await bus.stop(timeout=10)
        await srv.stop()
