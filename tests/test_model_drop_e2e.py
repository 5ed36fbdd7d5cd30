"""The model connection drops mid-call: reconnected with the conversation, or an apology.

The offline agent runs in the test's process (the server reaches it through
``LOCAL_AGENT_BASE_URL``), so the test can cut its sockets, or stop it, mid-call.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from offline.caller import run_call
from offline.realtime_server import OfflineRealtimeServer
from tests.support import AUDIO, TOKEN, running_server, speech_fraction


async def _record(url: str, call_sid: str) -> dict:
    async with httpx.AsyncClient(base_url=url) as client:
        return (await client.get(f"/api/calls/{call_sid}")).json()


@pytest.mark.asyncio
async def test_a_dropped_model_connection_is_reconnected_with_the_conversation(tmp_path):
    agent = OfflineRealtimeServer()
    await agent.start()
    try:
        with running_server(tmp_path, LOCAL_AGENT_BASE_URL=agent.url) as (url, _):
            call = asyncio.create_task(
                run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90)
            )
            await asyncio.sleep(13)  # the greeting and the first caller turn are done
            assert agent.drop_connections() == 1
            result = await call
            record = await _record(url, result.call_sid)
    finally:
        await agent.stop()

    # The caller noticed nothing worse than a pause: every turn was answered.
    assert all(u["replied"] for u in result.utterances), result.summary()
    assert record["end_reason"] != "model_error"
    # A second session was opened and given the conversation so far, greeting included.
    opened = [i for i, e in enumerate(agent.received) if e["type"] == "connection.opened"]
    assert len(opened) == 2
    replayed = [
        e["item"] for e in agent.received[opened[1] :]
        if e["type"] == "conversation.item.create" and e["item"].get("role") == "user"
    ]
    history = " ".join(str(item.get("content")) for item in replayed)
    assert "Grand Harbor Hotel front desk" in history  # the greeting the caller heard
    assert "[caller spoke" in history  # and the caller's turns
    assert "get_caller_context" in history  # and the tool call made before the drop


@pytest.mark.asyncio
async def test_a_model_that_is_gone_ends_the_call_with_a_spoken_apology(tmp_path):
    agent = OfflineRealtimeServer()
    await agent.start()
    with running_server(tmp_path, LOCAL_AGENT_BASE_URL=agent.url) as (url, _):
        call = asyncio.create_task(
            run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=60)
        )
        await asyncio.sleep(11)  # during the first caller turn
        await agent.stop()  # gone for good: every reconnect is refused
        result = await call
        record = await _record(url, result.call_sid)

    assert result.ended_by == "server"
    assert record["end_reason"] == "model_error"
    apology = record["turns"][-1]
    assert apology["role"] == "assistant" and "sorry" in apology["text"].lower()
    assert apology["interrupted"] is False  # heard to its end
    assert speech_fraction(result.heard_pcm[-8000 * 2 * 6 :]) > 0.2  # the caller heard it
