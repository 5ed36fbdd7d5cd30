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
import re
import shutil

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from offline.caller import CallerBehaviour, run_call
from outbound import PRESETS
from tests.support import ACCOUNT_SID, AUDIO, TOKEN, running_server

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


@pytest.mark.asyncio
async def test_the_call_form_places_an_outbound_call_with_edited_instructions(tmp_path, fake_twilio_rest):
    """With an API key set, a person enters it, picks a preset, edits its instructions, calls."""
    executable = _chromium()
    key = "browser-test-key-0123456789"
    with running_server(tmp_path, TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_API_BASE_URL=fake_twilio_rest.url,
                        TWILIO_FROM_NUMBER="+15559870002", API_KEY=key) as (url, _log):
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(url + "/")
                await page.get_by_text("API key", exact=True).click()
                await page.get_by_label("API key (kept in this tab only)").fill(key)
                await page.get_by_role("button", name="Use key").click()  # reloads with the key
                await expect(page.locator("#connection")).to_contain_text("Live", timeout=10_000)

                await page.get_by_label("Number to call (E.164)").fill("+15551234567")
                await page.get_by_label("Preset").select_option("survey")
                instructions = page.get_by_label("Instructions for the agent")
                await expect(instructions).to_have_value(re.compile("satisfaction survey"))
                edited = (await instructions.input_value()) + " Ask about the breakfast too."
                await instructions.fill(edited)
                await page.get_by_label("Facts for the call").fill("name: Ana")
                await page.get_by_role("button", name="Call", exact=True).click()
                await expect(page.locator("#outbound-result")).to_contain_text("queued", timeout=10_000)
                shown = await page.locator("#outbound-result").text_content()
            finally:
                await browser.close()
        call_sid = re.search(r"Call (CA\w+)", shown).group(1)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            record = (await client.get(f"/api/calls/{call_sid}")).json()
    (created,) = fake_twilio_rest.of_kind("create")
    assert created["form"]["To"] == "+15551234567" and created["call_sid"] == call_sid
    # Edited, the instructions replace the preset's; the preset's voicemail stays.
    assert record["task"]["prompt"].endswith("Ask about the breakfast too.")
    assert record["task"]["context"] == {"name": "Ana"}
    assert record["task"]["voicemail"] == PRESETS["survey"].voicemail({})
    assert record["preset"] is None
    assert record["status"] == "queued" and record["direction"] == "outbound-api"


@pytest.mark.asyncio
async def test_a_caller_talking_over_the_agent_shows_as_an_interruption(tmp_path):
    executable = _chromium()
    with running_server(tmp_path) as (url, _log):
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(url + "/")
                await expect(page.locator("#connection")).to_contain_text("Live", timeout=10_000)
                call = asyncio.create_task(run_call(
                    url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90,
                    behaviour=CallerBehaviour(barge_in_after_ms=2000)))
                card = page.locator("#active-calls article.call")
                await expect(card).to_have_count(1, timeout=15_000)
                # The agent's cut-off turn is marked, with how much the caller heard.
                cut = card.locator(".transcript li.assistant.interrupted").first
                await expect(cut).to_be_visible(timeout=30_000)
                await expect(cut.locator(".interrupted-mark")).to_contain_text("interrupted after")
                await expect(card.locator(".transcript li.interruption").first).to_contain_text(
                    "Caller interrupted the agent")
                result = await asyncio.wait_for(call, 100)
                row = page.locator(f'#history tbody tr[data-call-sid="{result.call_sid}"]')
                await expect(row).to_have_count(1, timeout=15_000)
                barge_ins = row.locator("td").nth(7)
                assert int(await barge_ins.text_content()) >= 1
            finally:
                await browser.close()
