"""HttpConsumer against real HTTP servers.

``helpers/http_server.py`` is a real aiohttp server (in a thread) that records every
request and answers from a script: the formats' exact bodies, what each status
means (2xx delivered, 408/429/5xx retried, Retry-After honoured, other 4xx
dead-lettered at once), timeouts, a server that is down, keep-alive reuse and the
metrics. The last test runs claude-mpm 5.9.10's REAL dashboard server
(``helpers/dashboard_server.py``, as ``test_dashboard_real.py`` does for the
Socket.IO consumer) with a browser-like Socket.IO client recording what it
broadcasts, for every producer method.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import Recorder, make_event, wait_until

# NOTE: the real server's process and the producer cases are shared with the
# Socket.IO consumer's real-dashboard test.
from helpers.dashboard import CATEGORIES
from helpers.http_server import Answer, RecordingServer
from helpers.sio_helpers import free_port
from mpm_events import (
    ConsumerConfigError,
    Event,
    HookEventProducer,
    HttpConsumer,
    SystemEventProducer,
)
from test_dashboard_real import CASES

# How long stop() may take before we call it hung (not a speed assertion: with
# nothing in flight it returns at once, and a request in flight is bounded by the
# consumer's 2 s timeout).
HUNG = 5.0


@pytest.fixture
def server():
    with RecordingServer() as s:
        yield s


async def subscribed(started_bus, consumer: HttpConsumer):
    bus = await started_bus("memory")
    assert await bus.subscribe(consumer)
    return bus


async def test_claude_mpm_posts_the_hook_handlers_body(server, started_bus):
    consumer = HttpConsumer(server.url, headers={"Authorization": "Bearer t0k"})
    assert (consumer.url, consumer.format, consumer.timeout) == (server.url, "claude-mpm", 2.0)
    bus = await subscribed(started_bus, consumer)
    seen = Recorder("seen")
    assert await bus.subscribe(seen)
    hook = HookEventProducer(bus)
    assert await hook.publish_tool_use("Bash", {"command": "ls", "session_id": "s-1"})
    assert await bus.join(timeout=10)
    (req,) = server.requests
    assert (req.method, req.path, req.content_type) == ("POST", "/api/events", "application/json")
    assert req.headers["Authorization"] == "Bearer t0k"
    assert req.headers["User-Agent"].startswith("mpm-events/")
    body = req.json()
    assert list(body) == ["namespace", "event", "data"]
    assert (body["namespace"], body["event"]) == ("", "claude_event")
    e = seen.calls[0].event
    d = body["data"]
    assert list(d) == [
        "event",
        "source",
        "type",
        "subtype",
        "timestamp",
        "data",
        "session_id",
        "id",
        "topic",
    ]
    assert d == {
        "event": "mpm_event",
        "source": "hook_handler",
        "type": "hook",
        "subtype": "pre_tool",
        "timestamp": e.timestamp.isoformat(),
        "data": e.data,
        "session_id": "s-1",
        "id": e.id,
        "topic": e.topic,
    }
    m = consumer.get_metrics()
    assert (m["events_received"], m["events_delivered"], m["responses_2xx"]) == (1, 1, 1)
    assert m["events_failed"] == m["events_rejected"] == 0
    assert consumer.is_healthy


async def test_cloudevents_structured_for_one_and_batched_for_many(server, started_bus):
    one = HttpConsumer(
        server.url, format="cloudevents", batch_size=1, topics=["one"], name="ce-one"
    )
    many = HttpConsumer(
        server.url, format="cloudevents", batch_size=3, batch_timeout=5.0, topics=["many"]
    )
    bus = await started_bus("memory")
    assert await bus.subscribe(one)
    assert await bus.subscribe(many)
    single = make_event("one", {"session_id": "s-7", "x": 1}, correlation_id="c-1")
    assert await bus.publish(single)
    assert await bus.join(timeout=10)
    batch = [make_event("many", {"i": i}, source="my source") for i in range(3)]
    for e in batch:
        assert await bus.publish(e)
    assert await bus.join(timeout=10)

    first, second = server.requests
    assert first.content_type == "application/cloudevents+json; charset=utf-8"
    ce = first.json()
    stamp = datetime.fromisoformat(ce.pop("time"))
    assert stamp == single.timestamp and stamp.utcoffset() == timedelta(0)
    assert ce == {
        "specversion": "1.0",
        "id": single.id,
        "source": "/mpm-events/tests",
        "type": "mpm_events.TestEvent",
        "topic": "one",
        "correlationid": "c-1",
        "sessionid": "s-7",
        "datacontenttype": "application/json",
        "data": {"session_id": "s-7", "x": 1},
    }
    assert all(k.isalnum() and k.islower() for k in ce)

    assert second.content_type == "application/cloudevents-batch+json; charset=utf-8"
    arr = second.json()
    assert [c["id"] for c in arr] == [e.id for e in batch]
    assert {c["source"] for c in arr} == {"/mpm-events/my%20source"}
    assert [c["data"] for c in arr] == [{"i": i} for i in range(3)]
    assert all(c["specversion"] == "1.0" and c["topic"] == "many" for c in arr)
    assert many.get_metrics()["requests"] == 1


async def test_json_posts_to_dict_one_by_one_or_as_an_array(server, started_bus):
    one = HttpConsumer(server.url, format="json", batch_size=1, topics=["one"], name="json-one")
    many = HttpConsumer(server.url, format="json", batch_size=2, batch_timeout=5.0, topics=["many"])
    bus = await started_bus("memory")
    assert await bus.subscribe(one)
    assert await bus.subscribe(many)
    e = make_event("one", {"k": [1, 2]}, correlation_id="c-2")
    assert await bus.publish(e)
    assert await bus.join(timeout=10)
    pair = [make_event("many", {"n": n}) for n in range(2)]
    for p in pair:
        assert await bus.publish(p)
    assert await bus.join(timeout=10)

    first, second = server.requests
    assert first.content_type == second.content_type == "application/json"
    got, want = first.json(), e.to_dict()
    assert list(got) == list(want)
    assert list(got["metadata"]) == list(want["metadata"])
    for key in ("id", "topic", "type", "timestamp", "source", "data", "correlation_id", "priority"):
        assert got[key] == want[key], key
    assert [g["id"] for g in second.json()] == [p.id for p in pair]


async def test_a_5xx_is_retried_and_delivered_once(server, started_bus):
    server.answer(Answer(500, "oops"), Answer(200, "ok"))
    consumer = HttpConsumer(server.url, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    first, second = server.requests
    assert first.body == second.body
    assert bus.get_dead_letters() == []
    m = consumer.get_metrics()
    assert (m["responses_5xx"], m["responses_2xx"], m["events_failed"]) == (1, 1, 1)
    assert (m["events_delivered"], m["events_rejected"], m["last_status"]) == (1, 0, 200)
    assert "HTTP 500" in m["last_error"] and "oops" in m["last_error"]


async def test_retry_after_seconds_is_honoured(server, started_bus):
    server.answer(Answer(429, "slow down", {"Retry-After": "1"}))
    consumer = HttpConsumer(server.url, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    first, second = server.requests
    # A correctness property (not a speed one): the retry came no sooner than asked.
    assert second.at - first.at >= 1.0, second.at - first.at
    m = consumer.get_metrics()
    assert (m["retry_after_honoured"], m["responses_4xx"], m["events_delivered"]) == (1, 1, 1)


async def test_retry_after_http_date_is_honoured(server, started_bus):
    not_before = time.time() + 2
    date = email.utils.formatdate(not_before, usegmt=True)
    server.answer(Answer(503, "maintenance", {"Retry-After": date}))
    consumer = HttpConsumer(server.url, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    _, second = server.requests
    # The date has whole seconds: the retry may not come before that second.
    assert second.wall >= int(not_before), (second.wall, date)
    assert consumer.get_metrics()["retry_after_honoured"] == 1


async def test_a_4xx_is_dead_lettered_at_once(server, started_bus):
    server.default = Answer(400, "bad payload:\n   missing field 'x'")
    consumer = HttpConsumer(server.url, max_retries=3, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    e = make_event()
    assert await bus.publish(e)
    assert await bus.join(timeout=10)
    assert len(server.requests) == 1, "a permanent failure is not retried"
    (dl,) = bus.get_dead_letters()
    assert dl["event"].id == e.id and dl["attempts"] == 1
    assert dl["errors"] == [
        f"HTTP 400 Bad Request from {server.url}: bad payload: missing field 'x'"
    ]
    m = consumer.get_metrics()
    assert (m["responses_4xx"], m["events_rejected"], m["events_delivered"]) == (1, 1, 0)
    assert consumer.is_healthy, "the server is there; the event was at fault"


async def test_408_is_retried_like_a_5xx(server, started_bus):
    server.answer(Answer(408))
    consumer = HttpConsumer(server.url, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    first, second = server.requests
    assert (first.body, consumer.get_metrics()["responses_4xx"]) == (second.body, 1)
    assert bus.get_dead_letters() == []


async def test_a_timeout_is_retried(server, started_bus):
    server.answer(Answer(204, delay=3.0))
    consumer = HttpConsumer(server.url, timeout=0.3, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    assert len(server.requests) == 2
    m = consumer.get_metrics()
    assert (m["timeouts"], m["events_failed"], m["events_delivered"]) == (1, 1, 1)
    assert bus.get_dead_letters() == []


async def test_a_server_that_is_down_gets_retries_then_a_dead_letter(started_bus):
    url = f"http://127.0.0.1:{free_port()}/api/events"
    consumer = HttpConsumer(url, max_retries=2, retry_delay=0.01)
    bus = await subscribed(started_bus, consumer)
    assert await bus.publish(make_event())
    assert await bus.join(timeout=10)
    (dl,) = bus.get_dead_letters()
    assert dl["attempts"] == 3
    assert all(e.startswith(f"POST {url} failed: ") for e in dl["errors"]), dl["errors"]
    m = consumer.get_metrics()
    assert (m["connection_errors"], m["events_rejected"]) == (3, 0)
    assert bus.get_metrics()["consumer_stats"][consumer.config.name]["dead_lettered"] == 1
    assert not consumer.is_healthy
    began = time.monotonic()
    await bus.stop(timeout=10)
    assert time.monotonic() - began < HUNG


async def test_stop_with_the_server_down_and_retries_waiting_does_not_block(started_bus):
    url = f"http://127.0.0.1:{free_port()}/api/events"
    consumer = HttpConsumer(url, max_retries=5, retry_delay=30.0, batch_size=5)
    bus = await subscribed(started_bus, consumer)
    events = [make_event() for _ in range(5)]
    for e in events:
        assert await bus.publish(e)
    await wait_until(lambda: consumer.get_metrics()["connection_errors"] >= 1)
    began = time.monotonic()
    await bus.stop(timeout=10)
    assert time.monotonic() - began < HUNG, "stop() waited out the retry backoff"
    # Nothing was lost: each event ended as a dead letter with its errors.
    dead = bus.get_dead_letters()
    assert sorted(d["event"].id for d in dead) == sorted(e.id for e in events)


async def test_stop_waits_no_longer_than_the_request_timeout(server, started_bus):
    server.answer(Answer(204, delay=4.0))
    consumer = HttpConsumer(server.url, timeout=1.0, retry_delay=30.0)
    bus = await subscribed(started_bus, consumer)
    e = make_event()
    assert await bus.publish(e)
    await asyncio.to_thread(server.wait_for, 1)
    began = time.monotonic()
    await bus.stop(timeout=10)
    # The request in flight ends at its 1 s timeout, and the draining bus fires the
    # retry at once instead of waiting out its 30 s backoff: delivered by the second.
    assert time.monotonic() - began < 1.0 + HUNG
    m = consumer.get_metrics()
    assert (m["timeouts"], m["events_delivered"], len(server.requests)) == (1, 1, 2)
    assert m["last_error"] == f"POST {server.url} timed out after 1.000s"
    assert bus.get_dead_letters() == []


async def test_keep_alive_reuses_one_connection(server, started_bus):
    consumer = HttpConsumer(server.url, batch_size=10)
    bus = await subscribed(started_bus, consumer)
    for i in range(30):
        assert await bus.publish(make_event(data={"i": i}))
        if i % 7 == 0:
            assert await bus.join(timeout=10)  # several batches, idle gaps between
    assert await bus.join(timeout=10)
    assert [r.json()["data"]["data"]["i"] for r in server.requests] == list(range(30))
    assert len(server.connections()) == 1, server.connections()


async def test_metrics_count_each_status_class(server, started_bus):
    server.answer(
        Answer(204),
        Answer(301, headers={"Location": "/elsewhere"}),
        Answer(404, "no such route"),
        Answer(503, "down"),
    )
    consumer = HttpConsumer(server.url, batch_size=1, max_retries=0)
    bus = await subscribed(started_bus, consumer)
    for i in range(4):
        assert await bus.publish(make_event(data={"i": i}))
    assert await bus.join(timeout=10)
    assert len(server.requests) == 4, "the redirect was not followed"
    m = consumer.get_metrics()
    classes = [m[f"responses_{c}xx"] for c in "2345"]
    assert classes == [1, 1, 1, 1]
    assert (m["requests"], m["events_delivered"], m["events_rejected"]) == (4, 1, 2)
    assert bus.get_metrics()["consumer_stats"][consumer.config.name]["dead_lettered"] == 3
    assert m["latency_p50_ms"] > 0 and m["latency_p99_ms"] >= m["latency_p50_ms"]
    assert not consumer.is_healthy, "the last answer was a 503"
    errors = sorted(d["errors"][0] for d in bus.get_dead_letters())
    assert errors[0].startswith("HTTP 301 Moved Permanently from ")
    assert errors[1].endswith(": no such route")
    assert errors[2].startswith("HTTP 503 Service Unavailable from ")


async def test_consume_called_directly_says_whether_it_was_delivered(server):
    consumer = HttpConsumer(server.url)
    assert await consumer.consume(make_event()) is True
    server.answer(Answer(500))
    assert await consumer.consume(make_event()) is False
    assert await consumer.consume_batch([make_event(), make_event()]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, 'format must be "claude-mpm", "cloudevents" or "json", got "xml"'),
        ({"url": "ftp://host/x"}, 'url "ftp://host/x": expected http://host[:port]/path'),
        ({"url": "no url"}, 'url "no url" is not a valid URL'),
        ({"headers": {"bad name": "v"}}, 'headers: "bad name" is not a valid header name'),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"ca_file": "/nonexistent/ca.pem"}, 'ca_file "/nonexistent/ca.pem": cannot read it'),
        ({"client_key": "/k.pem"}, "client_key needs client_cert"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, message):
    with pytest.raises(ConsumerConfigError) as err:
        HttpConsumer(**kwargs)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_pem_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(ConsumerConfigError, match=r"ca_file .*garbage\.pem.*no PEM certificate"):
        HttpConsumer(ca_file=garbage)
    with pytest.raises(ConsumerConfigError, match=r"client_key .*garbage\.pem.*no PEM private key"):
        HttpConsumer(client_cert=_a_cert(tmp_path), client_key=garbage)
    with pytest.raises(ValueError, match="timeout must be a non-negative number"):
        HttpConsumer(timeout=-1)


def _a_cert(tmp_path) -> str:
    trustme = pytest.importorskip("trustme")
    path = tmp_path / "cert.pem"
    trustme.CA().issue_cert("client.test").cert_chain_pems[0].write_to_path(str(path))
    return str(path)


# ---------------------------------------------------------------------------------
# Against claude-mpm's REAL dashboard server


def _session_of(e: Event) -> str | None:
    data = e.data if isinstance(e.data, dict) else {}
    for d in [data, *(v for v in data.values() if isinstance(v, dict))]:
        for k in ("session_id", "sessionId"):
            if d.get(k):
                return d[k]
    return None


async def test_every_producer_method_reaches_the_browser_over_http(dashboard, browser, started_bus):
    bus = await started_bus("memory")
    consumer = HttpConsumer(f"{dashboard.url}/api/events")  # otherwise the defaults
    seen = Recorder("seen")
    assert await bus.subscribe(consumer)
    assert await bus.subscribe(seen)
    hook, system = HookEventProducer(bus), SystemEventProducer(bus)
    sids = [f"http-session-{i}" for i in range(len(CASES))]
    for (name, call, *_), sid in zip(CASES, sids, strict=True):
        assert await call(hook, system, sid) in (True, 1), name
    assert await bus.join(timeout=15)
    began = time.monotonic()
    await bus.stop(timeout=10)
    assert time.monotonic() - began < HUNG
    m = consumer.get_metrics()
    # Every event was handled by the server: it answered 204 to each POST.
    assert (m["events_delivered"], m["responses_2xx"], m["events_failed"]) == (
        len(CASES),
        len(CASES),
        0,
    ), m

    def ours() -> dict[str, tuple[str, dict[str, Any]]]:
        return {
            d.get("session_id"): (n, d)
            for n, d in browser.received
            if str(d.get("session_id", "")).startswith("http-session-")
        }

    try:
        await browser.wait_for(lambda: len(ours()) >= len(CASES))
    except TimeoutError:
        pytest.fail(f"the browser got {len(ours())} of {len(CASES)}\n{dashboard.stderr()}")
    assert len([1 for _, d in browser.received if d.get("session_id") in sids]) == len(CASES)
    events = {_session_of(c.event): c.event for c in seen.calls}
    problems = []
    got = ours()
    for (method, _, _kind, subtype), sid in zip(CASES, sids, strict=True):
        name, g = got[sid]
        e = events[sid]
        stamp = datetime.fromisoformat(g["timestamp"])
        have = (g["subtype"], stamp.utcoffset(), stamp)
        want = (subtype, timedelta(0), e.timestamp)
        if have != want or g["subtype"] == "unknown":
            problems.append(f"{name} {method}: got {have}, want {want}")
        if name not in CATEGORIES or g["type"] != name:
            problems.append(f"{method}: broadcast as {name} with type {g['type']}")
    assert not problems, "\n".join(problems)
