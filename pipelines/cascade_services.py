"""The cascade's services, built from settings: speech-to-text, LLM, text-to-speech.

Settings (environment variables and ``.env``, documented in README "Graphs"):

- ``CASCADE_STT``: ``openai`` (default; OpenAI's transcription endpoint,
  ``/v1/audio/transcriptions``, one request per caller utterance) or ``google``
  (Google Cloud Speech-to-Text v2 streaming, as in seed 004).
- ``CASCADE_TTS``: ``openai`` (default; ``/v1/audio/speech``, 16-bit PCM at 24 kHz) or
  ``google`` (Google Cloud Text-to-Speech streaming).
- The LLM is always OpenAI chat completions, streamed, with the tool registry's tools.
- ``OPENAI_API_KEY`` set: the OpenAI services use ``OPENAI_BASE_URL`` (default
  ``https://api.openai.com/v1``). Unset: they use the offline server
  (:mod:`offline.openai_server`, espeak-ng speech), started by :mod:`resources`.
- Google services need service-account credentials: ``GOOGLE_CLOUD_CREDENTIALS`` (the
  JSON text) or ``GOOGLE_CLOUD_CREDENTIALS_PATH`` (a file); without either, Google's
  application default credentials are tried.

Audio rates: the speech-to-text services take the caller's 8 kHz as it comes (the
OpenAI service sends it as a WAV; Google is told 8000 Hz); both text-to-speech
services are asked for 24 kHz, which our resampler brings to 8 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from config import Settings
from pipelines.call_settings import AgentConfig

__all__ = ["CascadeServices", "CascadeSettings", "cascade_services"]

#: Rate, in Hz, the text-to-speech services are asked for (OpenAI's only PCM rate).
TTS_SAMPLE_RATE = 24000
#: Our languages (``AgentConfig.language``) as Pipecat's: (transcription, Google).
_LANGUAGES = {"en": (Language.EN, Language.EN_US), "ja": (Language.JA, Language.JA_JP)}


class CascadeSettings(BaseSettings):
    """The cascade graph's services. Field names are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    CASCADE_STT: Literal["openai", "google"] = "openai"
    CASCADE_TTS: Literal["openai", "google"] = "openai"
    CASCADE_TURN_DETECTION: Literal["local", "smart"] = "smart"
    OPENAI_BASE_URL: str = "https://api.openai.com/v1"
    CASCADE_LLM_MODEL: str = "gpt-4.1-mini"
    CASCADE_STT_MODEL: str = "gpt-4o-transcribe"
    CASCADE_TTS_MODEL: str = "gpt-4o-mini-tts"
    CASCADE_TTS_VOICE: str = "alloy"  # OpenAI voice; AGENT_VOICE / agent_voice win when set
    GOOGLE_CLOUD_CREDENTIALS: SecretStr | None = None  # service-account JSON text
    GOOGLE_CLOUD_CREDENTIALS_PATH: str | None = None
    GOOGLE_STT_LOCATION: str = "global"
    GOOGLE_STT_MODEL: str = "latest_short"
    GOOGLE_TTS_VOICE_EN: str = "en-US-Chirp3-HD-Charon"
    GOOGLE_TTS_VOICE_JA: str = "ja-JP-Chirp3-HD-Charon"
    LOCAL_OPENAI_EVENT_LOG: str | None = None  # JSON lines of what the offline OpenAI server received


@dataclass
class CascadeServices:
    """One call's three services.

    Parameters:
        stt: Speech-to-text; pushes a ``TranscriptionFrame`` per caller utterance.
        llm: OpenAI chat completions, streamed.
        tts: Text-to-speech; its audio is at ``TTS_SAMPLE_RATE`` Hz.
        offline: Whether the OpenAI services talk to the offline server.
    """

    stt: STTService
    llm: LLMService
    tts: TTSService
    offline: bool


def cascade_services(
    settings: Settings,
    cascade: CascadeSettings,
    agent: AgentConfig,
    *,
    offline_url: str | None = None,
    llm_model: str | None = None,
) -> CascadeServices:
    """Build one call's speech-to-text, LLM and text-to-speech services.

    Nothing connects here: the services open their connections when the pipeline
    starts.

    Args:
        settings: The server's settings (``OPENAI_API_KEY``).
        cascade: The cascade's settings.
        agent: The call's agent: language, voice, instructions, temperature.
        offline_url: The offline OpenAI server's ``base_url``, used without a key.
        llm_model: The call's LLM model (its ``agent_model`` parameter), if any.

    Returns:
        The services.

    Raises:
        ValueError: Without ``OPENAI_API_KEY`` and without an offline server's URL.
        google.auth.exceptions.GoogleAuthError, ValueError: Google services without
            usable credentials (raised by Pipecat's constructors).
    """
    from pipecat.services.openai.llm import OpenAILLMService

    key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else ""
    offline = not key
    if offline and not offline_url:
        raise ValueError("the cascade needs OPENAI_API_KEY, or the offline OpenAI server's URL")
    base_url = offline_url if offline else cascade.OPENAI_BASE_URL
    api_key = key or "offline"
    transcription_language, google_language = _LANGUAGES.get(agent.language, _LANGUAGES["en"])

    if cascade.CASCADE_STT == "google":
        stt = _google_stt(cascade, google_language)
    else:
        from pipecat.services.openai.stt import OpenAISTTService

        stt = OpenAISTTService(
            api_key=api_key,
            base_url=base_url,
            settings=OpenAISTTService.Settings(model=cascade.CASCADE_STT_MODEL, language=transcription_language),
        )
    llm = OpenAILLMService(
        api_key=api_key,
        base_url=base_url,
        settings=OpenAILLMService.Settings(
            model=llm_model or cascade.CASCADE_LLM_MODEL,
            system_instruction=agent.full_instructions,
            temperature=agent.temperature,
        ),
    )
    if cascade.CASCADE_TTS == "google":
        tts = _google_tts(cascade, google_language, agent.voice)
    else:
        from pipecat.services.openai.tts import VALID_VOICES, OpenAITTSService

        voice = agent.voice if agent.voice in VALID_VOICES else cascade.CASCADE_TTS_VOICE
        tts = OpenAITTSService(
            api_key=api_key,
            base_url=base_url,
            sample_rate=TTS_SAMPLE_RATE,
            settings=OpenAITTSService.Settings(model=cascade.CASCADE_TTS_MODEL, voice=voice),
        )
    return CascadeServices(stt=stt, llm=llm, tts=tts, offline=offline)


def _google_credentials(cascade: CascadeSettings) -> dict[str, str]:
    """Pipecat's credential arguments: the JSON text, else the file, else none (ADC)."""
    text = cascade.GOOGLE_CLOUD_CREDENTIALS.get_secret_value() if cascade.GOOGLE_CLOUD_CREDENTIALS else ""
    if text:
        return {"credentials": text}
    if cascade.GOOGLE_CLOUD_CREDENTIALS_PATH:
        return {"credentials_path": cascade.GOOGLE_CLOUD_CREDENTIALS_PATH}
    return {}


def _google_stt(cascade: CascadeSettings, language: Language) -> STTService:
    """Google Cloud Speech-to-Text v2 (streaming), told the caller's 8 kHz."""
    from pipecat.services.google.stt import GoogleSTTService

    return GoogleSTTService(
        **_google_credentials(cascade),
        location=cascade.GOOGLE_STT_LOCATION,
        sample_rate=8000,
        settings=GoogleSTTService.Settings(languages=[language], model=cascade.GOOGLE_STT_MODEL),
    )


def _google_tts(cascade: CascadeSettings, language: Language, voice: str | None) -> TTSService:
    """Google Cloud Text-to-Speech (streaming), 16-bit PCM at 24 kHz."""
    from pipecat.services.google.tts import GoogleTTSService

    default = cascade.GOOGLE_TTS_VOICE_JA if language == Language.JA_JP else cascade.GOOGLE_TTS_VOICE_EN
    return GoogleTTSService(
        **_google_credentials(cascade),
        sample_rate=TTS_SAMPLE_RATE,
        settings=GoogleTTSService.Settings(voice=voice if voice and "-" in voice else default, language=language),
    )
