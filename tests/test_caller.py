"""Tests for the simulated Twilio caller (``offline/caller.py``).

The caller is run against a small fake Twilio-facing agent server (FastAPI + uvicorn
in a thread, on a free loopback port). The fake checks the webhook signature with the
Twilio SDK, answers with TwiML built by the SDK, records every Media Stream message
and answers each caller utterance with a fixed tone 300 ms after the caller goes
quiet, followed by a mark. One variant interrupts its reply with ``clear``.

Message shapes: https://www.twilio.com/docs/voice/media-streams/websocket-messages
Real speech comes from ``/work/shared/audio`` (never copied into the repo).
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading
import time
import wave
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from offline import caller
from offline.caller import (
    PlayoutBuffer,
    TwimlError,
    WebhookError,
    frame_dbfs,
    load_wav_8k,
    parse_twiml,
    run_call,
    split_utterances,
)
from processors.g711 import ULAW_SILENCE, ulaw_decode, ulaw_encode

JFK_WAV = Path("/work/shared/audio/jfk_8k.wav")
TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC_BASE = "https://agent.example.test"
STREAM_PARAMS = {"tenant": "acme", "lang": "en-US"}
GREETING_S = 0.6  # s of tone the fake agent greets with
REPLY_S = 1.0  # s of tone it answers each utterance with
REPLY_AFTER_S = 0.3  # s of caller silence before it answers
CALLER_QUIET_DBFS = -60.0  # the fake's "caller is talking" threshold

pytestmark = pytest.mark.skipif(not JFK_WAV.exists(), reason="shared speech samples missing")


# ----------------------------------------------------------------------- helpers


def tone_ulaw(seconds: float, freq_hz: float = 440.0, level_dbfs: float = -12.0) -> bytes:
    """A sine tone as 8000 Hz mu-law."""
    t = np.arange(int(seconds * 8000)) / 8000.0
    amplitude = 32767 * 10 ** (level_dbfs / 20) * np.sqrt(2)
    pcm = (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")
    return ulaw_encode(pcm.tobytes())


def voiced_seconds(pcm16: bytes) -> float:
    """Seconds of 20 ms frames above -50 dBFS in 8000 Hz PCM16."""
    samples = np.frombuffer(pcm16, dtype="<i2")
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    return sum(frame_dbfs(f) > -50.0 for f in frames) * 0.02


def trimmed_wav(tmp_path: Path, seconds: float) -> str:
    """The first ``seconds`` of the JFK sample, written to a temp WAV."""
    pcm = load_wav_8k(JFK_WAV)[: int(seconds * 8000)]
    path = tmp_path / f"jfk_first_{seconds:g}s.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(pcm.tobytes())
    return str(path)


class FakeAgent:
    """A minimal Twilio-facing agent server, recording what the caller sends.

    Modes: ``"reply"`` (greet, answer every utterance), ``"clear"`` (like reply, but
    the first answer is 4 s long with two marks and is cut by ``clear`` after
    0.5 s), ``"silent"`` (never sends audio), ``"hangup"`` (greets, then closes the
    socket when the caller's first utterance ends).
    """

    def __init__(self, mode: str = "reply") -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stream_url = f"ws://127.0.0.1:{self.port}/twilio/media-stream"
        self.webhook_params: dict[str, str] = {}
        self.webhook_signature_ok: bool | None = None
        self.ws_signature_ok: bool | None = None
        self.messages: list[tuple[float, dict]] = []  # (monotonic s, message) from the caller
        self.marks_sent: dict[str, tuple[float, float]] = {}  # name -> (sent at, audio s queued)
        self.marks_back: dict[str, float] = {}  # name -> echoed at
        self.audio_sent_s = 0.0
        self.clear_sent_at: float | None = None
        self.media_sent_after_clear = 0
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> FakeAgent:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fake agent did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def events(self, name: str) -> list[dict]:
        return [m for _, m in self.messages if m.get("event") == name]

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/twilio/incoming-call")
        async def incoming_call(request: Request) -> Response:
            # Parsed by hand: python-multipart (Starlette's form parser) is not installed.
            assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            signature = request.headers.get("X-Twilio-Signature", "")
            self.webhook_params = form
            self.webhook_signature_ok = RequestValidator(TOKEN).validate(
                PUBLIC_BASE + "/twilio/incoming-call", form, signature
            )
            if not self.webhook_signature_ok:
                return Response("bad signature", status_code=403)
            stream = Stream(url=self.stream_url)
            for name, value in STREAM_PARAMS.items():
                stream.parameter(name=name, value=value)
            connect = Connect()
            connect.append(stream)
            twiml = VoiceResponse()
            twiml.append(connect)
            return Response(str(twiml), media_type="application/xml")

        @app.get("/api/calls/{call_sid}", response_model=None)
        async def call_record(call_sid: str) -> Response | dict:
            if call_sid != self.webhook_params.get("CallSid"):
                return Response(status_code=404)
            return {"turns": [{"role": "assistant", "text": "Hello from the fake agent",
                               "started_at": 0.0, "ended_at": GREETING_S}]}

        @app.websocket("/twilio/media-stream")
        async def media_stream(ws: WebSocket) -> None:
            self.ws_signature_ok = RequestValidator(TOKEN).validate(
                self.stream_url, {}, ws.headers.get("x-twilio-signature", "")
            )
            await ws.accept()
            try:
                await self._converse(ws)
            except WebSocketDisconnect:
                pass

        return app

    async def _play(self, ws: WebSocket, stream_sid: str, audio: bytes, mark: str) -> None:
        """Send audio at once in 50 ms chunks (like a fast TTS), then a mark."""
        for i in range(0, len(audio), 400):
            chunk = base64.b64encode(audio[i:i + 400]).decode()
            await ws.send_json(
                {"event": "media", "streamSid": stream_sid, "media": {"payload": chunk}}
            )
            if self.clear_sent_at is not None:
                self.media_sent_after_clear += 1
        self.audio_sent_s += len(audio) / 8000
        await ws.send_json({"event": "mark", "streamSid": stream_sid, "mark": {"name": mark}})
        self.marks_sent[mark] = (time.monotonic(), len(audio) / 8000)

    async def _converse(self, ws: WebSocket) -> None:
        stream_sid = ""
        talking, quiet_frames, answered = False, 0, 0
        clear_due: float | None = None
        while True:
            message = await ws.receive_json()
            now = time.monotonic()
            self.messages.append((now, message))
            event = message["event"]
            if event == "start":
                stream_sid = message["streamSid"]
                if self.mode != "silent":
                    await self._play(ws, stream_sid, tone_ulaw(GREETING_S), "greeting")
            elif event == "mark":
                self.marks_back[message["mark"]["name"]] = now
            elif event == "stop":
                return
            elif event == "media":
                if clear_due is not None and now >= clear_due:
                    await ws.send_json({"event": "clear", "streamSid": stream_sid})
                    self.clear_sent_at, clear_due = now, None
                ulaw = base64.b64decode(message["media"]["payload"])
                pcm = np.frombuffer(ulaw_decode(ulaw), "<i2")
                if frame_dbfs(pcm) > CALLER_QUIET_DBFS:
                    talking, quiet_frames = True, 0
                    continue
                quiet_frames += 1
                if not talking or quiet_frames < REPLY_AFTER_S / 0.02 or self.mode == "silent":
                    continue
                talking = False
                answered += 1
                if self.mode == "hangup":
                    await ws.close()
                    return
                if self.mode == "clear" and answered == 1:
                    await self._play(ws, stream_sid, tone_ulaw(3.0, 330.0), "long-a")
                    await self._play(ws, stream_sid, tone_ulaw(1.0, 550.0), "long-b")
                    clear_due = now + 0.5
                else:
                    await self._play(ws, stream_sid, tone_ulaw(REPLY_S), f"reply-{answered}")


# ------------------------------------------------------------------- unit tests


def test_split_utterances_on_jfk() -> None:
    pcm = load_wav_8k(JFK_WAV)
    spans = split_utterances(pcm)
    assert len(spans) >= 3
    for (start, end), (next_start, _) in zip(spans, spans[1:]):
        assert next_start > end  # ordered, not overlapping
    assert all(end - start >= 0.4 * 8000 for start, end in spans)
    # A longer gap requirement can only give fewer utterances.
    assert len(split_utterances(pcm, min_gap_ms=1500)) < len(spans)


def test_playout_buffer_marks_follow_their_audio() -> None:
    buffer = PlayoutBuffer()
    buffer.push_mark("before-audio")
    buffer.push_audio(tone_ulaw(0.05))  # 400 bytes
    buffer.push_mark("a")
    buffer.push_audio(tone_ulaw(0.02))  # 160 bytes
    buffer.push_mark("b")
    assert buffer.due_marks() == ["before-audio"]
    played = []
    for _ in range(5):
        played.append((buffer.due_marks(), buffer.pop_frame()[1]))
    # 560 bytes play as 160+160+160+80; "a" is due once its 400 bytes have played.
    assert played == [([], 160), ([], 160), ([], 160), (["a"], 80), (["b"], 0)]
    assert not buffer.has_voiced_pending


def test_playout_buffer_clear_drops_audio_and_returns_marks() -> None:
    buffer = PlayoutBuffer()
    buffer.push_audio(tone_ulaw(1.0))
    buffer.push_mark("x")
    buffer.push_audio(tone_ulaw(1.0))
    buffer.push_mark("y")
    buffer.pop_frame()
    assert buffer.has_voiced_pending
    assert buffer.clear() == ["x", "y"]
    assert buffer.queued_bytes == 0 and buffer.dropped_bytes == 16000 - 160
    assert not buffer.has_voiced_pending
    frame, audio_bytes = buffer.pop_frame()
    assert audio_bytes == 0 and frame == bytes([ULAW_SILENCE]) * 160
    assert buffer.due_marks() == []


def test_parse_twiml_requires_connect_stream() -> None:
    with pytest.raises(TwimlError, match="no <Connect><Stream>"):
        parse_twiml("<Response><Say>Hello</Say></Response>")
    with pytest.raises(TwimlError, match="one-way"):
        parse_twiml('<Response><Start><Stream url="wss://x/y"/></Start></Response>')
    with pytest.raises(TwimlError, match="not valid XML"):
        parse_twiml("Hello")


# ------------------------------------------------------------- calls over the wire


@pytest.fixture(scope="module")
def jfk_call(tmp_path_factory: pytest.TempPathFactory):
    """One call with the whole JFK sample against the replying fake agent."""
    out = tmp_path_factory.mktemp("heard") / "heard.wav"
    with FakeAgent("reply") as fake:
        result = asyncio.run(
            run_call(fake.url, str(JFK_WAV), auth_token=TOKEN, public_base_url=PUBLIC_BASE,
                     out_wav=str(out), max_call_s=60.0)
        )
    return fake, result, out


def test_webhook_is_signed_and_complete(jfk_call) -> None:
    fake, result, _ = jfk_call
    assert fake.webhook_signature_ok is True
    assert fake.ws_signature_ok is True
    params = fake.webhook_params
    assert re.fullmatch(r"CA[0-9a-f]{32}", params["CallSid"])
    assert params["CallSid"] == result.call_sid
    assert re.fullmatch(r"AC[0-9a-f]{32}", params["AccountSid"])
    assert params["CallStatus"] == "ringing" and params["Direction"] == "inbound"
    assert params["ApiVersion"] == "2010-04-01"
    assert params["From"] == params["Caller"] == "+15551230001"
    assert params["To"] == params["Called"] == "+15559870002"


def test_start_carries_twiml_parameters(jfk_call) -> None:
    fake, result, _ = jfk_call
    first, second = fake.messages[0][1], fake.messages[1][1]
    assert first == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert second["event"] == "start" and second["sequenceNumber"] == "1"
    start = second["start"]
    assert start["customParameters"] == STREAM_PARAMS == result.parameters
    assert start["callSid"] == result.call_sid
    assert start["accountSid"] == fake.webhook_params["AccountSid"]
    assert re.fullmatch(r"MZ[0-9a-f]{32}", second["streamSid"])
    assert start["streamSid"] == second["streamSid"] == result.stream_sid
    assert start["tracks"] == ["inbound"]
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    stop = fake.events("stop")
    assert len(stop) == 1 and fake.messages[-1][1] is stop[0]
    assert stop[0]["stop"] == {"accountSid": start["accountSid"], "callSid": result.call_sid}


def test_media_is_160_bytes_every_20_ms(jfk_call) -> None:
    fake, result, _ = jfk_call
    media = [(t, m) for t, m in fake.messages if m["event"] == "media"]
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for _, m in media)
    assert all(m["media"]["track"] == "inbound" for _, m in media)
    assert [int(m["media"]["chunk"]) for _, m in media] == list(range(1, len(media) + 1))
    assert [int(m["media"]["timestamp"]) for _, m in media] == [20 * i for i in range(len(media))]
    sequence = [int(m["sequenceNumber"]) for _, m in fake.messages[1:]]
    assert sequence == list(range(1, len(sequence) + 1))
    # Real time: the number of frames matches the wall-clock span of the call.
    span_s = media[-1][0] - media[0][0]
    assert span_s > 10.0
    assert abs((len(media) - 1) * 0.02 - span_s) < 0.03 * span_s
    # Silence is sent between utterances, not nothing.
    silence = base64.b64encode(bytes([0xFF]) * 160).decode()
    assert sum(m["media"]["payload"] == silence for _, m in media) > 50


def test_every_jfk_utterance_is_answered(jfk_call) -> None:
    _, result, _ = jfk_call
    assert len(result.utterances) >= 3
    assert result.all_answered, result.summary()
    assert result.greeting_ms is not None and 0 <= result.greeting_ms < 500
    for utt in result.utterances:
        # The fake answers 300 ms after the caller's audio turns to digital silence.
        assert 250 <= utt["reply_delay_ms"] <= 1000, result.summary()
        assert utt["reply_at"] > utt["ended_at"] > utt["sent_at"]
    # The caller waits for the greeting to finish before talking, and for each reply.
    greeting_end = result.agent_segments[0][1]
    assert result.utterances[0]["sent_at"] >= greeting_end + 0.6
    for utt, nxt in zip(result.utterances, result.utterances[1:]):
        assert nxt["sent_at"] >= utt["reply_at"] + REPLY_S + 0.6
    assert len(result.agent_segments) == 1 + len(result.utterances)
    assert "Utterances answered" in result.summary()


def test_marks_are_echoed_after_their_audio_played(jfk_call) -> None:
    fake, result, _ = jfk_call
    names = ["greeting"] + [f"reply-{i}" for i in range(1, len(result.utterances) + 1)]
    assert result.marks_echoed == names
    assert result.marks_received == len(names)
    assert [m["mark"]["name"] for m in fake.events("mark")] == names
    for mark in fake.events("mark"):
        assert mark["streamSid"] == result.stream_sid and mark["sequenceNumber"]
    for name in names:
        sent_at, audio_s = fake.marks_sent[name]
        assert fake.marks_back[name] - sent_at >= audio_s - 0.05
    assert result.clears == 0 and result.media_after_clear == 0


def test_heard_audio_is_the_whole_call(jfk_call) -> None:
    fake, result, out = jfk_call
    with wave.open(str(out), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.readframes(wav.getnframes()) == result.heard_pcm
    heard_s = len(result.heard_pcm) / 16000
    assert abs(heard_s - result.duration_s) < 0.1
    assert voiced_seconds(result.heard_pcm) == pytest.approx(fake.audio_sent_s, abs=0.1)


@pytest.fixture(scope="module")
def clear_call(tmp_path_factory: pytest.TempPathFactory):
    """A call with the first 5 s of JFK; the fake cuts its first answer with clear."""
    wav = trimmed_wav(tmp_path_factory.mktemp("wav"), 5.0)
    with FakeAgent("clear") as fake:
        result = asyncio.run(run_call(fake.url, wav, auth_token=TOKEN, public_base_url=PUBLIC_BASE,
                                      max_call_s=40.0))
    return fake, result


def test_clear_echoes_pending_marks_at_once(clear_call) -> None:
    fake, result = clear_call
    assert result.clears == 1 and fake.clear_sent_at is not None
    for name in ("long-a", "long-b"):
        assert name in result.marks_echoed
        # Echoed right after the clear, not after their 3 s / 4 s of audio.
        assert fake.marks_back[name] - fake.clear_sent_at < 0.2
    assert result.marks_echoed.index("long-a") < result.marks_echoed.index("long-b")
    assert result.media_after_clear == fake.media_sent_after_clear > 0


def test_clear_drops_buffered_audio(clear_call) -> None:
    fake, result = clear_call
    heard = voiced_seconds(result.heard_pcm)
    assert heard < fake.audio_sent_s - 3.0
    assert result.dropped_ms > 3000
    # The interrupted reply was still heard, and the call went on to the next utterance.
    assert len(result.utterances) >= 2 and result.all_answered, result.summary()


@pytest.mark.asyncio
async def test_unanswered_utterance_times_out(tmp_path: Path) -> None:
    wav = trimmed_wav(tmp_path, 2.6)
    with FakeAgent("silent") as fake:
        result = await run_call(fake.url, wav, auth_token=TOKEN, public_base_url=PUBLIC_BASE,
                                reply_timeout_s=1.0)
    assert result.greeting_ms is None
    assert len(result.utterances) == 1 and not result.utterances[0]["replied"]
    assert not result.all_answered and result.ended_by == "caller"
    assert result.utterances[0]["sent_at"] == pytest.approx(1.0, abs=0.1)
    spoken_s = result.utterances[0]["end_s"] - result.utterances[0]["start_s"]
    assert result.duration_s == pytest.approx(1.0 + spoken_s + 1.0, abs=0.2)
    assert len(fake.events("stop")) == 1
    assert "NO REPLY" in result.summary()


@pytest.mark.asyncio
async def test_server_hangup_ends_the_call(tmp_path: Path) -> None:
    wav = trimmed_wav(tmp_path, 5.0)
    with FakeAgent("hangup") as fake:
        result = await run_call(fake.url, wav, auth_token=TOKEN, public_base_url=PUBLIC_BASE)
    assert result.ended_by == "server"
    assert fake.events("stop") == []  # nobody left to send stop to
    assert result.greeting_ms is not None
    assert [u["replied"] for u in result.utterances] == [False, False]
    assert result.utterances[1]["sent_at"] is None
    assert result.duration_s < result.utterances[0]["ended_at"] + 1.0


@pytest.mark.asyncio
async def test_wrong_public_url_fails_signature() -> None:
    with FakeAgent("reply") as fake:
        with pytest.raises(WebhookError, match="403"):
            await run_call(fake.url, str(JFK_WAV), auth_token=TOKEN)  # signs the local URL
        assert fake.webhook_signature_ok is False


def test_cli_prints_turns_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    wav = trimmed_wav(tmp_path, 2.6)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"TWILIO_AUTH_TOKEN={TOKEN}\nPUBLIC_BASE_URL={PUBLIC_BASE}\n")
    for name in ("TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL"):  # restored (unset) after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    with FakeAgent("reply") as fake:
        argv = ["--wav", wav, "--server", fake.url, "--out", str(tmp_path / "heard.wav")]
        code = caller.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert fake.webhook_signature_ok is True  # token and public URL came from .env
    assert "assistant: Hello from the fake agent" in out
    assert "Utterances answered: 1/1" in out
    assert (tmp_path / "heard.wav").exists()


def test_playout_gaps_are_the_silences_late_audio_leaves_inside_agent_speech():
    from offline.caller import playout_gaps

    on_time = [(0.02 * i, 1) for i in range(50)]
    assert playout_gaps(on_time) == []
    # Sent ahead in a burst: the buffer absorbs it.
    assert playout_gaps([(0.001 * i, 1) for i in range(50)]) == []
    # A 100 ms stall after frame 10: the listener hears ~80 ms of silence (20 ms buffer).
    stalled = [(0.02 * i + (0.1 if i > 10 else 0), 1) for i in range(50)]
    gaps = playout_gaps(stalled)
    assert len(gaps) == 1 and abs(gaps[0] - 80) < 1
    # The caller talking between two replies is a new phase, not a gap.
    two_replies = on_time + [(5 + 0.02 * i, 2) for i in range(50)]
    assert playout_gaps(two_replies) == []
