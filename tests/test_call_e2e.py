"""End to end: the real server, on a free port, called by the simulated caller with real speech.

The server runs as its own process (``python server.py``) with the offline agent, a
Twilio auth token (so every webhook is signed and checked) and a fresh SQLite file.
The simulated caller speaks the Twilio Media Streams protocol over loopback.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime

import httpx
import pytest

from offline.caller import run_call
from tests.support import AUDIO, TOKEN, running_server, speech_fraction


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server process with the offline agent; yields (base URL, log path)."""
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.asyncio
async def test_a_call_with_real_speech_is_answered_and_recorded(server, tmp_path):
    url, log = server
    heard_wav = tmp_path / "heard.wav"
    result = await run_call(
        url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, out_wav=str(heard_wav), max_call_s=90
    )
    hung_up = time.monotonic()

    # The caller heard a greeting, and a spoken reply to every utterance.
    assert result.greeting_ms is not None
    assert len(result.utterances) >= 3  # jfk_8k.wav has pauses between its phrases
    assert all(u["replied"] for u in result.utterances), result.summary()
    assert heard_wav.exists() and speech_fraction(result.heard_pcm) > 0.3
    # The stream carried the TwiML's parameters, as Twilio's start message does.
    assert result.parameters["from"] == "+15551230001"

    # The pipeline is torn down after the hang-up: no active call within a second.
    async with httpx.AsyncClient(base_url=url) as client:
        while (await client.get("/health")).json()["active_calls"]:
            assert time.monotonic() - hung_up < 1.0, "call still active 1 s after hang-up"
            await asyncio.sleep(0.05)
        record = (await client.get(f"/api/calls/{result.call_sid}")).json()

    # The record holds every turn, in order, the greeting first.
    assert record["call_sid"] == result.call_sid
    assert record["from"] == "+15551230001" and record["to"] == "+15559870002"
    assert record["provider"] == "local"
    # The offline agent's booking scenario ends the call after its goodbye.
    assert record["end_reason"] == "agent_ended"
    assert record["ended_at"] >= record["started_at"]
    turns = record["turns"]
    assert turns[0]["role"] == "assistant" and "Grand Harbor" in turns[0]["text"]
    users = [t for t in turns if t["role"] == "user"]
    assistants = [t for t in turns if t["role"] == "assistant"]
    assert len(users) == len(result.utterances)
    assert len(assistants) == len(result.utterances) + 1  # the greeting and one reply each
    assert [c["name"] for c in record["tool_calls"]][:1] == ["get_caller_context"]
    # The agent measured the caller's speech in the audio it was sent (8 kHz mu-law): about
    # two thirds of each utterance is voiced. Audio sent or read in the wrong format
    # would come out at a sixth, or six times, of that.
    heard = sum(float(re.fullmatch(r"\[caller spoke (\d+\.\d) s\]", t["text"]).group(1)) for t in users)
    said = sum(u["end_s"] - u["start_s"] for u in result.utterances)
    assert 0.35 * said <= heard <= 1.2 * said
    for before, after in zip(turns, turns[1:]):
        assert before["role"] != after["role"], "turns alternate caller / agent"
        assert _ts(before["started_at"]) <= _ts(after["started_at"])
    for turn in turns:
        assert _ts(turn["started_at"]) <= _ts(turn["ended_at"])
        assert turn["text"]
    assert "Traceback" not in log.read_text()


@pytest.mark.asyncio
async def test_an_unsigned_call_is_refused(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/twilio/incoming-call", data={"CallSid": "CA" + "0" * 32, "From": "+1555"}
        )
    assert response.status_code == 403


@pytest.mark.asyncio
async def test_the_caller_hanging_up_mid_call_tears_the_call_down(server):
    url, log = server
    result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=12)
    hung_up = time.monotonic()
    assert result.ended_by == "max_call_s"  # the caller sent stop and closed, mid-call

    async with httpx.AsyncClient(base_url=url) as client:
        while (await client.get("/health")).json()["active_calls"]:
            assert time.monotonic() - hung_up < 1.0, "call still active 1 s after hang-up"
            await asyncio.sleep(0.05)
        record = (await client.get(f"/api/calls/{result.call_sid}")).json()
    assert record["end_reason"] == "caller_hung_up"
    assert record["ended_at"] is not None
    assert record["turns"][0]["role"] == "assistant"  # what was said so far is kept
