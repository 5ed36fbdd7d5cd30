"""Speech-to-speech services, built from settings, and the audio rates they speak.

Audio each provider takes and returns (and so what our resamplers convert to):

- OpenAI Realtime (and the offline agent, which speaks its protocol): the caller's
  audio goes as G.711 mu-law at 8 kHz (``audio/pcmu``, as it came from the phone, as
  in OpenAI's own Twilio sample: no resampling, a sixth of the bytes of the 24 kHz
  PCM Pipecat's service sends; our service subclass encodes it), and the replies come
  back as 16-bit PCM at 24 kHz (``audio/pcm``), which our low-delay resampler takes to
  8 kHz (platform.openai.com/docs/guides/realtime, session ``audio.input.format`` /
  ``audio.output.format``). Mu-law replies measured no cheaper (``make bench``).
- Gemini Live: takes 16-bit PCM at the rate declared in the blob's MIME type
  (``audio/pcm;rate=8000``) and returns 24 kHz (ai.google.dev/gemini-api/docs/live).
  The caller's 8 kHz goes as it is: no resampling on the way in.

Turn detection (``TURN_DETECTION``): by default the provider's own VAD is switched
off for both and Silero VAD on the user aggregator decides the caller's turns, so
barge-in is ours to control; ``server`` hands turns to the provider's VAD instead.

Long calls: Gemini Live sessions are time-limited and resumed with their handle
(Pipecat), with context window compression on so a long conversation does not end
the session; OpenAI Realtime sessions are reconnected by the call if they drop.

Per-call settings (:mod:`pipelines.call_settings`): model, voice, language and
instructions for both; temperature for Gemini only (OpenAI Realtime's GA session has
no temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.services.llm_service import LLMService
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

from config import Settings
from pipelines.call_settings import LANGUAGES, AgentConfig
from processors.barge_in import PlayoutTracker
from processors.openai_truncation import PlayoutAwareOpenAIRealtimeLLMService

__all__ = ["SpeechToSpeech", "speech_to_speech"]


@dataclass
class SpeechToSpeech:
    """A speech-to-speech service and its audio rates.

    Parameters:
        service: The Pipecat LLM service (a realtime service).
        input_sample_rate: Rate, in Hz, at which the service wants the caller's audio.
        output_sample_rate: Rate, in Hz, of the audio the service produces.
    """

    service: LLMService
    input_sample_rate: int
    output_sample_rate: int


def speech_to_speech(
    settings: Settings,
    playout: PlayoutTracker,
    agent: AgentConfig,
    *,
    local_agent_url: str | None = None,
) -> SpeechToSpeech:
    """Build the configured provider's speech-to-speech service for one call.

    Args:
        settings: The server's settings (provider, keys, base URLs).
        playout: The call's playout tracker (OpenAI truncation follows what was heard).
        agent: The call's agent: model, voice, language, instructions, turn detection.
        local_agent_url: The offline agent's WebSocket URL; required for ``local``.

    Returns:
        The service with its audio rates.

    Raises:
        ValueError: If the provider is ``local`` and no agent URL is known.
    """
    if settings.provider == "gemini":
        return _gemini(settings, agent)
    if settings.provider == "openai":
        key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else ""
        return _openai_realtime(playout, agent, key, settings.OPENAI_REALTIME_BASE_URL,
                                settings.MODEL_STALL_SECS)
    if not local_agent_url:
        raise ValueError("provider 'local' needs the offline agent's URL")
    return _openai_realtime(playout, agent, "offline", local_agent_url, settings.MODEL_STALL_SECS)


def _openai_realtime(
    playout: PlayoutTracker, agent: AgentConfig, api_key: str, base_url: str, stall_secs: float
) -> SpeechToSpeech:
    turn_detection = events.TurnDetection() if agent.turn_detection == "server" else False
    session = events.SessionProperties(
        audio=events.AudioConfiguration(
            input=events.AudioInput(
                format=events.PCMUAudioFormat(),  # the caller's 8 kHz mu-law, as from the phone
                turn_detection=turn_detection,
                transcription=events.InputAudioTranscription(
                    model="gpt-4o-transcribe", language=agent.language
                ),
                noise_reduction=events.InputAudioNoiseReduction(type="far_field"),
            ),
            output=events.AudioOutput(voice=agent.voice or "marin"),
        ),
    )
    service = PlayoutAwareOpenAIRealtimeLLMService(
        playout=playout,
        stall_secs=stall_secs,
        api_key=api_key,
        base_url=base_url,
        settings=OpenAIRealtimeLLMService.Settings(
            model=agent.model,
            system_instruction=agent.full_instructions,
            session_properties=session,
        ),
    )
    return SpeechToSpeech(service, input_sample_rate=8000, output_sample_rate=24000)


def _gemini(settings: Settings, agent: AgentConfig) -> SpeechToSpeech:
    from google.genai.types import HttpOptions
    from pipecat.services.google.gemini_live.llm import (
        ContextWindowCompressionParams,
        GeminiVADParams,
    )

    from processors.gemini_resume import ResumingGeminiLiveLLMService

    service = ResumingGeminiLiveLLMService(
        api_key=settings.GOOGLE_API_KEY.get_secret_value() if settings.GOOGLE_API_KEY else "",
        http_options=HttpOptions(base_url=settings.GEMINI_BASE_URL) if settings.GEMINI_BASE_URL else None,
        settings=ResumingGeminiLiveLLMService.Settings(
            model=agent.model,
            system_instruction=agent.full_instructions,
            voice=agent.voice or "Charon",
            language=LANGUAGES[agent.language][0],
            temperature=agent.temperature,
            vad=GeminiVADParams(disabled=agent.turn_detection != "server"),
            # A long call outgrows the context window: Gemini compresses it (sliding
            # window at 80% of the window) instead of ending the session.
            context_window_compression=ContextWindowCompressionParams(enabled=True),
        ),
    )
    return SpeechToSpeech(service, input_sample_rate=8000, output_sample_rate=24000)
