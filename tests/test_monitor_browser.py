"""The monitor page in Debian's Chromium (headless, playwright): what the user
sees matches what the bus did. One browser for the module; each test its own bus."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio
from conftest import Recorder, make_event, wait_until
from helpers.monitor_browser import PageWatch, chromium_path

playwright_api = pytest.importorskip("playwright.async_api")

from mpm_events import EventBus  # noqa: E402

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> Any:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def monitored(browser: Any) -> Any:
    bus = EventBus()
    await bus.start()
    rec = Recorder("rec", topics=["hook.**"])
    await bus.subscribe(rec)
    url = await bus.serve_monitor()
    page = await browser.new_page()
    watch = PageWatch(page)
    await page.goto(url)
    await page.wait_for_selector("#conn.live")
    yield bus, rec, page, watch
    await page.close()
    await bus.stop()
    assert watch.errors == [], watch.errors
    assert watch.outside == [], watch.outside


async def row_seqs(page: Any) -> list[int]:
    return [
        int(s)
        for s in await page.eval_on_selector_all(
            "#event-rows tr[data-seq]", "rs => rs.map(r => r.dataset.seq)"
        )
    ]


async def wait_rows(page: Any, n: int) -> None:
    await page.wait_for_function(
        "n => document.querySelectorAll('#event-rows tr[data-seq]').length >= n", arg=n
    )


async def test_rows_in_publish_order_with_seq_and_payload_as_text(monitored: Any) -> None:
    bus, _, page, _ = monitored
    evil = "<img src=x onerror=\"document.title='pwned'\">"
    events = [make_event("hook.order", {"i": i, "html": evil}) for i in range(20)]
    for e in events:
        await bus.publish(e)
    await wait_rows(page, 20)
    seqs = await row_seqs(page)
    # newest on top: seqs descend by one; ids in publish order from the bottom
    assert seqs == list(range(seqs[0], seqs[0] - 20, -1))
    ids = await page.eval_on_selector_all(
        "#event-rows tr[data-seq]", "rs => rs.map(r => r.dataset.id)"
    )
    assert ids[::-1] == [e.id for e in events]
    assert await page.locator("#event-rows img").count() == 0
    await page.click(f"#event-rows tr[data-id='{events[3].id}']")
    await page.wait_for_function(
        "() => document.querySelector('#detail-deliveries').textContent.includes('success')"
    )
    text = await page.text_content("#detail-payload")
    assert evil.replace('"', '\\"') in (text or "")
    assert await page.locator("#detail img").count() == 0
    assert await page.title() != "pwned"


async def test_filter_is_applied_by_the_server(monitored: Any) -> None:
    bus, _, page, _ = monitored
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/api/stream" in r.url else None)
    await page.fill("#pattern", "hook.keep.*")
    await page.click("#filter-form button[type=submit]")
    await wait_until(lambda: any("pattern=hook.keep" in u and "after=9" not in u for u in streams))
    await page.wait_for_selector("#conn.live")
    await page.wait_for_function("() => document.querySelectorAll('#event-rows tr').length == 0")
    for i in range(6):
        await bus.publish(make_event("hook.keep.x" if i % 2 else "hook.drop", {"i": i}))
    await wait_rows(page, 3)
    await bus.join(timeout=5)
    await asyncio.sleep(0.3)  # NOTE: lets a wrongly admitted row arrive before counting
    topics = await page.eval_on_selector_all(
        "#event-rows tr[data-seq] td:nth-child(3)", "ts => ts.map(t => t.textContent)"
    )
    assert topics == ["hook.keep.x"] * 3
    await page.fill("#rule", '{"data": 5}')
    await page.click("#filter-form button[type=submit]")
    await page.wait_for_function(
        "() => document.querySelector('#filter-error').textContent.includes('invalid rule')"
    )


async def test_counters_equal_get_metrics(monitored: Any) -> None:
    bus, _, page, _ = monitored
    for i in range(25):
        await bus.publish(make_event("hook.count", {"i": i}))
    await bus.join(timeout=5)
    m = bus.get_metrics()
    await page.wait_for_function(
        "n => document.querySelector('[data-metric=events_processed]').textContent == String(n)",
        arg=m["events_processed"],
    )
    for key in (
        "events_published",
        "events_processed",
        "events_failed",
        "events_dead_lettered",
        "consumers_active",
    ):
        assert await page.text_content(f"[data-metric={key}]") == str(m[key]), key
    row = page.locator("#consumer-rows tr[data-consumer=rec] [data-field=processed]")
    await page.wait_for_function(
        "n => document.querySelector("
        "'#consumer-rows tr[data-consumer=rec] [data-field=processed]')?.textContent == String(n)",
        arg=m["consumer_stats"]["rec"]["processed"],
    )
    assert await row.text_content() == str(m["consumer_stats"]["rec"]["processed"])


async def test_dead_letter_redriven_from_the_page_reaches_the_consumer(monitored: Any) -> None:
    bus, _, page, _ = monitored
    fail = {"on": True}
    flaky = Recorder("flaky", topics=["job.*"], behaviour=lambda e: not fail["on"], max_retries=0)
    await bus.subscribe(flaky)
    e = make_event("job.one", {"k": 1})
    await bus.publish(e)
    await bus.join(timeout=5)
    assert len(bus.get_dead_letters()) == 1
    await page.click("#dl-refresh")
    await page.wait_for_selector(f"#dl-rows tr[data-id='{e.id}']")
    fail["on"] = False
    await page.click(f"#dl-rows tr[data-id='{e.id}'] button.dl-redrive")
    await wait_until(lambda: [c.id for c in flaky.calls] == [e.id, e.id], what="redelivered")
    await page.wait_for_function(
        "() => document.querySelector('#dl-status').textContent == 'redriven: 1'"
    )
    assert bus.get_dead_letters() == []


async def test_resumes_after_the_server_drops_the_stream(monitored: Any) -> None:
    bus, _, page, _ = monitored
    for i in range(10):
        await bus.publish(make_event("hook.resume", {"i": i}))
    await wait_rows(page, 10)
    assert bus._monitor_drop_clients("test: connection dropped") == 1
    # published while the page is disconnected
    for i in range(10, 20):
        await bus.publish(make_event("hook.resume", {"i": i}))
    await page.wait_for_selector("#event-rows tr.notice")
    await wait_rows(page, 20)
    await page.wait_for_selector("#conn.live")
    seqs = await row_seqs(page)
    assert seqs == list(range(seqs[0], seqs[0] - 20, -1)), seqs
    notice = await page.text_content("#event-rows tr.notice")
    assert "test: connection dropped" in (notice or "")


async def test_ten_thousand_events_keep_the_dom_bounded(monitored: Any) -> None:
    bus, _rec, page, _ = monitored
    max_rows = await page.evaluate("import('/assets/app.js').then(m => m.MAX_ROWS)")
    for _ in range(5):
        assert await bus.publish_batch([make_event("hook.flood", {}) for _ in range(2000)]) == 2000
        await bus.join(timeout=30)
    await page.wait_for_function(
        "s => Number(document.querySelector('#last-seq').textContent) >= s",
        arg=10_000,
        timeout=30_000,
    )
    last = int(await page.text_content("#last-seq") or 0)
    await page.wait_for_function(
        "s => Number(document.querySelector('#event-rows tr[data-seq]')?.dataset.seq) == s",
        arg=last,
    )
    assert await page.locator("#event-rows tr").count() <= max_rows
    assert await page.evaluate("document.getElementsByTagName('*').length") < max_rows * 10 + 500
