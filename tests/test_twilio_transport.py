"""The call's output transport: no audio of a cut-off reply reaches Twilio after its ``clear``;
the agent's audio runs a bounded lead ahead of Twilio's playout; a reply's first audio
does not wait behind its text, and marks keep their place around the audio.

Pipecat's output takes a chunk from its queue and writes it a few event-loop turns
apart (on Python 3.11 both steps run through ``asyncio.wait_for``, a new task each), so a
barge-in handled in between sent the ``clear`` first and the chunk of the cut-off reply
after it: the caller heard it. Here the interruption lands at each of the first 12 loop
turns after the reply's audio reaches the output; without the fix, 3 of them let a chunk
through. Only Twilio's side is faked (a WebSocket that records what it is sent).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from contextlib import asynccontextmanager

import numpy as np
import pytest
from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocketState

from processors.g711 import ulaw_decode
from processors.twilio_serializer import TwilioMediaSerializer
from processors.twilio_transport import PLAYOUT_LEAD_MS, TwilioOutputTransport, twilio_transport

STREAM_SID, CALL_SID = "MZ" + "1" * 32, "CA" + "1" * 32


class TwilioSide:
    """The far end of the media stream WebSocket: records every message sent to it."""

    client_state = WebSocketState.CONNECTED
    application_state = WebSocketState.CONNECTED
    headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.sent_at: list[float] = []  # time.monotonic() of each message, s
        self._closed = asyncio.Event()

    async def receive(self) -> dict:
        await self._closed.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.sent_at.append(time.monotonic())

    async def send_bytes(self, data: bytes) -> None:
        raise AssertionError("Twilio Media Streams messages are text")

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.client_state = self.application_state = WebSocketState.DISCONNECTED
        self._closed.set()


class InterruptAfterTurns(FrameProcessor):
    """Interrupts the agent ``turns`` event-loop turns after its first audio passed by."""

    def __init__(self, turns: int) -> None:
        super().__init__(enable_direct_mode=True)  # inline: the count starts as the audio goes on
        self.turns = turns
        self.interrupted = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and not self.interrupted.is_set():
            self.create_task(self._interrupt())

    async def _interrupt(self) -> None:
        for _ in range(self.turns):
            await asyncio.sleep(0)
        self.interrupted.set()
        await self.push_frame(InterruptionFrame())


@asynccontextmanager
async def call_output(twilio: TwilioSide, *processors: FrameProcessor):
    """Run the call's transport (input, ``processors``, output) against ``twilio``; yield its worker."""
    transport = twilio_transport(twilio, TwilioMediaSerializer(STREAM_SID, CALL_SID))
    assert isinstance(transport.output(), TwilioOutputTransport)
    worker = PipelineWorker(
        Pipeline([transport.input(), *processors, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(0.2)
        yield worker
    finally:
        await worker.cancel()
        await twilio.close()
        await asyncio.wait_for(run, 5)


def _level(media: dict) -> float:
    pcm = np.frombuffer(ulaw_decode(base64.b64decode(media["media"]["payload"])), dtype="<i2")
    return float(np.abs(pcm.astype(np.int32)).mean())


@pytest.mark.asyncio
@pytest.mark.parametrize("turns", range(12))
async def test_no_chunk_of_a_cut_off_reply_goes_out_after_the_clear(turns):
    """Whatever the loop turn at which the barge-in lands, Twilio gets nothing of the cut-off reply after its clear."""
    twilio = TwilioSide()
    cutter = InterruptAfterTurns(turns)
    async with call_output(twilio, cutter) as worker:
        cut_off = np.full(8 * 200, 2000, dtype="<i2").tobytes()  # 200 ms at 8 kHz, quiet
        await worker.queue_frame(TTSAudioRawFrame(cut_off, 8000, 1))
        await asyncio.sleep(0.5)
        assert cutter.interrupted.is_set()
        next_reply = np.full(8 * 100, 12000, dtype="<i2").tobytes()  # 100 ms, loud
        await worker.queue_frame(TTSAudioRawFrame(next_reply, 8000, 1))
        await asyncio.sleep(0.5)

    events = [m["event"] for m in twilio.sent]
    assert "clear" in events, events
    after_clear = [m for m in twilio.sent[events.index("clear") + 1:] if m["event"] == "media"]
    levels = [round(_level(m)) for m in after_clear]
    # Only the next reply's five 20 ms chunks: nothing of the reply that was cut off.
    assert len(after_clear) == 5 and min(levels) > 8000, levels


@pytest.mark.asyncio
async def test_agent_audio_runs_a_bounded_lead_ahead_of_playout():
    """A reply's first 200 ms go to Twilio at once (its buffer absorbs our hiccups); the rest at real time."""
    twilio = TwilioSide()
    async with call_output(twilio) as worker:
        reply = np.full(8 * 1000, 3000, dtype="<i2").tobytes()  # 1 s at 8 kHz: fifty 20 ms chunks
        await worker.queue_frame(TTSAudioRawFrame(reply, 8000, 1))
        deadline = time.monotonic() + 5
        while sum(m["event"] == "media" for m in twilio.sent) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    sent_at = [t for m, t in zip(twilio.sent, twilio.sent_at) if m["event"] == "media"]
    assert len(sent_at) == 50
    lead_chunks = PLAYOUT_LEAD_MS // 20
    # Paced at real time from the first chunk, the lead's last chunk would go out 180 ms after it.
    assert sent_at[lead_chunks - 1] - sent_at[0] < 0.1
    # Not dumped either: the last chunk waits until Twilio has played all but the lead.
    assert sent_at[-1] - sent_at[0] >= (1000 - PLAYOUT_LEAD_MS - 60) / 1000


def _mark(name: str) -> OutputTransportMessageFrame:
    message = {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": name}}
    return OutputTransportMessageFrame(message=message)


def _reply_start() -> list[Frame]:
    """What the speech-to-speech service pushes as a reply begins, before its first audio."""
    return [LLMFullResponseStartFrame(), LLMTextFrame("Hello."), TTSTextFrame("Hello.", text_type="sentence"),
            TTSStartedFrame()]


async def _turns_to_first_media(frames: list[Frame]) -> int:
    """Event-loop turns from queuing ``frames`` on the call's output to the first ``media`` at Twilio."""
    twilio = TwilioSide()
    async with call_output(twilio) as worker:
        for frame in frames:
            await worker.queue_frame(frame)
        turns = 0
        while not any(m["event"] == "media" for m in twilio.sent) and turns < 1000:
            await asyncio.sleep(0)  # one turn of the loop
            turns += 1
        return turns


@pytest.mark.asyncio
async def test_a_replys_first_audio_does_not_wait_behind_its_start_and_transcript():
    """A reply's start and transcript, just before its audio, cost that audio no loop turns of waiting."""
    audio = TTSAudioRawFrame(np.full(8 * 60, 3000, dtype="<i2").tobytes(), 8000, 1)
    alone = await _turns_to_first_media([audio])
    audio = TTSAudioRawFrame(np.full(8 * 60, 3000, dtype="<i2").tobytes(), 8000, 1)
    after_text = await _turns_to_first_media([*_reply_start(), audio])
    assert after_text - alone <= 2, (alone, after_text)


@pytest.mark.asyncio
async def test_marks_and_text_keep_their_place_around_the_audio():
    """Each mark reaches Twilio after exactly the audio queued before it (the played position)."""
    twilio = TwilioSide()
    chunk = np.full(8 * 60, 3000, dtype="<i2").tobytes()  # 60 ms: three 20 ms media messages
    frames = [*_reply_start(), _mark("a"), TTSAudioRawFrame(chunk, 8000, 1), _mark("b"),
              TTSAudioRawFrame(chunk, 8000, 1), _mark("c"), TTSStoppedFrame(), _mark("d")]
    async with call_output(twilio) as worker:
        for frame in frames:
            await worker.queue_frame(frame)
        deadline = time.monotonic() + 5
        while len(twilio.sent) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)

    sent = [m["mark"]["name"] if m["event"] == "mark" else m["event"] for m in twilio.sent]
    assert sent == ["a", "media", "media", "media", "b", "media", "media", "media", "c", "d"], sent
