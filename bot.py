"""One phone call: build its pipeline from a graph in ``pipelines/`` and run it to the end.

The call starts when Twilio's ``start`` message has arrived (read by ``server.py``).
The agent speaks first: the greeting is requested as soon as the stream is up. The
call ends when:

- the caller hangs up: Twilio sends ``stop`` or closes the socket; the pipeline is
  cancelled at once (nothing queued needs to play to an empty line);
- the agent ends it (the ``end_call`` tool): once its goodbye has played out at
  Twilio (:class:`~call_control.CallControl`), the pipeline ends and the call is
  completed through Twilio's REST API when credentials are set;
- the call is transferred to a person (the ``transfer_call`` tool);
- the model connection fails: the caller hears a short pre-rendered apology, ended
  the same way, with the reason recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import WebSocket
from loguru import logger

from pipecat.frames.frames import CancelFrame, ErrorFrame, LLMRunFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.workers.runner import WorkerRunner

from call_control import AGENT_ENDED, MODEL_ERROR, CallControl
from diagnostics import new_call_probe
from pipelines import GRAPHS, CallContext
from pipelines.selection import chosen_graph
from processors.twilio_serializer import CALLER_HUNG_UP, TWILIO_SAMPLE_RATE, TwilioMediaSerializer
from processors.twilio_transport import twilio_transport
from resources import APOLOGY_TEXT, Resources
from twilio_rest import complete_call

__all__ = ["MAX_MODEL_RECONNECTS", "UNKNOWN_GRAPH", "StreamStart", "run_bot"]

#: How many times a call reconnects a dropped model session before it apologises.
MAX_MODEL_RECONNECTS = 3
#: What Pipecat's GeminiLiveLLMService says when it stops reconnecting (pipecat 1.14).
GAVE_UP = "Max consecutive failures"
#: The end reason of a call that asked for a graph that does not exist.
UNKNOWN_GRAPH = "unknown_graph"


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
    websocket: WebSocket, start: StreamStart, resources: Resources, *, graph: str | None = None
) -> str:
    """Run one call's pipeline until the call ends.

    Args:
        websocket: Twilio's media stream, already past ``connected`` and ``start``.
        start: The stream's ``start`` facts.
        resources: What the server shares across calls (settings, stores, tools).
        graph: The name of the graph in :data:`pipelines.GRAPHS`; None: the call's
            ``graph`` parameter, else ``GRAPH`` (:mod:`pipelines.selection`).

    Returns:
        The end reason recorded for the call (``unknown_graph`` when the call asked
        for a graph that does not exist: it is refused before any model connects).
    """
    settings, store = resources.settings, resources.store
    call_sid = start.call_sid
    probe = new_call_probe()  # None unless DIAGNOSTICS is on
    graph = graph or chosen_graph(settings.GRAPH, start.parameters)
    await store.start_call(
        call_sid,
        stream_sid=start.stream_sid,
        account_sid=start.account_sid,
        from_number=start.parameters.get("from"),
        to_number=start.parameters.get("to"),
        provider=settings.provider if graph == "realtime" else graph,
    )
    if graph not in GRAPHS:
        logger.warning(f"[{call_sid}] refused: no graph {graph!r}; the graphs are: {', '.join(sorted(GRAPHS))}")
        await store.end_call(call_sid, UNKNOWN_GRAPH)
        return UNKNOWN_GRAPH
    serializer = TwilioMediaSerializer(start.stream_sid, call_sid, account_sid=start.account_sid)
    transport = twilio_transport(websocket, serializer)
    control = CallControl(call_sid, start.stream_sid, resources)
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
        local_openai_url=resources.local_openai_url,
        resources=resources,
        control=control,
    )
    processors = GRAPHS[graph](call)
    model = next((p for p in processors if isinstance(p, LLMService)), None)
    # A graph with its own speech-to-text / text-to-speech (the cascade): those and its LLM.
    cascade_services = [p for p in processors if isinstance(p, (STTService, TTSService))]
    if cascade_services and model is not None:
        cascade_services.append(model)
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(
            audio_in_sample_rate=TWILIO_SAMPLE_RATE, audio_out_sample_rate=TWILIO_SAMPLE_RATE
        ),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        name=f"call-{call_sid}",
    )
    control.bind(worker)

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _websocket):
        logger.info(f"[{call_sid}] stream {start.stream_sid} up ({graph} graph): requesting the greeting")
        await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _websocket):
        if probe:
            probe.hung_up()
        control.end_reason(CALLER_HUNG_UP)
        await worker.cancel(reason=CALLER_HUNG_UP)

    @worker.event_handler("on_pipeline_finished")
    async def on_pipeline_finished(_worker, frame):
        if isinstance(frame, CancelFrame):
            if getattr(frame, "reason", None) == CALLER_HUNG_UP:
                control.end_reason(CALLER_HUNG_UP)
        else:
            control.end_reason(AGENT_ENDED)

    recovery = {"busy": False, "attempts": 0}

    @worker.event_handler("on_pipeline_error")
    async def on_pipeline_error(_worker, frame: ErrorFrame):
        if control.reason is not None or frame.processor is None or recovery["busy"]:
            return
        if frame.processor is model and hasattr(model, "reconnect"):
            # Our OpenAI Realtime service: Pipecat's does not reconnect by itself.
            if recovery["attempts"] < MAX_MODEL_RECONNECTS:
                recovery["busy"], recovery["attempts"] = True, recovery["attempts"] + 1
                logger.warning(f"[{call_sid}] model failed ({frame.error}); reconnecting")
                try:
                    if await model.reconnect(timeout_s=2.0):
                        logger.info(f"[{call_sid}] model reconnected with the conversation so far")
                        await worker.queue_frames([LLMRunFrame()])  # pick the conversation up
                        return
                finally:
                    recovery["busy"] = False
        elif frame.processor in cascade_services:
            # The cascade's HTTP services do not recover a failed request by themselves:
            # a turn would go unanswered, so the caller hears the apology instead.
            pass
        elif frame.processor.is_usable and GAVE_UP not in str(frame.error):
            # Gemini Live reconnects by itself (with its session resumption handle) and
            # reports each failed attempt; it says so when it gives up.
            logger.warning(f"[{call_sid}] {frame.processor} reported: {frame.error}")
            return
        logger.error(f"[{call_sid}] model failed: {frame.error}; apologising and ending")
        await control.end_after_playout(MODEL_ERROR, resources.apology_pcm, APOLOGY_TEXT)

    runner = WorkerRunner(handle_sigint=False)
    try:
        await runner.add_workers(worker)
        await runner.run()
    except asyncio.CancelledError:
        control.end_reason("server_shutdown")
        raise
    except Exception as e:
        logger.exception(f"[{call_sid}] pipeline failed: {e}")
        control.end_reason("error")
    finally:
        control.cancel()
        reason = control.reason or CALLER_HUNG_UP
        await store.end_call(call_sid, reason)
        logger.info(f"[{call_sid}] call ended: {reason}")
        if probe:
            probe.ended()
    if reason in (AGENT_ENDED, MODEL_ERROR):
        await complete_call(settings, call_sid)
    return reason
