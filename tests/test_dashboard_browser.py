"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright).

The real server runs as its own process; the simulated caller places a call with real
speech. A person watching the page sees the call appear among the active calls, its
timer run, its transcript and latency plot grow as the call goes on, and the call move
to the history when it ends.

Chromium comes from Debian (``make test`` installs it); a missing browser fails this
test with a clear message rather than skipping it.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from playwright.async_api import async_playwright, expect

from offline.caller import run_call
from tests.support import AUDIO, TOKEN, running_server

CHROMIUM = "/usr/bin/chromium"


def _chromium() -> str:
    path = shutil.which("chromium") or (CHROMIUM if shutil.which(CHROMIUM) else None)
    if path is None:
        pytest.fail("chromium is missing: run `make test` as root, or `sudo apt-get install chromium`")
    return path


@pytest.mark.asyncio
async def test_a_call_appears_live_its_transcript_grows_then_it_moves_to_history(tmp_path):
    executable = _chromium()
    with running_server(tmp_path) as (url, _log):
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(url + "/")
                await expect(page.locator("#connection")).to_contain_text("Live", timeout=10_000)
                await expect(page.locator("#no-active")).to_be_visible()

                call = asyncio.create_task(
                    run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90))
                card = page.locator("#active-calls article.call")
                await expect(card).to_have_count(1, timeout=15_000)
                sid = await card.get_attribute("data-call-sid")
                assert sid and sid.startswith("CA")
                await expect(page.locator("#active-count")).to_have_text("(1)")

                # The timer runs.
                await expect(card.locator(".timer")).not_to_have_text("0:00", timeout=5_000)
                # The transcript grows as the call goes on: the greeting, then the caller ...
                lines = card.locator(".transcript li")
                await expect(lines.first).to_be_visible(timeout=20_000)
                first_count = await lines.count()
                await expect(card.locator(".transcript li.user").first).to_be_visible(timeout=30_000)
                await expect(card.locator(".transcript li.assistant").nth(1)).to_be_visible(timeout=30_000)
                assert await lines.count() > first_count
                # ... and answered replies show on the latency plot.
                await expect(card.locator(".latency svg rect").first).to_be_attached(timeout=30_000)
                await expect(card.locator(".latency figcaption")).to_contain_text("mean")

                result = await asyncio.wait_for(call, 100)
                assert result.call_sid == sid
                # Ended: out of the active calls, into the history.
                await expect(card).to_have_count(0, timeout=15_000)
                row = page.locator(f'#history tbody tr[data-call-sid="{sid}"]')
                await expect(row).to_have_count(1, timeout=10_000)
                await expect(row).to_contain_text("+15551230001")
                # Its export downloads as text with the transcript.
                async with page.expect_download() as info:
                    await row.get_by_role("button", name=f"Export call {sid} as Text").click()
                download = await info.value
                text = (tmp_path / "export.txt")
                await download.save_as(text)
                assert f"Call {sid}" in text.read_text() and "Caller:" in text.read_text()
            finally:
                await browser.close()
