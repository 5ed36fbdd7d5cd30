"""The cascade graph end to end: real caller speech, the real server, Pipecat's unmodified
OpenAI speech-to-text, chat-completions and text-to-speech services against the offline
OpenAI server (:mod:`offline.openai_server`) over loopback.

What the offline server cannot do: recognise words. Its transcript of a caller turn
says how long the caller spoke; the scripted agent answers every turn the same way
whatever was said. Everything else is real: the audio, the VAD and smart-turn turns,
the HTTP requests, the streamed tool calls, the speech, the barge-in.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from booking.store import BookingStore
from offline.caller import CallerBehaviour, run_call
from offline.openai_server import GREETING_JA
from offline.realtime_server import GREETING
from tests.support import ACCOUNT_SID, AUDIO, TOKEN, free_port, running_server, speech_fraction, trimmed_wav

DIALLED_JA = "+15559870003"


@pytest.fixture(scope="module")
def cascade_server(tmp_path_factory):
    """A server whose deployment graph is the cascade, with a Japanese number."""
    tmp = tmp_path_factory.mktemp("cascade")
    events = tmp / "openai-requests.jsonl"
    db = f"sqlite+aiosqlite:///{tmp / 'booking.db'}"
    numbers = json.dumps({DIALLED_JA: {"graph": "cascade", "language": "ja"}})
    with running_server(
        tmp, GRAPH="cascade", NUMBER_GRAPHS=numbers, DATABASE_URL=db, LOCAL_OPENAI_EVENT_LOG=str(events),
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
    ) as (url, log):
        yield url, db, events, log


@pytest.fixture(scope="module")
def realtime_server(tmp_path_factory):
    """A server whose deployment graph is the default (realtime).

    Its cascade ends turns after 0.6 s of silence (``CASCADE_TURN_DETECTION=local``),
    as the realtime barge-in tests do: smart-turn may judge a turn complete in a short
    pause inside one of the caller's utterances and start the reply while the caller
    goes on, which the simulated caller cannot tell from stale audio after a ``clear``.
    """
    tmp = tmp_path_factory.mktemp("realtime-default")
    events = tmp / "openai-requests.jsonl"
    with running_server(tmp, LOCAL_OPENAI_EVENT_LOG=str(events), CASCADE_TURN_DETECTION="local") as (url, log):
        yield url, events, log


async def _record(url: str, call_sid: str) -> dict:
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(30):  # the call's last writes land as it is torn down
            record = (await client.get(f"/api/calls/{call_sid}")).json()
            if record.get("ended_at"):
                return record
            await asyncio.sleep(0.1)
    return record


def _requests(events: Path, path: str) -> list[dict]:
    lines = events.read_text().splitlines() if events.exists() else []
    return [e for e in map(json.loads, lines) if e["path"] == path]


@pytest.mark.asyncio
async def test_a_cascade_call_books_a_hotel_by_voice(cascade_server):
    url, db_url, events, _ = cascade_server
    transcriptions_before = len(_requests(events, "/v1/audio/transcriptions"))
    result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=120)
    record = await _record(url, result.call_sid)

    # The caller heard the greeting, every turn was answered, the agent hung up after goodbye.
    assert result.parameters["graph"] == "cascade"  # the deployment's graph, in the TwiML
    assert result.greeting_ms is not None
    assert all(u["replied"] for u in result.utterances), result.summary()
    assert result.ended_by == "server" and record["end_reason"] == "agent_ended"
    assert record["provider"] == "cascade"
    greeting = record["turns"][0]
    assert greeting["role"] == "assistant" and greeting["text"] == GREETING
    assert greeting["interrupted"] is False and greeting["audio_played_ms"] >= 5000
    goodbye = record["turns"][-1]
    assert goodbye["role"] == "assistant" and "goodbye" in goodbye["text"].lower()

    # The caller's turns went to speech-to-text as audio and came back as text.
    users = [t for t in record["turns"] if t["role"] == "user"]
    assert users and all(t["text"].startswith("[caller spoke ") for t in users)
    transcriptions = _requests(events, "/v1/audio/transcriptions")[transcriptions_before:]
    assert transcriptions and all(t["bytes"] > 24000 * 2 * 0.2 for t in transcriptions)
    assert {t["language"] for t in transcriptions} == {"en"}

    # The streamed tool calls ran and their effects are real.
    calls = record["tool_calls"]
    assert [c["name"] for c in calls] == ["get_caller_context", "search_hotels", "create_booking", "end_call"]
    assert all(c["error"] is None for c in calls)
    reference = calls[2]["result"]["booking"]["reference"]
    store = BookingStore.from_url(db_url)
    try:
        booking = await store.get_booking(reference)
    finally:
        await store.close()
    assert booking is not None and booking.call_sid == result.call_sid
    spoken = " ".join(t["text"] for t in record["turns"] if t["role"] == "assistant")
    assert " ".join("dash" if c == "-" else c for c in reference) in spoken

    # The LLM was asked with the registry's tools, streaming; speech was asked as PCM.
    chats = [c for c in _requests(events, "/v1/chat/completions") if c["answer"] != GREETING_JA]
    assert chats and all(c["stream"] for c in chats)
    assert {"get_caller_context", "search_hotels", "create_booking", "end_call"} <= set(chats[-1]["tools"])
    assert any(m["role"] == "tool" for m in chats[-1]["messages"])
    speech = _requests(events, "/v1/audio/speech")
    assert speech and {s["response_format"] for s in speech} == {"pcm"}


@pytest.mark.asyncio
async def test_the_simulated_caller_can_ask_for_the_cascade_and_barge_in(realtime_server):
    url, events, _ = realtime_server
    result = await run_call(
        url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=120, graph="cascade",
        behaviour=CallerBehaviour(barge_in_after_ms=2000),
    )
    record = await _record(url, result.call_sid)
    assert record["provider"] == "cascade"  # the override won over the deployment's realtime

    # The caller talked over the greeting: Twilio was told to clear, nothing stale followed.
    first = result.utterances[0]
    assert first.get("barged_in")
    clear = next(c for c in result.clear_events if c["utterance"] == 0 and c["state"] == "speaking")
    assert clear["at"] > first["onset_at"]
    assert result.stale_media_after_clear == 0
    assert all(u["replied"] for u in result.utterances), result.summary()

    # The record knows what was heard of the greeting, and so does the LLM.
    greeting = record["turns"][0]
    assert greeting["role"] == "assistant" and greeting["interrupted"] is True
    assert abs(greeting["audio_played_ms"] - clear["reply_played_ms"]) <= 100
    assert greeting["generated_text"] == GREETING
    assert greeting["text"] and GREETING.startswith(greeting["text"]) and len(greeting["text"]) < len(GREETING)
    chats = _requests(events, "/v1/chat/completions")
    second = chats[1]["messages"]
    said = [m["content"] for m in second if m["role"] == "assistant"]
    assert said[0] == greeting["text"]  # the heard words, not the whole greeting
    assert chats[1]["answer"] == "get_caller_context"  # so the agent moved on, no second greeting


@pytest.mark.asyncio
async def test_a_dialled_number_picks_the_cascade_in_japanese(cascade_server, tmp_path):
    url, _, events, _ = cascade_server
    transcriptions_before = len(_requests(events, "/v1/audio/transcriptions"))
    wav = trimmed_wav(tmp_path, 2.5)  # one caller utterance
    result = await run_call(url, wav, auth_token=TOKEN, to_number=DIALLED_JA, max_call_s=40)
    record = await _record(url, result.call_sid)

    assert result.parameters["graph"] == "cascade" and result.parameters["agent_language"] == "ja"
    assert result.greeting_ms is not None
    assert record["turns"][0]["role"] == "assistant" and record["turns"][0]["text"] == GREETING_JA
    assert all(u["replied"] for u in result.utterances), result.summary()
    transcriptions = _requests(events, "/v1/audio/transcriptions")[transcriptions_before:]
    assert transcriptions and {t["language"] for t in transcriptions} == {"ja"}
    spoken = [s["input"] for s in _requests(events, "/v1/audio/speech")]
    assert any("グランドハーバーホテル" in text for text in spoken)


@pytest.mark.asyncio
async def test_a_call_asking_for_an_unknown_graph_is_refused_and_recorded(realtime_server, tmp_path):
    url, _, log = realtime_server
    wav = trimmed_wav(tmp_path, 2.5)
    result = await run_call(url, wav, auth_token=TOKEN, graph="no-such-graph", max_call_s=20, reply_timeout_s=5)
    record = await _record(url, result.call_sid)
    assert result.greeting_ms is None
    assert record["end_reason"] == "unknown_graph"
    assert "no graph 'no-such-graph'" in log.read_text()


@pytest.mark.asyncio
async def test_keys_the_caller_presses_reach_the_cascades_llm_and_the_record(realtime_server):
    url, events, _ = realtime_server
    result = await run_call(
        url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=60, graph="cascade",
        behaviour=CallerBehaviour(dtmf_after_greeting="42#"),
    )
    record = await _record(url, result.call_sid)
    assert result.dtmf_sent_at is not None and result.dtmf_answered_at is not None
    pressed = [t for t in record["turns"] if t["role"] == "user" and "pressed" in t["text"]]
    assert [t["text"] for t in pressed] == ["[caller pressed 4 2 #]"]
    # The LLM was asked with the keys in the conversation, and answered them.
    asked = [c for c in _requests(events, "/v1/chat/completions")
             if any("pressed these phone keys: 4 2 #" in str(m.get("content")) for m in c["messages"])]
    assert asked and asked[0]["answer"] == "get_caller_context"
    assert record["tool_calls"][0]["name"] == "get_caller_context"


@pytest.mark.asyncio
async def test_an_unreachable_cascade_provider_gets_a_spoken_apology_and_a_record(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with running_server(
        tmp_path, GRAPH="cascade", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=dead,
        AGENT_PROVIDER="openai",
    ) as (url, _):
        result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, reply_timeout_s=6, max_call_s=40)
        record = await _record(url, result.call_sid)
    assert result.greeting_ms is not None and speech_fraction(result.heard_pcm) > 0.2
    assert result.ended_by == "server"
    assert record["end_reason"] == "model_error"
    assert "sorry" in record["turns"][0]["text"]
