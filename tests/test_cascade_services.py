"""The cascade's services, built from settings: OpenAI (default, offline server) and Google.

Google Cloud Speech-to-Text and Text-to-Speech cannot be reached offline and speak
gRPC, for which we have no local fake: these tests check what can be checked without
Google: that Pipecat's services are built from our settings (service-account
credentials, language, voice, model, audio rates) and the shape of the first
streaming request each would send. Google's client is replaced by a recorder of the
requests (it sits across the network). Whether Google accepts them, and what it
answers, is not tested (README "Graphs").
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import speech_v2, texttospeech_v1
from pipecat.services.google.stt import GoogleSTTService
from pipecat.services.google.tts import GoogleTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.openai.stt import OpenAISTTService
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.transcriptions.language import Language

from config import load_settings
from pipelines.call_settings import agent_config
from pipelines.cascade_services import TTS_SAMPLE_RATE, CascadeSettings, cascade_services

OFFLINE = "http://127.0.0.1:9/v1"


@pytest.fixture(scope="module")
def service_account() -> str:
    """A service-account JSON with a fresh RSA key (never valid at Google)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps({
        "type": "service_account", "project_id": "grand-harbor-test", "private_key_id": "k1",
        "private_key": pem, "client_email": "agent@grand-harbor-test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    })


def _agent(language: str = "en", voice: str | None = None):
    settings = load_settings(_env_file=None, HOST="127.0.0.1")
    parameters = {"agent_language": language, **({"agent_voice": voice} if voice else {})}
    return settings, agent_config(settings, None, parameters)


def test_without_a_key_the_openai_services_use_the_offline_server():
    settings, agent = _agent("ja")
    services = cascade_services(settings, CascadeSettings(_env_file=None), agent, offline_url=OFFLINE)
    assert services.offline
    assert isinstance(services.stt, OpenAISTTService) and isinstance(services.llm, OpenAILLMService)
    assert isinstance(services.tts, OpenAITTSService)
    for service in (services.stt, services.llm, services.tts):
        assert str(service._client.base_url).rstrip("/") == OFFLINE
    assert services.stt._settings.language == Language.JA
    assert services.llm._settings.system_instruction.endswith("Always answer in Japanese.")
    assert services.tts._init_sample_rate == TTS_SAMPLE_RATE
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        cascade_services(settings, CascadeSettings(_env_file=None), agent)


def test_with_a_key_they_use_openai_and_the_callers_voice():
    settings = load_settings(_env_file=None, HOST="127.0.0.1", OPENAI_API_KEY="sk-test")
    agent = agent_config(settings, None, {"agent_voice": "nova"})
    services = cascade_services(settings, CascadeSettings(_env_file=None), agent, offline_url=OFFLINE)
    assert not services.offline
    assert str(services.llm._client.base_url).startswith("https://api.openai.com/v1")
    assert services.tts._settings.voice == "nova"
    assert services.llm._settings.model == "gpt-4.1-mini"


@pytest.mark.asyncio
async def test_google_speech_to_text_is_built_from_settings_and_asks_for_8khz_japanese(service_account):
    settings, agent = _agent("ja")
    cascade = CascadeSettings(_env_file=None, CASCADE_STT="google", GOOGLE_CLOUD_CREDENTIALS=service_account)
    stt = cascade_services(settings, cascade, agent, offline_url=OFFLINE).stt
    assert isinstance(stt, GoogleSTTService)
    assert stt._project_id == "grand-harbor-test"

    # The first request of the stream: recognizer and config (built as the service would).
    stt._sample_rate = stt._init_sample_rate  # what setup() takes: our 8 kHz
    stt.create_task = lambda coroutine, *args, **kwargs: coroutine.close()  # no stream to Google
    await stt._connect()
    first = await anext(stt._request_generator())
    assert isinstance(first, speech_v2.StreamingRecognizeRequest)
    assert first.recognizer == "projects/grand-harbor-test/locations/global/recognizers/_"
    config = first.streaming_config.config
    assert list(config.language_codes) == ["ja-JP"]
    assert config.model == "latest_short"
    assert config.explicit_decoding_config.sample_rate_hertz == 8000
    assert config.explicit_decoding_config.encoding == speech_v2.ExplicitDecodingConfig.AudioEncoding.LINEAR16


class _RecordingTTSClient:
    """Stands in for Google's TextToSpeechAsyncClient: records the requests, answers nothing."""

    def __init__(self):
        self.requests: list = []

    async def streaming_synthesize(self, requests):
        async for request in requests:
            self.requests.append(request)

        async def no_audio():
            return
            yield

        return no_audio()


@pytest.mark.asyncio
async def test_google_text_to_speech_is_built_from_settings_and_asks_for_24khz_pcm(service_account):
    settings, agent = _agent("ja")
    cascade = CascadeSettings(_env_file=None, CASCADE_TTS="google", GOOGLE_CLOUD_CREDENTIALS=service_account)
    tts = cascade_services(settings, cascade, agent, offline_url=OFFLINE).tts
    assert isinstance(tts, GoogleTTSService)
    assert tts._settings.voice == "ja-JP-Chirp3-HD-Charon"

    recorder = _RecordingTTSClient()
    tts._client = recorder
    tts._sample_rate = tts._init_sample_rate
    frames = [frame async for frame in tts.run_tts("ご予約を承りました。", "ctx-1")]
    assert not [f for f in frames if "Error" in type(f).__name__]
    config, text = recorder.requests[0].streaming_config, recorder.requests[1].input.text
    assert config.voice.language_code == "ja-JP" and config.voice.name == "ja-JP-Chirp3-HD-Charon"
    assert config.streaming_audio_config.audio_encoding == texttospeech_v1.AudioEncoding.PCM
    assert config.streaming_audio_config.sample_rate_hertz == TTS_SAMPLE_RATE
    assert text == "ご予約を承りました。"
