"""The monitor's HTTP API, SSE and WebSocket streams, through plain clients
(aiohttp, websocket-client) against a real bus serving on a free port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from conftest import Recorder, make_event, wait_until
from helpers.monitor_client import SseReader, base_of, token_of
from mpm_events import EventBus


@pytest.fixture
async def served() -> Any:
    bus = EventBus()
    await bus.start()
    rec = Recorder("rec", topics=["hook.**"])
    await bus.subscribe(rec)
    url = await bus.serve_monitor()
    async with aiohttp.ClientSession() as http:
        yield bus, rec, url, http
    await bus.stop()


async def sse(http: aiohttp.ClientSession, url: str, query: str = "", **headers: str) -> SseReader:
    resp = await http.get(f"{base_of(url)}/api/stream?{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return SseReader(resp)


async def test_url_read_only_endpoints_and_security_headers(served: Any) -> None:
    bus, _rec, url, http = served
    assert url.startswith("http://127.0.0.1:") and "/?token=" in url
    assert bus.monitor_url == url
    base = base_of(url)
    async with http.get(base + "/") as r:
        assert r.status == 200
        assert r.headers["Content-Security-Policy"] == "default-src 'self'"
        assert "mpm-events monitor" in await r.text()
    async with http.get(base + "/assets/app.js") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
    await bus.publish(make_event("hook.a", {"n": 1}))
    await bus.join(timeout=5)
    async with http.get(base + "/api/metrics") as r:
        got = await r.json()
        assert r.headers["Content-Security-Policy"] == "default-src 'self'"
    want = bus.get_metrics()
    for k in ("events_published", "events_processed", "events_failed", "consumers_active"):
        assert got[k] == want[k]
    async with http.get(base + "/api/consumers") as r:
        (c,) = await r.json()
    assert c["name"] == "rec" and c["processed"] == 1 and c["capacity"] == bus.max_queue_size
    for k in ("failed", "retried", "dead_lettered", "in_flight", "queue_depth", "filtered"):
        assert c[k] == 0
    async with http.get(base + "/api/routing", params={"topic": "hook.x.y"}) as r:
        assert await r.json() == {"topic": "hook.x.y", "consumers": ["rec"]}
    async with http.get(base + "/api/routing", params={"topic": "other"}) as r:
        assert (await r.json())["consumers"] == []
    async with http.get(base + "/api/routing", params={"topic": "bad..topic"}) as r:
        assert r.status == 400 and "error" in await r.json()
    async with http.get(base + "/api/nope") as r:
        assert r.status == 404


async def test_state_changing_requests_need_token_and_same_origin(served: Any) -> None:
    _bus, _rec, url, http = served
    base, token = base_of(url), token_of(url)
    redrive = base + "/api/dead-letters/redrive"
    async with http.post(redrive, json={}) as r:
        assert r.status == 401
    async with http.post(redrive, json={}, headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    bad_origin = {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"}
    async with http.post(redrive, json={}, headers=bad_origin) as r:
        assert r.status == 403
    rebinding = {"Authorization": f"Bearer {token}", "Host": "evil.example:80"}
    async with http.post(redrive, json={}, headers=rebinding) as r:
        assert r.status == 403
    async with http.get(base + "/api/metrics", headers={"Host": "evil.example"}) as r:
        assert r.status == 403
    ok = {"Authorization": f"Bearer {token}", "Origin": base}
    async with http.post(redrive, json={}, headers=ok) as r:
        assert r.status == 200 and await r.json() == {"redriven": 0}
    async with http.post(f"{redrive}?token={token}", json={}) as r:
        assert r.status == 200
    async with http.post(f"{redrive}?token={token}", data="{nope") as r:
        assert r.status == 400 and "not JSON" in (await r.json())["error"]


async def test_sse_in_publish_order_with_seq_and_server_side_filter(served: Any) -> None:
    bus, _rec, url, http = served
    every = await sse(http, url)
    only_b = await sse(http, url, "pattern=hook.b.**&exclude=hook.b.skip")
    ids = []
    for i in range(30):
        topic = ["hook.a", "hook.b.x", "hook.b.skip"][i % 3]
        e = make_event(topic, {"i": i})
        ids.append((e.id, topic))
        await bus.publish(e)
    got = await every.take(30)
    seqs = [int(m.id or 0) for m in got]
    assert seqs == list(range(seqs[0], seqs[0] + 30))
    assert [m.json()["id"] for m in got] == [i for i, _ in ids]
    assert all(m.json()["seq"] == int(m.id or 0) for m in got)
    filtered = await only_b.take(10)
    assert [m.json()["id"] for m in filtered] == [i for i, t in ids if t == "hook.b.x"]


async def test_rule_filter_and_bad_filters(served: Any) -> None:
    bus, _rec, url, http = served
    rule = json.dumps({"data": {"tool": ["Bash"]}})
    stream = await sse(http, url, "rule=" + aiohttp.helpers.quote(rule, safe=""))
    await bus.publish(make_event("hook.t", {"tool": "Read"}))
    await bus.publish(make_event("hook.t", {"tool": "Bash"}))
    (m,) = await stream.take(1)
    assert m.json()["data"] == {"tool": "Bash"}
    base = base_of(url)
    async with http.get(base + "/api/stream", params={"rule": '{"data": 5}'}) as r:
        assert r.status == 400
        assert (await r.json())["error"].startswith("invalid rule")
    async with http.get(base + "/api/stream", params={"pattern": "a..b"}) as r:
        assert r.status == 400 and "invalid pattern" in (await r.json())["error"]
    async with http.get(base + "/api/stream", params={"after": "x"}) as r:
        assert r.status == 400


async def test_resume_after_drop_has_no_gap_and_no_duplicate(served: Any) -> None:
    bus, _rec, url, http = served
    first = await sse(http, url)
    for i in range(10):
        await bus.publish(make_event("hook.r", {"i": i}))
    got = await first.take(10)
    last = int(got[-1].id or 0)
    assert bus._monitor_drop_clients("test drop") >= 1
    ended = await first.next()
    assert ended is not None and ended.event == "dropped"
    assert ended.json()["reason"] == "test drop"
    # published while nobody is connected: kept in the ring
    for i in range(10, 20):
        await bus.publish(make_event("hook.r", {"i": i}))
    again = await sse(http, url, **{"Last-Event-ID": str(last)})
    rest = await again.take(10)
    assert [m.json()["data"]["i"] for m in rest] == list(range(10, 20))
    assert [int(m.id or 0) for m in rest] == list(range(last + 1, last + 11))
    by_query = await sse(http, url, f"after={last + 5}")
    assert [m.json()["data"]["i"] for m in await by_query.take(5)] == list(range(15, 20))


async def test_websocket_same_filters(served: Any) -> None:
    bus, _rec, url, http = served
    ws_url = base_of(url).replace("http://", "ws://") + "/ws?pattern=hook.w.*"
    async with http.ws_connect(ws_url) as ws:
        # NOTE: the subscription exists once the upgrade is answered.
        await bus.publish(make_event("hook.other", {}))
        await bus.publish(make_event("hook.w.1", {"k": 1}))
        msg = await asyncio.wait_for(ws.receive_json(), 5)
        assert msg["topic"] == "hook.w.1" and msg["data"] == {"k": 1} and msg["seq"] >= 1
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(ws_url, headers={"Origin": "http://evil.example"})


async def test_slow_client_is_dropped_with_a_reason_and_the_bus_keeps_going(served: Any) -> None:
    bus, rec, url, http = served
    slow = await sse(http, url)
    # NOTE: the client reads nothing while more than its buffer (4096) plus what the
    # sockets hold is published; the bus never waits for it.
    payload = {"pad": "x" * 2000}
    n = 8_000
    for _ in range(0, n, 2000):
        assert await bus.publish_batch([make_event("hook.s", payload) for _ in range(2000)]) == 2000
        await bus.join(timeout=30)
    assert len(rec.calls) == n
    reason = None
    while True:
        m = await slow.next(timeout=10)
        if m is None:
            break
        if m.event == "dropped":
            reason = m.json()["reason"]
            break
    assert reason is not None and "too slow" in reason


async def test_dead_letters_browse_redrive_purge(served: Any) -> None:
    bus, _, url, http = served
    fail = {"on": True}
    flaky = Recorder("flaky", topics=["job.*"], behaviour=lambda e: not fail["on"], max_retries=0)
    await bus.subscribe(flaky)
    events = [make_event("job.x", {"i": i}) for i in range(3)]
    for e in events:
        await bus.publish(e)
    await bus.join(timeout=5)
    base, token = base_of(url), token_of(url)
    auth = {"Authorization": f"Bearer {token}"}
    async with http.get(base + "/api/dead-letters", params={"consumer": "flaky"}) as r:
        dls = await r.json()
    assert [d["id"] for d in dls] == [e.id for e in events]
    d = dls[0]
    assert d["consumer"] == "flaky" and d["topic"] == "job.x" and d["attempts"] == 1
    assert d["event"]["data"] == {"i": 0} and d["errors"] and d["timestamp"]
    async with http.get(base + "/api/dead-letters", params={"limit": "1"}) as r:
        assert len(await r.json()) == 1
    async with http.get(f"{base}/api/dead-letters/{events[1].id}") as r:
        assert (await r.json())["event"]["data"] == {"i": 1}
    async with http.get(f"{base}/api/dead-letters/nope") as r:
        assert r.status == 404
    fail["on"] = False
    async with http.post(
        base + "/api/dead-letters/redrive", json={"ids": [events[0].id]}, headers=auth
    ) as r:
        assert await r.json() == {"redriven": 1}
    await wait_until(lambda: events[0].id in [c.id for c in flaky.calls[3:]])
    async with http.post(
        base + "/api/dead-letters/purge", json={"consumer": "flaky"}, headers=auth
    ) as r:
        assert await r.json() == {"purged": 2}
    assert bus.get_dead_letters() == []


async def test_event_detail_has_delivery_history(served: Any) -> None:
    bus, _, url, http = served
    stream = await sse(http, url)
    calls = {"n": 0}

    def once_then_ok(e: Any) -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    retry = Recorder(
        "retry", topics=["hook.d"], behaviour=once_then_ok, max_retries=2, retry_backoff=1.0
    )
    await bus.subscribe(retry)
    e = make_event("hook.d", {"x": "<img src=x onerror=alert(1)>"})
    await bus.publish(e)
    await stream.take(1)
    await bus.join(timeout=10)
    base = base_of(url)
    async with http.get(f"{base}/api/events/{e.id}") as r:
        d = await r.json()
    assert d["event"]["data"] == {"x": "<img src=x onerror=alert(1)>"}
    mine = [x for x in d["deliveries"] if x["consumer"] == "retry"]
    assert [(x["attempt"], x["outcome"]) for x in mine] == [(1, "failure"), (2, "success")]
    assert all(x["queue_ms"] >= 0 and x["handler_ms"] >= 0 for x in mine)
    assert [x["outcome"] for x in d["deliveries"] if x["consumer"] == "rec"] == ["success"]
    async with http.get(f"{base}/api/events/unknown") as r:
        assert r.status == 404


async def test_replay_job_into_a_consumer(tmp_path: Any) -> None:
    bus = EventBus(enable_persistence=True, persistence_path=str(tmp_path / "s.db"))
    await bus.start()
    first = Recorder("first", topics=["hook.**"])
    await bus.subscribe(first)
    for i in range(5):
        await bus.publish(make_event("hook.p", {"i": i}))
    await bus.join(timeout=5)
    late = Recorder("late", topics=["nothing.*"])
    await bus.subscribe(late)
    url = await bus.serve_monitor()
    base, token = base_of(url), token_of(url)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            body = {"since": "2000-01-01T00:00:00Z", "pattern": "hook.**", "to": "late"}
            async with http.post(base + "/api/replay", json=body) as r:
                job = (await r.json())["job"]
            status: dict[str, Any] = {}

            async def done() -> bool:
                nonlocal status
                async with http.get(f"{base}/api/replay/{job}") as r:
                    status = await r.json()
                return bool(status["done"])

            for _ in range(200):
                if await done():
                    break
                await asyncio.sleep(0.02)
            assert status == {"job": job, "done": True, "replayed": 5, "total": 5}
            await bus.join(timeout=5)
            assert sorted(c.event.data["i"] for c in late.calls) == list(range(5))
            async with http.post(base + "/api/replay", json={"since": "x", "to": "late"}) as r:
                assert r.status == 400
            async with http.post(
                base + "/api/replay", json={"since": "2000-01-01", "to": "no"}
            ) as r:
                assert r.status == 400
    finally:
        await bus.stop()


async def test_stops_with_the_bus_and_needs_a_running_bus() -> None:
    bus = EventBus()
    with pytest.raises(RuntimeError, match="running bus"):
        await bus.serve_monitor()
    await bus.start()
    url = await bus.serve_monitor()
    with pytest.raises(RuntimeError, match="already serving"):
        await bus.serve_monitor()
    await bus.stop()
    assert bus.monitor_url is None
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(base_of(url) + "/api/metrics", timeout=aiohttp.ClientTimeout(3)):
                pass


async def test_standalone_monitor_over_a_shared_log(tmp_path: Any) -> None:
    import sys

    from mpm_events._core import _log_append

    backend = f"sqlite:///{tmp_path / 'log.db'}"
    # a consumer group with one dead letter in the log, from another bus
    other = EventBus(backend=backend)
    await other.start()
    flaky = Recorder("flaky", topics=["hook.**"], behaviour=lambda e: False, max_retries=0)
    await other.subscribe(flaky)
    await other.publish(make_event("hook.old", {"old": 1}))
    await wait_until(lambda: len(flaky.calls) == 1)
    await other.join(timeout=5)
    await other.stop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mpm_events",
        "monitor",
        "--backend",
        backend,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith(f"monitor of {backend}: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            stream = await sse(http, url, "pattern=hook.**")
            # NOTE: the tailer starts after the last entry before the URL was printed.
            _log_append(backend, [{"topic": "hook.new", "type": "T", "data": {"new": 2}}])
            (m,) = await stream.take(1, timeout=10)
            assert m.json()["topic"] == "hook.new" and m.json()["data"] == {"new": 2}
            async with http.get(base_of(url) + "/api/metrics") as r:
                assert (await r.json())["shared_log"]["backend"] == backend
            async with http.get(base_of(url) + "/api/consumers") as r:
                (group,) = await r.json()
            assert group["name"] == "flaky" and group["dead_lettered"] == 1
            async with http.get(base_of(url) + "/api/dead-letters") as r:
                (dl,) = await r.json()
            assert dl["consumer"] == "flaky" and dl["event"]["data"] == {"old": 1}
            purge = f"{base_of(url)}/api/dead-letters/purge?token={token_of(url)}"
            async with http.post(purge, json={"ids": [dl["event"]["id"]]}) as r:
                assert await r.json() == {"purged": 1}
            async with http.get(base_of(url) + "/api/dead-letters") as r:
                assert await r.json() == []
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
