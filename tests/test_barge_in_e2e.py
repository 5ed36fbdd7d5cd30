"""Barge-in end to end: the real server, the offline agent, a caller who talks over it.

The simulated caller knows exactly how much of each reply it played before Twilio's
``clear``; the server's call record and the truncation the offline agent received
must agree with it.
"""

from __future__ import annotations

import json

import httpx
import pytest

from offline.caller import CallerBehaviour, run_call
from tests.support import AUDIO, TOKEN, running_server

GREETING_END = "How can I help you today?"


#: The agent's audio still in flight when its response.cancel reaches it, in ms of call
#: time (the offline agent sends at 3x real time: 450 ms of audio), as from a real model.
CANCEL_LAG_MS = 150


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server with the offline agent logging what it receives.

    The offline agent's replies go on for :data:`CANCEL_LAG_MS` after a cancel, so every
    barge-in meets audio of the cut-off reply arriving after Twilio's ``clear``.
    """
    tmp = tmp_path_factory.mktemp("barge-in")
    events = tmp / "agent-events.jsonl"
    with running_server(
        tmp, LOCAL_AGENT_EVENT_LOG=str(events), LOCAL_AGENT_CANCEL_LAG_MS=str(CANCEL_LAG_MS)
    ) as (url, log):
        yield url, log, events


async def _call(url: str, behaviour: CallerBehaviour):
    result = await run_call(
        url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, behaviour=behaviour, max_call_s=90
    )
    async with httpx.AsyncClient(base_url=url) as client:
        record = (await client.get(f"/api/calls/{result.call_sid}")).json()
    return result, record


def _truncations(events_path) -> list[dict]:
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("type") == "conversation.item.truncate"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "behaviour",
    [
        CallerBehaviour(barge_in_after_ms=2000),
        CallerBehaviour(barge_in_after_ms=2000, speech_dbfs=-35, echo_db=-20),
    ],
    ids=["caller", "quiet-caller-over-echo"],
)
async def test_talking_over_the_agent_stops_it_and_everyone_knows_what_was_heard(
    server, behaviour
):
    url, log, events = server
    truncations_before = len(_truncations(events))
    result, record = await _call(url, behaviour)

    # The caller talked over the greeting and Twilio was told to clear at once.
    first = result.utterances[0]
    assert first.get("barged_in")
    clear = next(c for c in result.clear_events if c["utterance"] == 0 and c["state"] == "speaking")
    assert clear["at"] > first["onset_at"]
    # No audio of an interrupted reply arrived after its clear; marks were echoed.
    assert result.stale_media_after_clear == 0
    assert any(name.startswith("r1:") for name in result.marks_echoed)
    # The agent answered the interrupting turn, and every other one: it never went silent.
    assert all(u["replied"] for u in result.utterances), result.summary()

    # The record knows exactly what was heard of the greeting.
    greeting = record["turns"][0]
    assert greeting["role"] == "assistant" and greeting["interrupted"] is True
    assert abs(greeting["audio_played_ms"] - clear["reply_played_ms"]) <= 100
    assert greeting["generated_text"].endswith(GREETING_END)
    assert greeting["text"] and greeting["generated_text"].startswith(greeting["text"])
    assert len(greeting["text"]) < len(greeting["generated_text"])
    # The model was told the same figure (conversation.item.truncate from the marks).
    truncations = _truncations(events)[truncations_before:]
    assert truncations, "the offline agent received no truncate"
    assert truncations[0]["audio_end_ms"] == greeting["audio_played_ms"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "behaviour",
    [
        CallerBehaviour(echo_db=-20),
        CallerBehaviour(speech_dbfs=-35, echo_db=-20),  # raised for Silero, its echo's residue too
        CallerBehaviour(backchannel_ms=250),
    ],
    ids=["own-echo-at-minus-20dB", "quiet-caller-own-echo", "250ms-backchannel"],
)
async def test_not_every_sound_is_a_barge_in(server, behaviour):
    url, _, _ = server
    result, record = await _call(url, behaviour)

    # Nothing cleared the greeting before the caller's first real turn, nor any reply the
    # caller was waiting for: only the caller's speech interrupts.
    assert not [c for c in result.clear_events if c["state"] != "speaking"], result.clear_events
    greeting = record["turns"][0]
    assert greeting["role"] == "assistant" and greeting["interrupted"] is False
    assert greeting["text"].endswith(GREETING_END)
    assert greeting["audio_played_ms"] >= 3000
    if behaviour.backchannel_ms:
        assert result.backchannel_at is not None  # the caller did say it over the greeting
    assert all(u["replied"] for u in result.utterances), result.summary()
