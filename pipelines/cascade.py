"""The cascade graph: Twilio <-> Silero VAD + smart-turn <-> speech-to-text -> LLM -> text-to-speech.

Read :func:`build` top to bottom: it is the order audio and text flow through a call.
The caller's 8 kHz audio goes to the speech-to-text service as it is; Silero VAD on
the user aggregator cuts it into utterances (the aggregator broadcasts its VAD frames
upstream too, so the speech-to-text service, which sits before it, transcribes each
utterance when the VAD stops) and decides the turns, by default with Pipecat's
smart-turn model (``CASCADE_TURN_DETECTION``). A turn ends only once its transcript
has come, and then the LLM (OpenAI chat completions, streamed, with the tool
registry's tools) answers; text-to-speech speaks each sentence as it arrives, and our
resampler brings its 24 kHz to the phone's 8 kHz.

The same processors as the speech-to-speech graph do the rest, unchanged: the echo
canceller, the playout tracker (Twilio marks, what was heard), barge-in (the caller's
turn starting interrupts the LLM and the text-to-speech, Twilio gets ``clear``), the
transcript logger, the heard-context keeper and the tools. Services per
:mod:`pipelines.cascade_services`.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameProcessor

from pipelines.base import CallContext, follow_playout, last_stop, opening_context
from pipelines.call_settings import agent_config
from pipelines.cascade_services import CascadeSettings, cascade_services
from pipelines.tools import attach_tools
from pipelines.turns import turn_taking
from processors.barge_in import PlayoutTracker
from processors.dtmf import DTMFToAgent
from processors.echo import EchoCanceller
from processors.resampler import AudioResamplerProcessor
from processors.twilio_serializer import TWILIO_SAMPLE_RATE

__all__ = ["build"]


def build(call: CallContext) -> list[FrameProcessor]:
    """Build one call's cascade pipeline.

    Args:
        call: The call's facts, settings, store and transport.

    Returns:
        The processors in pipeline order.

    Raises:
        ValueError: Without ``OPENAI_API_KEY`` and without the offline server's URL.
    """
    agent = agent_config(call.settings, call.resources.agent if call.resources else None, call.parameters)
    cascade = call.resources.cascade if call.resources and call.resources.cascade else CascadeSettings()
    services = cascade_services(
        call.settings,
        cascade,
        agent,
        offline_url=call.local_openai_url,
        llm_model=call.parameters.get("agent_model"),
    )
    if services.offline:
        logger.info(f"[{call.call_sid}] cascade on the offline OpenAI server (no OPENAI_API_KEY)")
    playout = PlayoutTracker(call.stream_sid)
    context = opening_context(call)
    attach_tools(call, services.llm)
    echo = EchoCanceller(playout)
    turns = turn_taking(
        call.settings,
        cascade.CASCADE_TURN_DETECTION,
        wait_for_transcript=True,
        agent_playing=playout.playing,
        echo_headroom_db=echo.headroom_db,
    )
    context_aggregators = LLMContextAggregatorPair(context, user_params=turns)
    transcript = follow_playout(call, context, playout)  # record, context, call control

    return [
        call.transport.input(),  # Twilio media -> 8 kHz PCM (our G.711 codec)
        echo,  # the agent's own voice leaking back is not the caller
        services.stt,  # each caller utterance (cut by the VAD) -> text
        transcript.user(),  # caller turns -> call record
        context_aggregators.user(),  # Silero VAD + smart-turn: caller turns and barge-in
        last_stop(InputAudioRawFrame, "CallerAudioEnd"),  # caller audio goes no further than the VAD
        DTMFToAgent(),  # keys the caller presses -> the LLM
        transcript.keys(),  # keys pressed -> call record
        services.llm,  # OpenAI chat completions, streamed; tools
        services.tts,  # each sentence -> 24 kHz speech
        AudioResamplerProcessor(TWILIO_SAMPLE_RATE, OutputAudioRawFrame),  # 24 kHz -> 8 kHz
        playout,  # 20 ms frames + Twilio marks; what was heard; agent turns -> call record
        call.transport.output(),  # mu-law media frames and marks to Twilio
        last_stop(OutputAudioRawFrame, "AgentAudioEnd"),  # sent audio goes no further
        context_aggregators.assistant(),
    ]
