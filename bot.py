"""One phone call: build its pipeline from a graph in ``pipelines/`` and run it to the end.

The call starts when Twilio's ``start`` message has arrived (read by ``server.py``).
The agent speaks first: the greeting is requested as soon as the stream is up. The
call ends when:

- the caller hangs up: Twilio sends ``stop`` or closes the socket; the pipeline is
  cancelled at once (nothing queued needs to play to an empty line);
- the agent ends it (``end_after_playout`` inside :func:`run_bot`): a named Twilio
  ``mark`` is sent after the last audio, and the pipeline ends when Twilio echoes it,
  that is when the caller has heard everything; then the call is completed through
  Twilio's REST API when credentials are set;
- the model connection fails: the caller hears a short pre-rendered apology, ended
  the same way, with the reason recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import WebSocket
from loguru import logger

from pipecat.frames.frames import (
    CancelFrame,
    ErrorFrame,
    InputTransportMessageFrame,
    LLMRunFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.services.llm_service import LLMService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

from pipelines import GRAPHS, CallContext
from processors.twilio_serializer import CALLER_HUNG_UP, TWILIO_SAMPLE_RATE, TwilioMediaSerializer
from resources import APOLOGY_TEXT, Resources
from twilio_rest import complete_call

__all__ = ["AGENT_ENDED", "END_OF_CALL_MARK", "MODEL_ERROR", "StreamStart", "run_bot"]

#: End reason when the agent ended the call.
AGENT_ENDED = "agent_ended"
#: End reason when the model connection failed and the caller heard the apology.
MODEL_ERROR = "model_error"
#: Name of the Twilio mark sent after the agent's last words; its echo ends the call.
END_OF_CALL_MARK = "end-of-call"
#: How long to wait for that echo beyond the audio's own length, in seconds.
END_OF_CALL_GRACE_SECS = 5.0


@dataclass
class StreamStart:
    """The facts of Twilio's ``start`` message that a call needs.

    Source: https://www.twilio.com/docs/voice/media-streams/websocket-messages#start-message

    Parameters:
        stream_sid: ``start.streamSid`` (``MZ...``).
        call_sid: ``start.callSid`` (``CA...``).
        account_sid: ``start.accountSid`` (``AC...``).
        parameters: ``start.customParameters``: the TwiML ``<Parameter>``s.
    """

    stream_sid: str
    call_sid: str
    account_sid: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: dict) -> "StreamStart":
        """Read a ``start`` message.

        Args:
            message: The decoded JSON of Twilio's ``start`` message.

        Returns:
            The stream's facts.

        Raises:
            ValueError: If the stream or call SID is missing.
        """
        start = message.get("start")
        if not isinstance(start, dict):
            raise ValueError("start message without a 'start' object")
        stream_sid = start.get("streamSid") or message.get("streamSid")
        call_sid = start.get("callSid")
        if not isinstance(stream_sid, str) or not isinstance(call_sid, str):
            raise ValueError("start message without streamSid or callSid")
        params = start.get("customParameters")
        params = {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}
        account_sid = start.get("accountSid")
        return cls(stream_sid, call_sid, account_sid if isinstance(account_sid, str) else None, params)


async def run_bot(
    websocket: WebSocket, start: StreamStart, resources: Resources, *, graph: str = "realtime"
) -> str:
    """Run one call's pipeline until the call ends.

    Args:
        websocket: Twilio's media stream, already past ``connected`` and ``start``.
        start: The stream's ``start`` facts.
        resources: What the server shares across calls (settings, stores, agents).
        graph: The name of the graph in :data:`pipelines.GRAPHS`.

    Returns:
        The end reason recorded for the call.
    """
    settings, store = resources.settings, resources.store
    call_sid = start.call_sid
    await store.start_call(
        call_sid,
        stream_sid=start.stream_sid,
        account_sid=start.account_sid,
        from_number=start.parameters.get("from"),
        to_number=start.parameters.get("to"),
        provider=settings.provider,
    )
    serializer = TwilioMediaSerializer(start.stream_sid, call_sid, account_sid=start.account_sid)
    transport = FastAPIWebsocketTransport(
        websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_in_sample_rate=TWILIO_SAMPLE_RATE,
            audio_out_enabled=True,
            audio_out_sample_rate=TWILIO_SAMPLE_RATE,
            audio_out_10ms_chunks=2,  # 20 ms: one Twilio media frame per chunk
            audio_out_end_silence_secs=0,  # the end-of-call mark already waits for playout
            serializer=serializer,
        ),
    )
    call = CallContext(
        call_sid=call_sid,
        stream_sid=start.stream_sid,
        account_sid=start.account_sid,
        from_number=start.parameters.get("from"),
        to_number=start.parameters.get("to"),
        parameters=start.parameters,
        settings=settings,
        store=store,
        transport=transport,
        local_agent_url=resources.local_agent_url,
    )
    processors = GRAPHS[graph](call)
    model = next((p for p in processors if isinstance(p, LLMService)), None)
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(
            audio_in_sample_rate=TWILIO_SAMPLE_RATE, audio_out_sample_rate=TWILIO_SAMPLE_RATE
        ),
        enable_rtvi=False,
        idle_timeout_secs=None,
        name=f"call-{call_sid}",
    )
    state = {"reason": None}

    def end_reason(reason: str) -> None:
        if state["reason"] is None:
            state["reason"] = reason

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _websocket):
        logger.info(f"[{call_sid}] stream {start.stream_sid} up: requesting the greeting")
        await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _websocket):
        end_reason(CALLER_HUNG_UP)
        await worker.cancel(reason=CALLER_HUNG_UP)

    @worker.event_handler("on_pipeline_finished")
    async def on_pipeline_finished(_worker, frame):
        reason = getattr(frame, "reason", None)
        if isinstance(frame, CancelFrame) and reason == CALLER_HUNG_UP:
            end_reason(CALLER_HUNG_UP)
        elif not isinstance(frame, CancelFrame):
            end_reason(AGENT_ENDED)

    fallback: list[asyncio.Task] = []

    async def end_after_playout(reason: str, pcm: bytes | None = None, text: str = "") -> None:
        """Say ``pcm`` (if any), then end the call once Twilio has played everything.

        Args:
            reason: The end reason to record.
            pcm: Last words, 16-bit PCM at 8000 Hz.
            text: Their text, for the call record.
        """
        end_reason(reason)
        frames = []
        if pcm:
            frames += [
                TTSStartedFrame(),
                TTSTextFrame(text, text_type=TextType.SENTENCE),
                TTSAudioRawFrame(pcm, TWILIO_SAMPLE_RATE, 1),
                TTSStoppedFrame(),
            ]
        mark = {"event": "mark", "streamSid": start.stream_sid, "mark": {"name": END_OF_CALL_MARK}}
        frames.append(OutputTransportMessageFrame(message=mark))
        await worker.queue_frames(frames)
        timeout = len(pcm or b"") / (2 * TWILIO_SAMPLE_RATE) + END_OF_CALL_GRACE_SECS
        fallback.append(asyncio.create_task(_end_later(worker, timeout, reason)))

    worker.set_reached_upstream_filter((InputTransportMessageFrame,))

    @worker.event_handler("on_frame_reached_upstream")
    async def on_frame_reached_upstream(_worker, frame):
        message = frame.message if isinstance(frame, InputTransportMessageFrame) else None
        if isinstance(message, dict) and message.get("event") == "mark":
            if (message.get("mark") or {}).get("name") == END_OF_CALL_MARK:
                logger.info(f"[{call_sid}] the caller heard the last words: ending the call")
                await worker.end(reason=state["reason"])

    @worker.event_handler("on_pipeline_error")
    async def on_pipeline_error(_worker, frame: ErrorFrame):
        if state["reason"] is not None or frame.processor is None:
            return
        if frame.processor is model or not frame.processor.is_usable:
            logger.error(f"[{call_sid}] model failed: {frame.error}; apologising and ending")
            await end_after_playout(MODEL_ERROR, resources.apology_pcm, APOLOGY_TEXT)

    runner = WorkerRunner(handle_sigint=False)
    try:
        await runner.add_workers(worker)
        await runner.run()
    except asyncio.CancelledError:
        end_reason("server_shutdown")
        raise
    except Exception as e:
        logger.exception(f"[{call_sid}] pipeline failed: {e}")
        end_reason("error")
    finally:
        for task in fallback:
            task.cancel()
        reason = state["reason"] or CALLER_HUNG_UP
        await store.end_call(call_sid, reason)
        logger.info(f"[{call_sid}] call ended: {reason}")
    if reason in (AGENT_ENDED, MODEL_ERROR):
        await complete_call(settings, call_sid)
    return reason



async def _end_later(worker: PipelineWorker, delay_secs: float, reason: str) -> None:
    """End the worker after ``delay_secs`` if Twilio never echoed the end-of-call mark."""
    await asyncio.sleep(delay_secs)
    logger.warning(f"{worker}: no end-of-call mark echo within {delay_secs:.1f} s; ending anyway")
    await worker.end(reason=reason)
