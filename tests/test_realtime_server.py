"""Tests for the offline OpenAI Realtime server (``offline/realtime_server.py``).

Every server event a test receives is validated with Pipecat's own
``parse_server_event``, so a shape Pipecat's client would reject fails here.
Caller audio is real speech: ``/work/shared/audio/jfk_8k.wav`` upsampled to 24 kHz.
"""

import asyncio
import base64
import json
import re
import wave

import numpy as np
import pytest
import pytest_asyncio
import soxr
from pipecat.services.openai.realtime.events import parse_server_event
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from offline.realtime_server import GREETING, SCRIPT, OfflineRealtimeServer, scripted_reply
from offline.tts import synthesize

SPEECH_WAV = "/work/shared/audio/jfk_8k.wav"
RATE = 24000
BYTES_PER_SECOND = RATE * 2
CALLER_SPOKE = re.compile(r"^\[caller spoke (\d+\.\d) s\]$")


def jfk_24k(seconds: float) -> bytes:
    """The first ``seconds`` of the JFK recording as PCM16 at 24 kHz."""
    with wave.open(SPEECH_WAV) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        samples = np.frombuffer(wav.readframes(int(8000 * seconds)), dtype="<i2")
    return soxr.resample(samples, 8000, RATE, quality="HQ").astype("<i2").tobytes()


def line_noise(seconds: float) -> bytes:
    """Quiet Gaussian noise (about -60 dBFS) standing in for a silent phone line."""
    noise = np.random.default_rng(7).normal(0, 30, int(RATE * seconds))
    return noise.astype("<i2").tobytes()


class Client:
    """A raw Realtime client that validates everything the server sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, event_type: str, **fields) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def append(self, pcm: bytes, chunk_ms: int = 20, pause: float = 0.0) -> None:
        step = BYTES_PER_SECOND * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + step]).decode())
            await asyncio.sleep(pause)

    async def next(self, timeout: float = 10.0) -> dict:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        parsed = parse_server_event(message)
        assert parsed is not None, f"Pipecat has no model for {message[:200]}"
        return json.loads(message)

    async def until(self, event_type: str, timeout: float = 15.0) -> list[dict]:
        """Collect events up to and including the first of ``event_type``."""
        events = []
        while not events or events[-1]["type"] != event_type:
            events.append(await self.next(timeout))
        return events


def of_type(events: list[dict], event_type: str) -> list[dict]:
    return [e for e in events if e["type"] == event_type]


def audio_bytes(events: list[dict]) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in of_type(events, "response.output_audio.delta"))


def transcript(events: list[dict]) -> str:
    return "".join(e["delta"] for e in of_type(events, "response.output_audio_transcript.delta"))


@pytest_asyncio.fixture
async def server(tmp_path):
    srv = OfflineRealtimeServer(event_log=str(tmp_path / "events.jsonl"))
    await srv.start()
    yield srv
    await srv.stop()


async def open_call(server: OfflineRealtimeServer, turn_detection) -> Client:
    ws = await connect(server.url + "?model=gpt-realtime")
    client = Client(ws)
    created = await client.next()
    assert created["type"] == "session.created"
    assert created["session"]["model"] == "gpt-realtime"
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    await client.send(
        "session.update",
        session={
            "type": "realtime",
            "instructions": "Be a hotel clerk.",
            "audio": {"input": {"turn_detection": turn_detection}},
        },
    )
    updated = await client.next()
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "Be a hotel clerk."
    assert updated["session"]["audio"]["input"]["turn_detection"] == turn_detection
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": RATE}
    return client


def test_every_line_is_a_sentence_of_at_least_three_seconds():
    for line in (GREETING, *SCRIPT):
        assert line.endswith((".", "?")) and line[0].isupper()
        assert len(synthesize(line)) >= 3 * BYTES_PER_SECOND, line
    replies = [scripted_reply(i) for i in range(len(SCRIPT) + 4)]
    assert replies[: len(SCRIPT)] == list(SCRIPT)
    assert replies[len(SCRIPT) :] == [SCRIPT[-2], SCRIPT[-1]] * 2


@pytest.mark.asyncio
async def test_manual_turns_greeting_commit_cancel_truncate(server, tmp_path):
    client = await open_call(server, turn_detection=None)

    # Greeting: full event sequence, transcript == spoken text, >= 3 s of audio.
    await client.send("response.create", response={"output_modalities": ["audio"]})
    greeting = await client.until("response.done")
    types = [e["type"] for e in greeting]
    assert types[0] == "response.created"
    for before, after in [
        ("conversation.item.added", "response.output_audio.delta"),
        ("response.output_audio.delta", "response.output_audio.done"),
        ("response.output_audio.done", "response.output_audio_transcript.done"),
        ("response.output_audio_transcript.done", "conversation.item.done"),
    ]:
        last_before = max(i for i, t in enumerate(types) if t == before)
        assert last_before < min(i for i, t in enumerate(types) if t == after)
    assert transcript(greeting) == GREETING
    assert of_type(greeting, "response.output_audio_transcript.done")[0]["transcript"] == GREETING
    assert audio_bytes(greeting) >= 3 * BYTES_PER_SECOND
    assert audio_bytes(greeting) == len(synthesize(GREETING))
    done = greeting[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["role"] == "assistant"
    assert done["output"][0]["content"][0]["transcript"] == GREETING

    # Caller turn: 1.5 s of real speech, committed by the client (local VAD mode).
    await client.append(jfk_24k(1.5))
    await client.send("input_audio_buffer.commit")
    turn = await client.until("conversation.item.input_audio_transcription.completed")
    assert [e["type"] for e in turn] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert turn[1]["item"]["role"] == "user"
    spoke = CALLER_SPOKE.match(turn[-1]["transcript"])
    assert spoke, turn[-1]["transcript"]
    # Speech starts ~0.3 s into the file and has short dips: well under 1.5 s, well over 0.5 s.
    assert 0.6 <= float(spoke.group(1)) <= 1.3
    assert {"type": "input_audio_buffer.append", "bytes": 960} in server.received

    # An empty commit is fine: 0.0 s.
    await client.send("input_audio_buffer.commit")
    empty = await client.until("conversation.item.input_audio_transcription.completed")
    assert empty[-1]["transcript"] == "[caller spoke 0.0 s]"

    # Next reply follows the script; cancel it after its first audio.
    await client.send("response.create")
    start = await client.until("response.output_audio.delta")
    reply_item_id = start[-1]["item_id"]
    await client.send("response.cancel")
    rest = await client.until("response.done")
    assert rest[-1]["response"]["status"] == "cancelled"
    assert audio_bytes(start + rest) < len(synthesize(SCRIPT[0]))
    assert SCRIPT[0].startswith(transcript(start + rest))
    await client.send("input_audio_buffer.clear")
    after = await client.until("input_audio_buffer.cleared")
    assert not of_type(after, "response.output_audio.delta")

    # Nothing left to cancel: the one error code Pipecat ignores.
    await client.send("response.cancel")
    error = await client.next()
    assert error["type"] == "error" and error["error"]["code"] == "response_cancel_not_active"

    # Truncation is acknowledged and recorded, in memory and in the event log.
    await client.send("conversation.item.truncate", item_id=reply_item_id, content_index=0, audio_end_ms=420)
    truncated = await client.next()
    assert truncated["type"] == "conversation.item.truncated"
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (reply_item_id, 420)
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    for record in (server.received, logged):
        truncates = of_type(record, "conversation.item.truncate")
        assert [(t["item_id"], t["audio_end_ms"]) for t in truncates] == [(reply_item_id, 420)]

    # The script moves on after the cancelled line.
    await client.send("response.create")
    assert transcript(await client.until("response.done")) == SCRIPT[1]
    await client.ws.close()


@pytest.mark.asyncio
async def test_caller_audio_as_pcmu_is_heard_like_pcm(server):
    """A session whose input format is ``audio/pcmu`` takes 8 kHz mu-law, as a phone sends it."""
    import audioop  # the reference codec; deprecated in 3.11, still present

    client = await open_call(server, turn_detection=None)
    pcmu = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    await client.send("session.update", session=pcmu)
    updated = await client.next()
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    with wave.open(SPEECH_WAV) as wav:
        mulaw = audioop.lin2ulaw(wav.readframes(int(8000 * 1.5)), 2)
    for i in range(0, len(mulaw), 160):  # 20 ms frames of 160 bytes, as Twilio's
        await client.send("input_audio_buffer.append", audio=base64.b64encode(mulaw[i : i + 160]).decode())
    await client.send("input_audio_buffer.commit")
    turn = await client.until("conversation.item.input_audio_transcription.completed")
    spoke = CALLER_SPOKE.match(turn[-1]["transcript"])
    assert spoke, turn[-1]["transcript"]
    assert 0.6 <= float(spoke.group(1)) <= 1.3  # as the same speech sent as 24 kHz PCM
    assert {"type": "input_audio_buffer.append", "bytes": 160} in server.received


@pytest.mark.asyncio
async def test_server_vad_detects_turns_and_barge_in(server):
    vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
    client = await open_call(server, turn_detection=vad)

    # 1.5 s of speech then 1 s of line noise, in 20 ms chunks at about 4x real time.
    await client.append(jfk_24k(1.5) + line_noise(1.0), pause=0.005)
    events = await client.until("response.done", timeout=20)
    types = [e["type"] for e in events]
    expected = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_audio.delta",
        "response.done",
    ]
    assert all(t in types for t in expected), types
    assert [types.index(t) for t in expected] == sorted(types.index(t) for t in expected)
    started = of_type(events, "input_audio_buffer.speech_started")[0]
    stopped = of_type(events, "input_audio_buffer.speech_stopped")[0]
    assert 200 <= started["audio_start_ms"] <= 500  # JFK starts talking ~0.3 s in
    assert 1300 <= stopped["audio_end_ms"] <= 1700  # the clip ends mid-word at 1.5 s
    committed = of_type(events, "input_audio_buffer.committed")[0]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    caller = of_type(events, "conversation.item.input_audio_transcription.completed")[0]
    assert caller["item_id"] == committed["item_id"]
    assert float(CALLER_SPOKE.match(caller["transcript"]).group(1)) > 0.5
    # A caller turn came first, so the reply is the first script line, not the greeting.
    assert transcript(events) == SCRIPT[0]
    assert events[-1]["response"]["status"] == "completed"
    assert not of_type(server.received, "input_audio_buffer.commit")
    assert not of_type(server.received, "response.create")

    # Barge-in: another turn gets a reply; speech during that reply cancels it.
    await client.append(jfk_24k(4.0)[int(2.2 * BYTES_PER_SECOND) :] + line_noise(0.6))
    await client.until("response.output_audio.delta")
    await client.append(jfk_24k(1.0))
    events = await client.until("response.done")
    assert of_type(events, "input_audio_buffer.speech_started")
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
    await client.ws.close()


@pytest.mark.asyncio
async def test_calls_are_independent_and_disconnect_mid_reply_is_clean(server):
    first, second = await asyncio.gather(open_call(server, None), open_call(server, None))
    await first.send("response.create")
    await second.send("response.create")
    first_events, second_events = await asyncio.gather(
        first.until("response.done"), second.until("response.done")
    )
    assert transcript(first_events) == transcript(second_events) == GREETING

    # Leave in the middle of a reply; the other call keeps working.
    await first.send("response.create")
    await first.until("response.output_audio.delta")
    await first.ws.close()
    for _ in range(100):
        if not [t for t in asyncio.all_tasks() if t.get_name().startswith("offline-reply-")]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("a reply task outlived its connection")
    await second.send("response.create")
    assert transcript(await second.until("response.done")) == GREETING  # still no caller turn there

    # stop() in the middle of a reply closes the call and leaves no task behind.
    await second.send("response.create")
    await second.until("response.output_audio.delta")
    await asyncio.wait_for(server.stop(), 5)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("offline-reply-")]
    with pytest.raises(ConnectionClosed):
        while True:
            await second.next()


@pytest.mark.asyncio
@pytest.mark.parametrize("server_vad", [False, True], ids=["local-turns", "server-vad"])
async def test_pipecat_realtime_service_holds_a_call(server, server_vad):
    """Pipecat's unmodified OpenAIRealtimeLLMService, pointed at the server by base_url.

    With ``turn_detection=False`` (local turns) the service asks for the greeting;
    with server VAD, a caller turn of real 8 kHz phone audio then gets a reply.
    """
    from pipecat.frames.frames import (
        EndFrame,
        ErrorFrame,
        Frame,
        InputAudioRawFrame,
        LLMContextFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
        TTSTextFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.realtime.events import AudioConfiguration, AudioInput, SessionProperties
    from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
    from pipecat.workers.runner import WorkerRunner

    class Collector(FrameProcessor):
        """Collects what the service says, one entry per reply."""

        def __init__(self) -> None:
            super().__init__()
            self.audio = [bytearray()]
            self.text = [""]
            self.replies = asyncio.Queue()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                assert (frame.sample_rate, frame.num_channels) == (RATE, 1)
                self.audio[-1] += frame.audio
            elif isinstance(frame, TTSTextFrame):
                self.text[-1] += frame.text
            elif isinstance(frame, TTSStoppedFrame):
                self.replies.put_nowait((bytes(self.audio[-1]), self.text[-1]))
                self.audio.append(bytearray())
                self.text.append("")
            await self.push_frame(frame, direction)

    audio_input = AudioInput(turn_detection=None if server_vad else False)
    llm = OpenAIRealtimeLLMService(
        api_key="offline",
        base_url=server.url,
        settings=OpenAIRealtimeLLMService.Settings(
            system_instruction="You are the Grand Harbor Hotel front desk.",
            session_properties=SessionProperties(audio=AudioConfiguration(input=audio_input)),
        ),
    )
    collector = Collector()
    worker = PipelineWorker(Pipeline([llm, collector]), params=PipelineParams(), idle_timeout_secs=None)
    errors: list[Frame] = []
    transcripts: list[str] = []
    worker.set_reached_upstream_filter((ErrorFrame, TranscriptionFrame))

    @worker.event_handler("on_pipeline_error")
    async def on_pipeline_error(_worker, frame):
        errors.append(frame)

    @worker.event_handler("on_frame_reached_upstream")
    async def on_frame_reached_upstream(_worker, frame):
        if isinstance(frame, TranscriptionFrame):
            transcripts.append(frame.text)
        else:
            errors.append(frame)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await worker.queue_frame(LLMContextFrame(LLMContext()))
        audio, text = await asyncio.wait_for(collector.replies.get(), 20)
        assert text == GREETING
        assert len(audio) == len(synthesize(GREETING)) >= 3 * BYTES_PER_SECOND
        if server_vad:
            with wave.open(SPEECH_WAV) as wav:
                phone_audio = wav.readframes(int(8000 * 2.0)) + bytes(8000 * 2)  # speech, then 1 s silence
            for i in range(0, len(phone_audio), 320):  # 20 ms frames at 8 kHz
                await worker.queue_frame(InputAudioRawFrame(phone_audio[i : i + 320], 8000, 1))
                await asyncio.sleep(0.002)
            audio, text = await asyncio.wait_for(collector.replies.get(), 20)
            assert text == SCRIPT[0]
            assert len(audio) == len(synthesize(SCRIPT[0]))
            assert len(transcripts) == 1 and CALLER_SPOKE.match(transcripts[0]), transcripts
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(run, 20)

    assert not errors, errors
    updates = of_type(server.received, "session.update")
    events = [e for e in server.received if e["type"] != "connection.opened"]
    assert events[0]["type"] == "session.update"
    assert updates[-1]["session"]["instructions"] == "You are the Grand Harbor Hotel front desk."
    turn_detection = updates[-1]["session"].get("audio", {}).get("input", {}).get("turn_detection", "absent")
    assert turn_detection == ("absent" if server_vad else None)
    assert len(of_type(server.received, "response.create")) == 1  # server VAD started the second reply
    appended = sum(e["bytes"] for e in of_type(server.received, "input_audio_buffer.append"))
    # 3 s of 8 kHz audio, resampled to 24 kHz by Pipecat's streaming resampler (which holds a little back).
    assert 2.8 * BYTES_PER_SECOND <= appended <= 3 * BYTES_PER_SECOND if server_vad else appended == 0
