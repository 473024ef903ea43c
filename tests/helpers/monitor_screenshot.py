"""Makes docs/img/monitor.png: a bus with a few consumers (one flaky) and a hook
stream, its monitor page in Debian's Chromium. Run: .venv/bin/python
tests/helpers/monitor_screenshot.py [OUT]"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import Any

from monitor_browser import chromium_path
from mpm_events import ConsumerConfig, EventBus, HookEventProducer, IEventConsumer
from playwright.async_api import async_playwright


class Demo(IEventConsumer):
    def __init__(self, name: str, topics: list[str], fail_every: int = 0) -> None:
        self._config = ConsumerConfig(name=name, topics=topics, max_retries=1, retry_backoff=1.0)
        self.n = 0
        self.fail_every = fail_every

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    async def initialize(self) -> bool:
        return True

    async def consume(self, event: Any) -> bool:
        self.n += 1
        await asyncio.sleep(random.random() / 500)
        return not (self.fail_every and self.n % self.fail_every == 0)

    async def consume_batch(self, events: list[Any]) -> int:
        return len(events)

    async def shutdown(self) -> None:
        pass

    def get_metrics(self) -> dict[str, Any]:
        return {"seen": self.n}

    @property
    def is_healthy(self) -> bool:
        return True


async def main(out: Path) -> None:
    bus = EventBus()
    await bus.start()
    for c in (
        Demo("tool-audit", ["hook.tool"]),
        Demo("webhook", ["hook.**"], fail_every=9),
        Demo("subagents", ["hook.subagent.*", "hook.response"]),
    ):
        await bus.subscribe(c)
    url = await bus.serve_monitor()
    producer = HookEventProducer(bus)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1250})
        await page.goto(url)
        await page.wait_for_selector("#conn.live")
        rng = random.Random(7)
        tools = ["Bash", "Read", "Edit", "Grep", "Write"]
        for i in range(400):
            tool = rng.choice(tools)
            await producer.publish_tool_use(tool, {"command": f"step {i}", "tool": tool})
            if i % 25 == 0:
                await producer.publish_response(
                    {"text": f"response {i}", "tokens": rng.randint(10, 900)}
                )
            if i % 60 == 0:
                await producer.publish_subagent_event("research", "started", {"i": i})
            await asyncio.sleep(0.008)
        await bus.join(timeout=20)
        await page.click("#dl-refresh")
        await page.fill("#tester-topic", "hook.tool")
        await page.click("#tester-form button")
        await page.wait_for_selector("#tester-result li")
        await page.click("#event-rows tr[data-seq]:nth-child(3)")
        await page.wait_for_function(
            "() => document.querySelector('#detail-deliveries').textContent.includes('success')"
        )
        await asyncio.sleep(1.2)
        await page.screenshot(path=str(out), full_page=False)
        await browser.close()
    await bus.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "docs" / "img" / "monitor.png"
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
