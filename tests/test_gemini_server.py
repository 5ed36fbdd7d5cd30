"""Tests for the offline Gemini Live server (``offline/gemini_server.py``).

Two kinds of client talk to it:

- raw ``websockets`` clients speaking BidiGenerateContent JSON, with every
  server message validated strictly against the google-genai SDK's own
  ``LiveServerMessage`` model (unknown fields fail);
- Pipecat's unmodified ``GeminiLiveLLMService``, reaching the server through
  the SDK's ``http_options`` (TLS with the server's test certificate).

Caller audio is real speech: ``/work/shared/audio/jfk_8k.wav`` (8 kHz PCM16).
"""

import asyncio
import base64
import json
import re
import shutil
import ssl
import wave
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soxr
from google.genai import _live_converters, types
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from offline.gemini_server import OfflineGeminiLiveServer, make_certificate
from offline.realtime_server import GREETING, SCRIPT
from offline.tts import synthesize

SPEECH_WAV = "/work/shared/audio/jfk_8k.wav"
OUT_RATE = 24000
OUT_BYTES_PER_SECOND = OUT_RATE * 2
CALLER_SPOKE = re.compile(r"^\[caller spoke (\d+\.\d) s\]$")
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
MODEL = "models/gemini-2.5-flash-native-audio-preview-09-2025"

# Pipecat 1.14 still sets LiveConnectConfig.generation_config, which google-genai 2.34 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Setting `LiveConnectConfig.generation_config`:DeprecationWarning"
)
KEY = {"x-goog-api-key": "offline"}


def jfk(seconds: float, rate: int = 8000, start: float = 0.0) -> bytes:
    """``seconds`` of the JFK recording from ``start`` s, as PCM16 at ``rate`` Hz."""
    with wave.open(SPEECH_WAV) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        wav.setpos(int(8000 * start))
        samples = np.frombuffer(wav.readframes(int(8000 * seconds)), dtype="<i2")
    if rate != 8000:
        samples = soxr.resample(samples, 8000, rate, quality="HQ").astype("<i2")
    return samples.tobytes()


def line_noise(seconds: float, rate: int) -> bytes:
    """Quiet Gaussian noise (about -60 dBFS) standing in for a silent phone line."""
    return np.random.default_rng(7).normal(0, 30, int(rate * seconds)).astype("<i2").tobytes()


def kind(message: dict) -> str:
    """The top-level field of a client message, in camelCase (the SDK sends some in snake_case)."""
    (key,) = message
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)


def of_kind(messages: list[dict], name: str) -> list[dict]:
    """The bodies of the client messages of one kind, e.g. every ``realtimeInput``'s."""
    return [next(iter(m.values())) for m in messages if kind(m) == name]


def strict_parse(raw: str) -> types.LiveServerMessage:
    """Parse a server message like the SDK does, but refuse unknown fields."""
    message = json.loads(raw)
    converted = _live_converters._LiveServerMessage_from_mldev(message)
    assert converted, f"the SDK would raise APIError on {raw[:200]}"
    return types.LiveServerMessage.model_validate(converted)


class RawClient:
    """A raw BidiGenerateContent client that validates everything the server sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, **message) -> None:
        await self.ws.send(json.dumps(message))

    async def audio(self, pcm: bytes, rate: int, chunk_ms: int = 20, pause: float = 0.0) -> None:
        step = rate * 2 * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            data = base64.b64encode(pcm[i : i + step]).decode()
            blob = {"mimeType": f"audio/pcm;rate={rate}", "data": data}
            await self.send(realtimeInput={"audio": blob})
            await asyncio.sleep(pause)

    async def next(self, timeout: float = 10.0) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        strict_parse(raw)
        return json.loads(raw)

    async def until(self, predicate, timeout: float = 15.0) -> list[dict]:
        """Collect messages up to and including the first for which ``predicate`` is true."""
        messages = []
        while not messages or not predicate(messages[-1]):
            messages.append(await self.next(timeout))
        return messages


def content(message: dict, name: str):
    return (message.get("serverContent") or {}).get(name)


def turn_complete(message: dict) -> bool:
    return bool(content(message, "turnComplete"))


def audio_bytes(messages: list[dict]) -> int:
    total = 0
    for m in messages:
        for part in (content(m, "modelTurn") or {}).get("parts", []):
            assert part["inlineData"]["mimeType"] == "audio/pcm;rate=24000"
            total += len(base64.b64decode(part["inlineData"]["data"]))
    return total


def spoken_text(messages: list[dict]) -> str:
    return "".join((content(m, "outputTranscription") or {}).get("text", "") for m in messages)


@pytest_asyncio.fixture
async def server(tmp_path):
    srv = OfflineGeminiLiveServer(pace=8.0, event_log=str(tmp_path / "received.jsonl"))
    await srv.start()
    yield srv
    await srv.stop()


async def open_raw(server: OfflineGeminiLiveServer, setup: dict) -> RawClient:
    ws = await connect(
        f"wss://127.0.0.1:{server.port}{PATH}",
        ssl=server.client_ssl_context(),
        additional_headers={"x-goog-api-key": "offline"},
    )
    client = RawClient(ws)
    await client.send(setup=setup)
    done = await client.next()
    assert set(done) == {"setupComplete"} and done["setupComplete"]["sessionId"]
    return client


def raw_setup(**extra) -> dict:
    return {
        "model": MODEL,
        "generationConfig": {"responseModalities": ["AUDIO"]},
        "systemInstruction": {"parts": [{"text": "You are a hotel front desk."}]},
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        **extra,
    }


# -- raw protocol ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_handshake_needs_tls_the_bidi_path_and_a_key(server):
    assert server.url == f"https://127.0.0.1:{server.port}"
    ctx = server.client_ssl_context()
    with pytest.raises(InvalidStatus) as wrong_path:
        await connect(f"wss://127.0.0.1:{server.port}/v1/realtime", ssl=ctx, additional_headers=KEY)
    assert wrong_path.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as no_key:
        await connect(f"wss://127.0.0.1:{server.port}{PATH}", ssl=ctx)
    assert no_key.value.response.status_code == 403
    with pytest.raises(ssl.SSLCertVerificationError):  # not trusted by default
        await connect(f"wss://127.0.0.1:{server.port}{PATH}", ssl=ssl.create_default_context())
    # The key may also come as ?key=; it is never recorded.
    ws = await connect(f"wss://127.0.0.1:{server.port}{PATH}?key=secret", ssl=ctx)
    await ws.close()
    assert "secret" not in json.dumps(server.handshakes)

    # A first message that is not setup ends the session.
    ws = await connect(f"wss://127.0.0.1:{server.port}{PATH}", ssl=ctx, additional_headers=KEY)
    await ws.send(json.dumps({"clientContent": {"turnComplete": True}}))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1007


@pytest.mark.asyncio
async def test_raw_greeting_then_activity_delimited_caller_turn(server, tmp_path):
    setup = raw_setup(
        realtimeInputConfig={"automaticActivityDetection": {"disabled": True}},
        sessionResumption={},
    )
    client = await open_raw(server, setup)

    # Greeting: clientContent with turnComplete asks for a reply.
    greet = {"role": "user", "parts": [{"text": "Greet."}]}
    await client.send(clientContent={"turns": [greet], "turnComplete": True})
    greeting = await client.until(turn_complete)
    assert audio_bytes(greeting) == len(synthesize(GREETING)) >= 3 * OUT_BYTES_PER_SECOND
    assert spoken_text(greeting) == GREETING
    assert greeting[0].get("serverContent", {}).get("modelTurn"), "the first audio comes first"
    assert content(greeting[-2], "generationComplete") is True
    usage = greeting[-1]["usageMetadata"]
    assert usage["responseTokenCount"] == round(len(synthesize(GREETING)) / OUT_BYTES_PER_SECOND * 32)
    update = await client.next()
    assert update["sessionResumptionUpdate"]["resumable"] is True
    assert update["sessionResumptionUpdate"]["newHandle"]

    # Malformed messages are ignored; the session goes on. A blank text (Pipecat's
    # nudge for Gemini 3) makes no reply: the next message is the caller turn's.
    await client.send(realtimeInput={"text": " "})
    await client.ws.send("this is not json")
    await client.send(somethingElse={})
    await client.send(realtimeInput={"audio": {"mimeType": "audio/pcm;rate=8000", "data": "***"}})

    # Speech outside an activity window belongs to no turn, as with the Live API
    # (the upper bound below would catch it being counted).
    await client.audio(jfk(2.0, start=6.0), 8000)
    await client.send(realtimeInput={"activityStart": {}})
    await client.audio(jfk(2.0), 8000)
    await client.send(realtimeInput={"activityEnd": {}})
    reply = await client.until(turn_complete)
    heard = content(reply[0], "inputTranscription")["text"]
    spoke = CALLER_SPOKE.match(heard)
    assert spoke, heard
    # JFK starts ~0.3 s in and pauses between phrases: well under 2.0 s, well over 1.0 s.
    assert 1.0 <= float(spoke.group(1)) <= 1.9
    assert spoken_text(reply) == SCRIPT[0]
    assert audio_bytes(reply) == len(synthesize(SCRIPT[0]))
    assert usage != reply[-1]["usageMetadata"]
    assert {"AUDIO"} <= {d["modality"] for d in reply[-1]["usageMetadata"]["promptTokensDetails"]}

    # A silent activity window is a turn of 0.0 s (the noise is -60 dBFS).
    await client.next()  # its sessionResumptionUpdate
    await client.send(realtimeInput={"activityStart": {}})
    await client.audio(line_noise(0.6, 16000), 16000)
    await client.send(realtimeInput={"activityEnd": {}})
    quiet = await client.until(turn_complete)
    assert content(quiet[0], "inputTranscription")["text"] == "[caller spoke 0.0 s]"
    assert spoken_text(quiet) == SCRIPT[1]
    await client.ws.close()

    audio = [r["audio"] for r in of_kind(server.received, "realtimeInput") if "audio" in r]
    assert {"mimeType": "audio/pcm;rate=8000", "bytes": 320} in audio
    assert {"mimeType": "audio/pcm;rate=8000", "bytes": -1} in audio  # the broken base64
    logged = [json.loads(line) for line in (tmp_path / "received.jsonl").read_text().splitlines()]
    assert logged == server.received
    assert [kind(m) for m in logged[:2]] == ["setup", "clientContent"]


@pytest.mark.asyncio
async def test_raw_automatic_activity_detection_and_barge_in(server):
    server.pace = 3.0
    client = await open_raw(server, raw_setup())

    # 1.5 s of speech then 1 s of line noise at 16 kHz, about 4x real time: the detector ends the turn.
    await client.audio(jfk(1.5, 16000) + line_noise(1.0, 16000), 16000, pause=0.005)
    first = await client.until(turn_complete)
    heard = CALLER_SPOKE.match(content(first[0], "inputTranscription")["text"])
    assert heard and float(heard.group(1)) > 0.5
    assert spoken_text(first) == SCRIPT[0]
    assert not any("sessionResumptionUpdate" in m for m in first)  # not asked for

    # Another turn; speech during its reply interrupts it.
    await client.audio(jfk(1.8, 16000, start=2.2) + line_noise(0.7, 16000), 16000)
    started = await client.until(lambda m: content(m, "modelTurn"))
    assert content(started[0], "inputTranscription")
    await client.audio(jfk(1.0, 16000), 16000)
    rest = await client.until(lambda m: content(m, "interrupted"))
    assert not any(turn_complete(m) for m in rest)
    assert audio_bytes(started + rest) < len(synthesize(SCRIPT[1]))
    assert SCRIPT[1].startswith(spoken_text(started + rest))
    await client.ws.close()


@pytest.mark.asyncio
async def test_raw_tool_call_and_session_resumption(server):
    tools = [{"functionDeclarations": [{"name": "get_caller_context", "description": "Who is calling."}]}]
    setup = raw_setup(
        realtimeInputConfig={"automaticActivityDetection": {"disabled": True}},
        sessionResumption={},
        tools=tools,
    )
    client = await open_raw(server, setup)

    async def caller_turn(c: RawClient) -> None:
        await c.send(realtimeInput={"activityStart": {}})
        await c.audio(jfk(1.0), 8000)
        await c.send(realtimeInput={"activityEnd": {}})

    await caller_turn(client)
    assert spoken_text(await client.until(turn_complete)) == SCRIPT[0]
    handle = (await client.next())["sessionResumptionUpdate"]["newHandle"]

    # The second caller turn is answered by a tool call first.
    await caller_turn(client)
    call_messages = await client.until(lambda m: "toolCall" in m)
    (call,) = call_messages[-1]["toolCall"]["functionCalls"]
    assert call["name"] == "get_caller_context" and call["args"] == {} and call["id"]
    assert audio_bytes(call_messages) == 0
    stray = {"id": "not-this-one", "name": "x", "response": {}}
    await client.send(toolResponse={"functionResponses": [stray]})
    answer = {"id": call["id"], "name": call["name"], "response": {"vip": True}}
    await client.send(toolResponse={"functionResponses": [answer]})
    follow_up = await client.until(turn_complete)
    assert spoken_text(follow_up) == SCRIPT[1]
    await client.ws.close()

    # A new connection resuming the handle from before the tool call goes on from there.
    resumed = await open_raw(server, {**setup, "sessionResumption": {"handle": handle}})
    await caller_turn(resumed)
    again = await resumed.until(lambda m: "toolCall" in m)
    assert again[-1]["toolCall"]["functionCalls"][0]["name"] == "get_caller_context"
    # A barge-in while the call is outstanding cancels it.
    await resumed.send(realtimeInput={"activityStart": {}})
    cancelled = await resumed.next()
    assert cancelled["toolCallCancellation"]["ids"] == [again[-1]["toolCall"]["functionCalls"][0]["id"]]
    await resumed.ws.close()

    # An unknown handle is refused.
    ws = await connect(
        f"wss://127.0.0.1:{server.port}{PATH}", ssl=server.client_ssl_context(), additional_headers=KEY
    )
    await ws.send(json.dumps({"setup": {**setup, "sessionResumption": {"handle": "resume-nope"}}}))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1008


@pytest.mark.asyncio
async def test_raw_go_away_before_session_limit_and_drop(server):
    server.max_session_s = 1.5
    loop = asyncio.get_running_loop()
    client = await open_raw(server, raw_setup(sessionResumption={}))
    opened = loop.time()
    go_away = await client.next(timeout=5)
    assert go_away == {"goAway": {"timeLeft": "1s"}}
    assert 0.4 <= loop.time() - opened <= 1.2
    with pytest.raises(ConnectionClosed):
        await client.next(timeout=5)
    assert 1.4 <= loop.time() - opened <= 2.5
    assert client.ws.close_code == 1000

    server.max_session_s = None
    first, second = await open_raw(server, raw_setup()), await open_raw(server, raw_setup())
    assert server.sessions == 2
    assert await server.drop_connections() == 2
    for c in (first, second):
        with pytest.raises(ConnectionClosed):
            await c.next(timeout=5)
        assert c.ws.close_code == 1006  # abnormal closure: no close frame
    assert server.sessions == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
async def test_certificate_backends_and_reuse(tmp_path, backend):
    if backend == "openssl" and not shutil.which("openssl"):
        pytest.skip("no openssl command")
    cert, _key = make_certificate(tmp_path, backend=backend)
    first = Path(cert).read_bytes()
    async with OfflineGeminiLiveServer(cert_dir=str(tmp_path)) as srv:
        assert srv.ca_file == cert and Path(cert).read_bytes() == first  # reused, not remade
        client = await open_raw(srv, raw_setup())
        await client.ws.close()
    assert Path(cert).exists()  # a given cert_dir is kept


# -- Pipecat's GeminiLiveLLMService against the server -------------------------------------


class PipecatCall:
    """Pipeline([GeminiLiveLLMService, collector]) run by a WorkerRunner, against the server."""

    def __init__(
        self, server: OfflineGeminiLiveServer, *, tools=None, http_options=None, model: str = MODEL
    ) -> None:
        from pipecat.frames.frames import (
            ErrorFrame,
            Frame,
            InterruptionFrame,
            TranscriptionFrame,
            TTSAudioRawFrame,
            TTSStoppedFrame,
            TTSTextFrame,
        )
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
        from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService, GeminiVADParams

        self.server = server
        self.tools = tools
        call = self

        class Collector(FrameProcessor):
            """Collects what the service says, one entry per reply."""

            def __init__(self) -> None:
                super().__init__()
                self.audio = bytearray()
                self.text = ""
                self.replies: asyncio.Queue = asyncio.Queue()
                self.first_audio = asyncio.Event()
                self.interruptions = 0

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, TTSAudioRawFrame):
                    assert (frame.sample_rate, frame.num_channels) == (OUT_RATE, 1)
                    self.audio += frame.audio
                    self.first_audio.set()
                elif isinstance(frame, TTSTextFrame):
                    self.text += frame.text
                elif isinstance(frame, (TTSStoppedFrame, InterruptionFrame)):
                    # Pipecat ends a reply with TTSStoppedFrame; on the server's
                    # `interrupted` it only broadcasts an InterruptionFrame.
                    if isinstance(frame, InterruptionFrame):
                        self.interruptions += 1
                    if self.audio or isinstance(frame, TTSStoppedFrame):
                        self.replies.put_nowait((bytes(self.audio), self.text))
                    self.audio, self.text = bytearray(), ""
                    self.first_audio.clear()
                await self.push_frame(frame, direction)

        self.llm = GeminiLiveLLMService(
            api_key="offline",
            http_options=http_options or server.http_options(),
            settings=GeminiLiveLLMService.Settings(
                model=model,
                system_instruction="You are the Grand Harbor Hotel front desk.",
                vad=GeminiVADParams(disabled=True),
            ),
        )
        self.collector = Collector()
        self.worker = PipelineWorker(
            Pipeline([self.llm, self.collector]), params=PipelineParams(), idle_timeout_secs=None
        )
        self.errors: list = []
        self.transcripts: list[str] = []
        self.worker.set_reached_upstream_filter((ErrorFrame, TranscriptionFrame))

        @self.worker.event_handler("on_pipeline_error")
        async def on_pipeline_error(_worker, frame):
            call.errors.append(frame)

        @self.worker.event_handler("on_frame_reached_upstream")
        async def on_frame_reached_upstream(_worker, frame):
            if isinstance(frame, TranscriptionFrame):
                call.transcripts.append(frame.text)
            else:
                call.errors.append(frame)

    async def __aenter__(self) -> "PipecatCall":
        from pipecat.frames.frames import LLMContextFrame
        from pipecat.processors.aggregators.llm_context import LLMContext
        from pipecat.workers.runner import WorkerRunner

        messages = [{"role": "user", "content": "Greet the caller."}]
        context = LLMContext(messages, tools=self.tools) if self.tools else LLMContext(messages)
        self.runner = WorkerRunner(handle_sigint=False)
        await self.runner.add_workers(self.worker)
        self.run = asyncio.create_task(self.runner.run())
        await self.worker.queue_frame(LLMContextFrame(context))
        return self

    async def __aexit__(self, *exc) -> None:
        from pipecat.frames.frames import EndFrame

        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.run, 20)

    async def reply(self, timeout: float = 20) -> tuple[bytes, str]:
        return await asyncio.wait_for(self.collector.replies.get(), timeout)

    async def caller_turn(self, pcm: bytes, stop: bool = True) -> None:
        """Speak 8 kHz audio between UserStarted/StoppedSpeakingFrames, 20 ms frames, ~10x real time."""
        from pipecat.frames.frames import (
            InputAudioRawFrame,
            UserStartedSpeakingFrame,
            UserStoppedSpeakingFrame,
        )

        await self.worker.queue_frame(UserStartedSpeakingFrame())
        for i in range(0, len(pcm), 320):
            await self.worker.queue_frame(InputAudioRawFrame(pcm[i : i + 320], 8000, 1))
            await asyncio.sleep(0.002)
        if stop:
            await self.worker.queue_frame(UserStoppedSpeakingFrame())

    def setups(self) -> list[dict]:
        return of_kind(self.server.received, "setup")


async def wait_for(condition, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail("condition not reached in time")


@pytest.mark.asyncio
async def test_pipecat_call_greeting_turn_and_barge_in(server):
    async with PipecatCall(server) as call:
        audio, text = await call.reply()
        assert text == GREETING
        assert len(audio) == len(synthesize(GREETING))

        await call.caller_turn(jfk(2.0))
        audio, text = await call.reply()
        assert text == SCRIPT[0] and len(audio) == len(synthesize(SCRIPT[0]))
        await wait_for(lambda: call.transcripts)
        assert len(call.transcripts) == 1 and CALLER_SPOKE.match(call.transcripts[0]), call.transcripts

        # Barge-in: the caller starts speaking while the next reply plays.
        server.pace = 2.0
        await call.caller_turn(jfk(1.0, start=6.0))
        await asyncio.wait_for(call.collector.first_audio.wait(), 10)
        await call.caller_turn(jfk(1.0, start=9.0), stop=False)
        audio, text = await call.reply()
        assert call.collector.interruptions == 1  # broadcast by the service on `interrupted`
        assert 0 < len(audio) < len(synthesize(SCRIPT[1]))
        assert SCRIPT[1].startswith(text) and text != SCRIPT[1]
        await asyncio.sleep(0.3)
        assert not call.collector.audio, "audio went on after the interruption"
        server.pace = 8.0
        from pipecat.frames.frames import UserStoppedSpeakingFrame

        await call.worker.queue_frame(UserStoppedSpeakingFrame())
        audio, text = await call.reply()
        assert text == SCRIPT[2] and len(audio) == len(synthesize(SCRIPT[2]))

    assert not call.errors, call.errors
    (setup,) = call.setups()
    assert setup["model"] == MODEL
    assert setup["realtimeInputConfig"]["automatic_activity_detection"] == {"disabled": True}
    assert setup["systemInstruction"]["parts"][0]["text"] == "You are the Grand Harbor Hotel front desk."
    assert setup["sessionResumption"] == {} and "inputAudioTranscription" in setup
    realtime = of_kind(server.received, "realtimeInput")
    assert sum("activityStart" in r for r in realtime) == 3 and sum("activityEnd" in r for r in realtime) == 3
    rates = {r["audio"]["mimeType"] for r in realtime if "audio" in r}
    assert rates == {"audio/pcm;rate=8000"}  # Pipecat sends the frames' own rate
    assert server.handshakes[0]["path"] == PATH
    assert server.handshakes[0]["headers"]["x-goog-api-key"] == "<redacted>"


@pytest.mark.asyncio
async def test_pipecat_tool_call_round_trip(server):
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
    from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema

    tools = ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name="get_caller_context",
                description="Look up the caller's booking and loyalty status.",
                properties={},
                required=[],
            )
        ]
    )
    calls, call_ids = [], []

    async def get_caller_context(params):
        calls.append((params.function_name, dict(params.arguments)))
        call_ids.append(params.tool_call_id)
        await params.result_callback({"name": "Ada Lovelace", "loyalty": "gold"})

    async with PipecatCall(server, tools=tools) as call:
        call.llm.register_function("get_caller_context", get_caller_context)
        assert (await call.reply())[1] == GREETING
        await call.caller_turn(jfk(1.5))
        assert (await call.reply())[1] == SCRIPT[0]
        await call.caller_turn(jfk(1.5, start=2.0))
        audio, text = await call.reply()
        assert text == SCRIPT[1] and len(audio) == len(synthesize(SCRIPT[1]))

    assert not call.errors, call.errors
    assert calls == [("get_caller_context", {})]
    declared = call.setups()[-1]["tools"][0]
    declarations = declared.get("functionDeclarations") or declared.get("function_declarations")
    assert [d["name"] for d in declarations] == ["get_caller_context"]
    (response,) = of_kind(server.received, "toolResponse")
    (function_response,) = response.get("functionResponses") or response["function_responses"]
    assert function_response["name"] == "get_caller_context"
    assert function_response["response"] == {"name": "Ada Lovelace", "loyalty": "gold"}
    assert function_response["id"] == call_ids[0] and call_ids[0].startswith("call-")  # the server's id


@pytest.mark.asyncio
async def test_pipecat_reconnects_after_dropped_connection(server):
    async with PipecatCall(server) as call:
        assert (await call.reply())[1] == GREETING
        await call.caller_turn(jfk(1.5))
        assert (await call.reply())[1] == SCRIPT[0]
        await wait_for(lambda: server.sessions == 1)

        assert await server.drop_connections() == 1
        await wait_for(lambda: len(call.setups()) == 2 and server.sessions == 1)
        await asyncio.sleep(0.2)  # the service marks itself ready after setupComplete

        await call.caller_turn(jfk(1.5, start=2.0))
        audio, text = await call.reply()
        assert text == SCRIPT[1], "the resumed session goes on with the script"

        # A drop in the middle of a caller turn loses that turn: Pipecat 1.14 resumes
        # but does not send activityStart again, so the new session gets the rest of
        # the turn's audio outside any activity window and an unmatched activityEnd.
        from pipecat.frames.frames import (
            InputAudioRawFrame,
            UserStartedSpeakingFrame,
            UserStoppedSpeakingFrame,
        )

        pcm = jfk(2.0, start=6.0)
        await call.worker.queue_frame(UserStartedSpeakingFrame())
        for n, i in enumerate(range(0, len(pcm), 320)):
            await call.worker.queue_frame(InputAudioRawFrame(pcm[i : i + 320], 8000, 1))
            await asyncio.sleep(0.005)
            if n == 40:
                assert await server.drop_connections() == 1
                await wait_for(lambda: len(call.setups()) == 3 and server.sessions == 1)
        await call.worker.queue_frame(UserStoppedSpeakingFrame())
        await wait_for(lambda: "activityEnd" in of_kind(server.received, "realtimeInput")[-1])
        await asyncio.sleep(0.3)
        assert call.collector.replies.empty() and not call.collector.audio
        third_setup = server.received.index({"setup": call.setups()[2]})
        after_drop = of_kind(server.received[third_setup:], "realtimeInput")
        assert not any("activityStart" in r for r in after_drop)
        assert any("audio" in r for r in after_drop) and "activityEnd" in after_drop[-1]

        # The next turn is answered, from where the last handle left the script.
        await call.caller_turn(jfk(1.5, start=8.0))
        assert (await call.reply())[1] == SCRIPT[2]

    assert not call.errors, call.errors
    first, second, third = call.setups()
    assert "handle" not in first["sessionResumption"]
    assert second["sessionResumption"]["handle"].startswith("resume-")
    assert third["sessionResumption"]["handle"] not in (None, second["sessionResumption"]["handle"])
    # Resumed from the handle: no re-seeding of the history, no second greeting.
    assert len(of_kind(server.received, "clientContent")) == 1


@pytest.mark.asyncio
async def test_pipecat_survives_go_away_through_session_resumption(server):
    server.max_session_s = 3.0
    async with PipecatCall(server) as call:
        assert (await call.reply())[1] == GREETING
        await wait_for(lambda: len(call.setups()) == 2, timeout=6)
        await asyncio.sleep(0.2)
        await call.caller_turn(jfk(1.5))
        audio, text = await call.reply()
        assert text == SCRIPT[0] and len(audio) == len(synthesize(SCRIPT[0]))

    assert not call.errors, call.errors
    first, second = call.setups()[:2]
    assert second["sessionResumption"]["handle"].startswith("resume-")
    assert len(of_kind(server.received, "clientContent")) == 1


@pytest.mark.asyncio
async def test_pipecat_trusts_the_certificate_through_ssl_cert_file(server, monkeypatch):
    """The project only sets ``HttpOptions(base_url=...)``; SSL_CERT_FILE is then the way in."""
    from google.genai.types import HttpOptions

    monkeypatch.setenv("SSL_CERT_FILE", server.ca_file)
    async with PipecatCall(server, http_options=HttpOptions(base_url=server.url)) as call:
        assert (await call.reply())[1] == GREETING
    assert not call.errors, call.errors


@pytest.mark.asyncio
async def test_pipecat_gemini_3_greeting_nudge_makes_one_reply(server):
    """For Gemini 3 models Pipecat follows turnComplete with a blank realtime text."""
    async with PipecatCall(server, model="models/gemini-3.8-live") as call:
        assert (await call.reply())[1] == GREETING
        await asyncio.sleep(0.5)
        assert call.collector.replies.empty() and not call.collector.audio
        await call.caller_turn(jfk(1.5))
        assert (await call.reply())[1] == SCRIPT[0]
    assert not call.errors, call.errors
    assert {"text": " "} in of_kind(server.received, "realtimeInput")
