"""Calls that go wrong on the agent's side still end well: spoken, recorded, hung up."""

from __future__ import annotations

import base64

import httpx
import pytest

from offline.caller import run_call
from tests.support import ACCOUNT_SID, AUDIO, TOKEN, free_port, running_server, speech_fraction


@pytest.mark.asyncio
async def test_unreachable_model_gets_a_spoken_apology_a_record_and_a_rest_hang_up(
    tmp_path, fake_twilio_rest
):
    dead_model = f"ws://127.0.0.1:{free_port()}/v1/realtime"  # nothing listens there
    with running_server(
        tmp_path,
        LOCAL_AGENT_BASE_URL=dead_model,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_API_BASE_URL=fake_twilio_rest.url,
    ) as (url, log):
        result = await run_call(
            url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, reply_timeout_s=4, max_call_s=40
        )
        async with httpx.AsyncClient(base_url=url) as client:
            record = (await client.get(f"/api/calls/{result.call_sid}")).json()

    # The line was not silent: the caller heard the apology, to its end, then the
    # server closed the stream (after Twilio's echo of the end-of-call mark).
    assert result.greeting_ms is not None
    assert speech_fraction(result.heard_pcm) > 0.2
    assert result.ended_by == "server"
    assert "end-of-call" in result.marks_echoed
    # The record says what happened, and holds what was said.
    assert record["end_reason"] == "model_error"
    assert record["turns"][0]["role"] == "assistant"
    assert "sorry" in record["turns"][0]["text"]
    # The call was completed through Twilio's REST API with the account's credentials.
    assert len(fake_twilio_rest.requests) == 1
    request = fake_twilio_rest.requests[0]
    assert request["call_sid"] == result.call_sid and request["account_sid"] == ACCOUNT_SID
    assert request["form"] == {"Status": "completed"}
    expected = base64.b64encode(f"{ACCOUNT_SID}:{TOKEN}".encode()).decode()
    assert request["authorization"] == f"Basic {expected}"
