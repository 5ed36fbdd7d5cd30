"""Gemini Live end to end: the real server, Pipecat's GeminiLiveLLMService, real speech.

The model's side is the offline Gemini Live server (BidiGenerateContent over TLS with
a certificate made at start), in the test's process; the server process reaches it
through ``GEMINI_BASE_URL`` and trusts its certificate through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from offline.caller import CallerBehaviour, run_call
from offline.gemini_server import OfflineGeminiLiveServer
from tests.support import AUDIO, TOKEN, running_server


def _gemini_env(gemini: OfflineGeminiLiveServer) -> dict[str, str]:
    return {
        "AGENT_PROVIDER": "gemini",
        "GOOGLE_API_KEY": "offline-test-key",
        "GEMINI_BASE_URL": gemini.url,
        "SSL_CERT_FILE": gemini.ca_file,
    }


async def _call(url: str, **kwargs):
    result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90, **kwargs)
    async with httpx.AsyncClient(base_url=url) as client:
        record = (await client.get(f"/api/calls/{result.call_sid}")).json()
    return result, record


@pytest.mark.asyncio
async def test_a_gemini_call_greets_answers_calls_a_tool_and_survives_a_drop(tmp_path):
    gemini = OfflineGeminiLiveServer()
    await gemini.start()
    try:
        with running_server(tmp_path, **_gemini_env(gemini)) as (url, _):
            call = asyncio.create_task(_call(url))
            await asyncio.sleep(24)  # mid-call, after the tool call of the second turn
            dropped = await gemini.drop_connections()
            result, record = await call
    finally:
        await gemini.stop()

    assert record["provider"] == "gemini"
    assert result.greeting_ms is not None
    assert all(u["replied"] for u in result.utterances), result.summary()
    assert record["turns"][0]["role"] == "assistant" and record["turns"][0]["text"]
    # The scripted tool call round trip went through our registry, with real effects.
    assert {c["name"] for c in record["tool_calls"]} == {"get_caller_context"}
    assert record["tool_calls"][0]["result"]["known_caller"] is True
    # The dropped session was resumed: a second connection carried a resumption handle.
    assert dropped >= 1
    handles = [
        m for m in gemini.received if "setup" in m
        and (m["setup"].get("sessionResumption") or m["setup"].get("session_resumption") or {}).get("handle")
    ]
    assert handles, "no session was resumed after the drop"


@pytest.mark.asyncio
async def test_a_gemini_call_survives_the_session_limit_and_a_barge_in(tmp_path):
    # The greeting's audio goes on for 150 ms after the barge-in reached Gemini, as audio
    # in flight from a real model: none of it may reach the caller after the clear.
    gemini = OfflineGeminiLiveServer(max_session_s=12, interrupt_lag_ms=150)
    await gemini.start()
    try:
        with running_server(tmp_path, **_gemini_env(gemini)) as (url, _):
            result, record = await _call(url, behaviour=CallerBehaviour(barge_in_after_ms=2000))
    finally:
        await gemini.stop()

    assert all(u["replied"] for u in result.utterances), result.summary()
    assert record["end_reason"] != "model_error"
    # The caller talked over the greeting: cleared at once, the record knows what was heard.
    assert any(c["utterance"] == 0 and c["state"] == "speaking" for c in result.clear_events)
    assert result.stale_media_after_clear == 0
    assert record["turns"][0]["interrupted"] is True
    assert 0 < record["turns"][0]["audio_played_ms"] < 8000
    # Gemini's session limit was met (goAway) and the call went on in a resumed session.
    setups = [m for m in gemini.received if "setup" in m]
    assert len(setups) >= 2
