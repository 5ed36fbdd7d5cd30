"""The offline OpenAI server answers the official ``openai`` SDK the way OpenAI does."""

from __future__ import annotations

import io
import json
import wave

import httpx
import numpy as np
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from offline.booking_script import GOODBYE
from offline.caller import load_wav_8k
from offline.openai_server import GREETING_JA, OfflineOpenAIServer, next_reply
from offline.realtime_server import GREETING, SCRIPT
from tests.support import AUDIO
from tools.booking_tools import booking_registry

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_caller_context", "search_hotels", "create_booking", "end_call")
]


@pytest_asyncio.fixture
async def server():
    running = OfflineOpenAIServer()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def _wav(pcm: np.ndarray, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()


@pytest.mark.asyncio
async def test_a_transcription_says_how_long_real_speech_lasted(server):
    client = AsyncOpenAI(api_key="offline", base_url=server.url)
    speech = load_wav_8k(AUDIO / "jfk_8k.wav")[: 8000 * 2]  # "And so, my fellow Americans"
    result = await client.audio.transcriptions.create(
        file=("audio.wav", _wav(speech), "audio/wav"), model="gpt-4o-transcribe", language="en"
    )
    seconds = float(result.text.removeprefix("[caller spoke ").removesuffix(" s]"))
    assert 1.0 <= seconds <= 2.0
    silence = await client.audio.transcriptions.create(
        file=("audio.wav", _wav(np.zeros(8000)), "audio/wav"), model="gpt-4o-transcribe"
    )
    assert silence.text == "[caller spoke 0.0 s]"
    assert server.received[0] == {"path": "/v1/audio/transcriptions", "bytes": 2 * 24000 * 2,
                                  "language": "en", "model": "gpt-4o-transcribe"}


@pytest.mark.asyncio
async def test_chat_streams_the_greeting_then_a_tool_call_the_sdk_can_read(server):
    client = AsyncOpenAI(api_key="offline", base_url=server.url)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet the caller."}]
    stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=messages, tools=TOOLS, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == GREETING

    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "[caller spoke 2.0 s]"}]
    stream = await client.chat.completions.create(model="gpt-4.1-mini", messages=messages, tools=TOOLS, stream=True)
    chunks = [c async for c in stream]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_caller_context" and calls[0].id.startswith("call_")
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_script_follows_tool_results_in_the_messages():
    history = [{"role": "user", "content": "Greet."}, {"role": "assistant", "content": GREETING},
               {"role": "user", "content": "[caller spoke 2.0 s]"}]
    names = {"get_caller_context", "search_hotels", "create_booking", "end_call"}
    for step, tool in enumerate(["get_caller_context", "search_hotels", "create_booking", "end_call"]):
        action = next_reply(history, names)
        assert action.name == tool, step
        call_id = f"call_{step}"
        result = {"customer": {"name": "Alex"}} if step == 0 else {"hotels": [{"hotel_id": 7, "name": "Sol"}]}
        if step == 2:
            result = {"booking": {"reference": "GH-1"}}
        history += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": tool, "arguments": json.dumps(action.arguments)}}]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}]
        said = next_reply(history, names).text
        if step == 2:
            assert action.arguments["hotel_id"] == 7 and action.arguments["guest_name"] == "Alex"
            assert "G H dash 1" in said
        if step == 3:
            assert said == GOODBYE
        history += [{"role": "assistant", "content": said}, {"role": "user", "content": "[caller spoke 1.0 s]"}]
    # Without the booking tools: the plain script, in order.
    plain = [{"role": "user", "content": "Greet."}, {"role": "assistant", "content": GREETING},
             {"role": "user", "content": "hi"}]
    assert next_reply(plain, set()).text == SCRIPT[0]
    japanese = [{"role": "system", "content": "Always answer in Japanese."}, {"role": "user", "content": "Greet."}]
    assert next_reply(japanese, names).text == GREETING_JA


@pytest.mark.asyncio
async def test_speech_is_24khz_pcm_of_the_words(server):
    client = AsyncOpenAI(api_key="offline", base_url=server.url)
    async with client.audio.speech.with_streaming_response.create(
        input="Your room is ready.", model="gpt-4o-mini-tts", voice="alloy", response_format="pcm"
    ) as response:
        pcm = b"".join([chunk async for chunk in response.iter_bytes()])
    seconds = len(pcm) / (2 * 24000)
    assert 0.8 < seconds < 3.0
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 3000  # speech, not silence
    japanese = await client.audio.speech.create(
        input=GREETING_JA, model="gpt-4o-mini-tts", voice="alloy", response_format="wav"
    )
    with wave.open(io.BytesIO(japanese.content)) as wav:
        assert wav.getframerate() == 24000 and wav.getnframes() > 24000


@pytest.mark.asyncio
async def test_bad_requests_get_openai_errors_and_the_server_stays_up(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        bad_audio = await http.post("/audio/transcriptions", files={"file": ("a.wav", b"not a wav")})
        no_messages = await http.post("/chat/completions", json={"model": "x"})
        not_streamed = await http.post("/chat/completions", json={"messages": [], "stream": False})
        mp3 = await http.post("/audio/speech", json={"input": "hi", "response_format": "mp3"})
        for response in (bad_audio, no_messages, not_streamed, mp3):
            assert response.status_code == 400
            assert response.json()["error"]["type"] == "invalid_request_error"
        ok = await http.post("/audio/speech", json={"input": "hi", "response_format": "pcm"})
        assert ok.status_code == 200 and len(ok.content) > 1000


def test_the_registry_declares_the_tools_the_script_needs():
    names = {tool.name for tool in booking_registry().tools_schema().standard_tools}
    assert {"get_caller_context", "search_hotels", "create_booking", "end_call"} <= names
