"""The speech-to-speech graph: Twilio <-> Silero VAD <-> Gemini Live / OpenAI Realtime.

Read :func:`build` top to bottom: it is the order audio flows through a call.
Caller audio enters at 8 kHz and reaches the model at 8 kHz, with no resampler on the
way (mu-law for OpenAI Realtime, PCM for Gemini Live: ``pipelines.services``); the
model's audio leaves at 24 kHz and is resampled once, to 8 kHz, by our low-delay filter
(~3 ms).

Barge-in: the echo canceller removes the agent's own voice from the caller's audio,
Silero VAD (at least ``BARGE_IN_MIN_SECS`` of speech) starts the caller's turn, which
interrupts the agent: Twilio gets ``clear``, the model ``response.cancel`` and a
truncation at the position the playout tracker read from Twilio's mark echoes.
"""

from __future__ import annotations

from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameProcessor

from pipelines.base import CallContext, follow_playout, last_stop, opening_context
from pipelines.call_settings import agent_config
from pipelines.services import speech_to_speech
from pipelines.tools import attach_tools
from pipelines.turns import turn_taking
from processors.barge_in import PlayoutTracker
from processors.dtmf import DTMFToAgent
from processors.echo import EchoCanceller
from processors.resampler import AudioResamplerProcessor
from processors.twilio_serializer import TWILIO_SAMPLE_RATE


def build(call: CallContext) -> list[FrameProcessor]:
    """Build one call's speech-to-speech pipeline.

    Args:
        call: The call's facts, settings, store and transport.

    Returns:
        The processors in pipeline order.

    Raises:
        ValueError: If the model does not take the caller's 8 kHz (every provider here
            does; another would need an input resampler before the model).
    """
    agent = agent_config(call.settings, call.resources.agent if call.resources else None, call.parameters)
    playout = PlayoutTracker(call.stream_sid, enable_direct_mode=True)
    s2s = speech_to_speech(call.settings, playout, agent, local_agent_url=call.local_agent_url)
    if s2s.input_sample_rate != TWILIO_SAMPLE_RATE:
        raise ValueError(f"the model takes {s2s.input_sample_rate} Hz; this graph sends the caller's 8 kHz")
    context = opening_context(call)
    attach_tools(call, s2s.service)
    echo = EchoCanceller(playout, enable_direct_mode=True)
    turns = turn_taking(
        call.settings, agent.turn_detection, agent_playing=playout.playing, echo_headroom_db=echo.headroom_db
    )
    context_aggregators = LLMContextAggregatorPair(context, user_params=turns)
    transcript = follow_playout(call, context, playout)  # record, context, call control

    # Many calls share one event loop: the processors between the transport and the
    # model that only pass the caller's audio on (the echo canceller, the keys, the
    # transcript's tap), and those between the model and Twilio (the resampler, the
    # playout tracker, the output transport), run in direct mode: each frame handled
    # in the pusher's task, with no queue, task switch and loop turn per hop. The
    # output's own audio task still paces what it sends.
    return [
        call.transport.input(),  # Twilio media -> 8 kHz PCM (our G.711 codec)
        echo,  # the agent's own voice leaking back is not the caller
        context_aggregators.user(),  # Silero VAD at 8 kHz: caller turns and barge-in
        DTMFToAgent(enable_direct_mode=True),  # keys the caller presses -> the model and the call record
        transcript.user(),  # caller turns -> call record
        s2s.service,  # the speech-to-speech model
        last_stop(InputAudioRawFrame, "CallerAudioEnd"),  # caller audio goes no further than the model
        AudioResamplerProcessor(TWILIO_SAMPLE_RATE, OutputAudioRawFrame, enable_direct_mode=True),  # model -> 8 kHz
        playout,  # 20 ms frames + Twilio marks; what was heard; agent turns -> call record
        call.transport.output(),  # mu-law media frames and marks to Twilio
        last_stop(OutputAudioRawFrame, "AgentAudioEnd"),  # sent audio goes no further
        context_aggregators.assistant(),
    ]

