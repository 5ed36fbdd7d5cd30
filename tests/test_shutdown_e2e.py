"""Graceful shutdown: SIGTERM the real server process while a simulated call is in flight.

The server must stop taking calls at once (the webhook rejects them as busy, health
says ``draining``), let the call in flight go on, and end it once
``SHUTDOWN_GRACE_SECS`` is over; then the process exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from offline.caller import post_twilio_request, run_call
from records import CallStore
from tests.support import ACCOUNT_SID, AUDIO, TOKEN, running_server, server_pid, trimmed_wav


async def _until_call_is_active(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url) as client:
        while (await client.get("/health")).json()["active_calls"] == 0:
            assert time.monotonic() < deadline, "the call never became active"
            await asyncio.sleep(0.1)


async def _server_is_gone(url: str, timeout_s: float) -> float:
    """Seconds until the server stops answering (it exited)."""
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as client:
        while time.monotonic() - start < timeout_s:
            try:
                await client.get("/health")
            except httpx.TransportError:
                return time.monotonic() - start
            await asyncio.sleep(0.1)
    raise AssertionError(f"the server still answers {timeout_s:.0f} s later")


async def _new_call_is_turned_away(url: str) -> None:
    form = {"CallSid": "CA" + "5" * 32, "AccountSid": ACCOUNT_SID, "From": "+15551230009",
            "To": "+15559870002", "CallStatus": "ringing", "Direction": "inbound"}
    response = await post_twilio_request(url, "/twilio/incoming-call", form, auth_token=TOKEN)
    assert response.status_code == 200
    twiml = ET.fromstring(response.text)
    assert twiml.find("./Reject").get("reason") == "busy" and twiml.find("./Connect") is None
    async with httpx.AsyncClient(base_url=url) as client:
        health = await client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "draining"


@pytest.mark.asyncio
async def test_sigterm_lets_the_call_in_flight_finish_and_takes_no_new_calls(tmp_path):
    with running_server(tmp_path, SHUTDOWN_GRACE_SECS="90") as (url, log):
        pid = server_pid(log)
        call = asyncio.create_task(run_call(url, trimmed_wav(tmp_path, 4.5), auth_token=TOKEN,
                                            max_call_s=80))
        await _until_call_is_active(url)
        await asyncio.sleep(1.0)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        await _new_call_is_turned_away(url)
        result = await asyncio.wait_for(call, 90)
        # The call went on to its natural end, every utterance answered ...
        assert result.all_answered, result.summary()
        # ... and then the process exited, without waiting out the grace period.
        assert await _server_is_gone(url, timeout_s=15) < 15
    store = CallStore(str(tmp_path / "calls.db"))
    record = await store.get_call(result.call_sid)
    await store.close()
    assert record["end_reason"] != "server_shutdown"
    assert "SIGTERM received" in log.read_text() and "drained" in log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.asyncio
async def test_sigterm_ends_a_call_still_going_when_the_grace_period_is_over(tmp_path):
    grace_s = 3.0
    with running_server(tmp_path, SHUTDOWN_GRACE_SECS=str(grace_s)) as (url, log):
        pid = server_pid(log)
        call = asyncio.create_task(run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN,
                                            max_call_s=90))
        await _until_call_is_active(url)
        await asyncio.sleep(1.0)
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        await _new_call_is_turned_away(url)
        result = await asyncio.wait_for(call, 30)
        ended_after = time.monotonic() - signalled
        # The server ended the call at the bound (plus teardown), not before, not much after.
        assert result.ended_by == "server", result.summary()
        assert grace_s - 0.5 <= ended_after <= grace_s + 5.0
        await _server_is_gone(url, timeout_s=10)
    store = CallStore(str(tmp_path / "calls.db"))
    record = await store.get_call(result.call_sid)
    await store.close()
    assert record["end_reason"] == "server_shutdown"
    assert "grace period over: ending 1 call(s)" in log.read_text()
