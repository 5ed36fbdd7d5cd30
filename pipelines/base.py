"""What a pipeline graph is built from: one call's facts and shared resources.

Also the wiring every graph shares: the opening LLM context (:func:`opening_context`)
and what follows the playout tracker (:func:`follow_playout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipecat.frames.frames import Frame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.filters.function_filter import FunctionFilter
from pipecat.transports.websocket.fastapi import FastAPIWebsocketTransport

from config import Settings
from processors.barge_in import PlayoutTracker
from processors.context_truth import HeardContext
from processors.transcript import TranscriptLogger
from records import CallStore

if TYPE_CHECKING:
    from call_control import CallControl
    from resources import Resources


@dataclass
class CallContext:
    """One call, as a graph builder sees it.

    Parameters:
        call_sid: Twilio's call SID (``CA...``).
        stream_sid: Twilio's media stream SID (``MZ...``).
        account_sid: Twilio's account SID (``AC...``), if Twilio sent one.
        from_number: The caller's number (E.164), from the TwiML ``<Parameter>``s.
        to_number: The number dialled (E.164).
        parameters: All ``customParameters`` of Twilio's ``start`` message.
        settings: The server's settings.
        store: The call-record store.
        transport: The call's transport (Twilio Media Streams over FastAPI's WebSocket).
        local_agent_url: WebSocket URL of the offline agent, when the provider is ``local``.
        local_openai_url: ``base_url`` of the offline OpenAI HTTP server (the cascade's
            services without ``OPENAI_API_KEY``).
    """

    call_sid: str
    stream_sid: str
    settings: Settings
    store: CallStore
    transport: FastAPIWebsocketTransport
    account_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    local_agent_url: str | None = None
    local_openai_url: str | None = None
    resources: "Resources | None" = None
    control: "CallControl | None" = None


def last_stop(frame_type: type[Frame], name: str) -> FunctionFilter:
    """A filter that ends the journey of ``frame_type`` frames going downstream.

    Pipecat's processors forward what they do not consume, so without this every
    20 ms of caller audio (``InputAudioRawFrame``) would travel on past the model
    to the end of the pipeline, and every 20 ms of agent audio on past the output
    transport: a queue hop and a task switch at each processor, for nothing. The
    filter runs in direct mode (in the pusher's task: no hop of its own) and lets
    every other frame through.

    Args:
        frame_type: The frame class (and its subclasses) to drop.
        name: The processor's name in logs and graph pictures.

    Returns:
        Pipecat's :class:`FunctionFilter`, system frames included.
    """

    async def keep(frame: Frame) -> bool:
        return not isinstance(frame, frame_type)

    return FunctionFilter(keep, filter_system_frames=True, enable_direct_mode=True, name=name)


def opening_context(call: CallContext) -> LLMContext:
    """The call's LLM context: the opening prompt, and the schemas of the call's tools.

    The prompt is the ``greeting_prompt`` custom parameter (an outbound preset), else
    ``AGENT_GREETING_PROMPT``.
    """
    opening = call.parameters.get("greeting_prompt") or call.settings.AGENT_GREETING_PROMPT
    context = LLMContext(messages=[{"role": "user", "content": opening}])
    if call.resources and call.resources.tools:
        context.set_tools(call.resources.tools.tools_schema())
    return context


def follow_playout(call: CallContext, context: LLMContext, playout: PlayoutTracker) -> TranscriptLogger:
    """Tie the call record, the kept context and call control to what the caller heard.

    Args:
        call: The call.
        context: The LLM context; it keeps only agent words the caller heard.
        playout: The call's playout tracker (Twilio mark echoes).

    Returns:
        The transcript logger, whose ``user()`` and ``keys()`` processors go in the graph.
    """
    transcript = TranscriptLogger(call.store, call.call_sid, playout)
    HeardContext(context, playout)
    if call.control:
        call.control.watch(playout)  # e.g. hang up once the goodbye has been heard
    return transcript
