"""A stock Pipecat Twilio bot, built the way Pipecat's examples build one: the baseline.

``make bench`` runs it beside our server, against the same offline agent and the
same simulated callers, to report the same figures for both. It is Pipecat's own
parts, unchanged: :class:`~pipecat.serializers.twilio.TwilioFrameSerializer` (its
soxr stream resamplers), :class:`FastAPIWebsocketTransport` at 8000 Hz in and out
(Pipecat's Twilio examples), Silero VAD (Pipecat's analyzer, one ONNX session and
model thread per call) on the user aggregator, and
:class:`~pipecat.services.openai.realtime.llm.OpenAIRealtimeLLMService` with its own
resampling to and from 24 kHz. Local turn detection, as ours (the model's VAD off).

The only additions are measurement hooks that change nothing on the audio path:
the same :mod:`diagnostics` probes our server uses (loop lag, ingress, egress,
teardown) at ``GET /debug/stats``.

Endpoints: ``POST /twilio/incoming-call`` (TwiML ``<Connect><Stream>``; unsigned:
a benchmark tool, never exposed), WS ``/ws``, ``GET /health``, ``/debug/stats``.

Usage: ``python -m bench.stock_server --port 8100 --agent ws://127.0.0.1:8765/v1/realtime``
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from twilio.twiml.voice_response import Connect, VoiceResponse

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import InputAudioRawFrame, InterruptionFrame, LLMRunFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

import diagnostics
from diagnostics import CALL_PROBE, ProbedRealtimeMixin, new_call_probe

__all__ = ["create_app"]

TWILIO_RATE = 8000  # Hz


class _ProbedTwilioFrameSerializer(TwilioFrameSerializer):
    """Pipecat's serializer; reports audio in and ``media`` out to the call's probe."""

    async def deserialize(self, data):
        frame = await super().deserialize(data)
        probe = CALL_PROBE.get()
        if probe is not None and isinstance(frame, InputAudioRawFrame):
            probe.caller_audio(len(frame.audio) / 2 / frame.sample_rate)
        return frame

    async def serialize(self, frame):
        message = await super().serialize(frame)
        probe = CALL_PROBE.get()
        if probe is not None:
            if isinstance(frame, InterruptionFrame):
                probe.cleared()
            elif message is not None and '"media"' in message[:40]:
                probe.media_sent()
        return message


class _ProbedOpenAIRealtime(ProbedRealtimeMixin, OpenAIRealtimeLLMService):
    """Pipecat's OpenAI Realtime service with the latency hooks."""


async def run_stock_call(websocket: WebSocket, agent_url: str) -> None:
    """One call, as a Pipecat Twilio example runs it.

    Args:
        websocket: The accepted Media Streams socket (``connected``/``start`` unread).
        agent_url: The OpenAI Realtime WebSocket URL (the offline agent).
    """
    _, call_data = await parse_telephony_websocket(websocket)
    probe = new_call_probe()
    serializer = _ProbedTwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
        ),
    )
    session = events.SessionProperties(
        audio=events.AudioConfiguration(input=events.AudioInput(turn_detection=False))
    )
    llm = _ProbedOpenAIRealtime(
        api_key="offline",
        base_url=agent_url,
        settings=OpenAIRealtimeLLMService.Settings(
            model="gpt-realtime",
            system_instruction="You are the friendly front desk of a hotel.",
            session_properties=session,
        ),
    )
    context = LLMContext(messages=[{"role": "user", "content": "Greet the caller."}])
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    worker = PipelineWorker(
        Pipeline([transport.input(), aggregators.user(), llm, transport.output(), aggregators.assistant()]),
        params=PipelineParams(audio_in_sample_rate=TWILIO_RATE, audio_out_sample_rate=TWILIO_RATE),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _client):
        await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _client):
        if probe:
            probe.hung_up()
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    try:
        await runner.add_workers(worker)
        await runner.run()
    finally:
        if probe:
            probe.ended()


def create_app(agent_url: str) -> FastAPI:
    """The stock bot's app (see the module docstring).

    Args:
        agent_url: The OpenAI Realtime WebSocket URL the calls use.

    Returns:
        The FastAPI app, diagnostics on.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        diagnostics.STATS.start_lag_probe()
        yield
        await diagnostics.STATS.stop_lag_probe()

    app = FastAPI(lifespan=lifespan)
    diagnostics.install(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/twilio/incoming-call")
    async def incoming_call(request: Request) -> Response:
        host = request.headers.get("host", "127.0.0.1")
        response, connect = VoiceResponse(), Connect()
        connect.stream(url=f"ws://{host}/ws")
        response.append(connect)
        return Response(str(response), media_type="application/xml")

    @app.websocket("/ws")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            await run_stock_call(websocket, agent_url)
        except Exception as e:  # one call's failure must not stop the benchmark's server
            logger.warning(f"stock call failed: {e}")

    return app


def main() -> None:
    """Serve the stock bot on loopback."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--agent", required=True, help="OpenAI Realtime URL (the offline agent)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    import sys

    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    uvicorn.run(create_app(args.agent), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
