"""Debian's Chromium through playwright for tests/test_monitor_browser.py: no
browser download (playwright's own builds cannot be fetched here), no network
beyond loopback."""

from __future__ import annotations

import shutil
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """Debian's Chromium, if installed (``make test`` installs it)."""
    return CHROMIUM if shutil.which(CHROMIUM) else shutil.which("chromium")


class PageWatch:
    """Collects a page's console errors, page errors and non-loopback requests."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.outside: list[str] = []
        page.on(
            "console",
            lambda m: (
                self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", self._request)

    def _request(self, req: Any) -> None:
        host = urlsplit(req.url).hostname
        if req.url.startswith(("data:", "blob:", "about:")):
            return
        if host not in ("127.0.0.1", "localhost", "::1"):
            self.outside.append(req.url)
