"""Debian's headless Chromium for the page tests, driven by playwright: one place for its
path, flags and the tab that has opened the printed URL (so it holds the token cookie)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without the background-networking flags Chromium keeps trying
# hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)",
)


@asynccontextmanager
async def gateway_tab(url: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A tab that opened ``url`` (the printed URL: it sets the cookie), and the page errors
    it records."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = await browser.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        response = await tab.goto(url)
        assert response is not None and response.ok
        try:
            yield tab, errors
        finally:
            await browser.close()
