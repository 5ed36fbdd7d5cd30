"""Per-call agent settings: deployment defaults, TwiML overrides, and what reaches each service."""

import pytest

from agent_settings import AgentSettings
from config import load_settings
from pipelines.call_settings import agent_config
from pipelines.services import speech_to_speech
from processors.barge_in import PlayoutTracker


def _settings(**overrides):
    return load_settings(_env_file=None, **overrides)


def test_a_call_overrides_the_deployment_through_its_parameters():
    config = agent_config(
        _settings(),
        AgentSettings(_env_file=None, AGENT_VOICE="cedar"),
        {"agent_language": "ja", "agent_temperature": "0.4", "agent_instructions": "Be brief.", "from": "+1"},
    )
    assert (config.language, config.temperature, config.voice) == ("ja", 0.4, "cedar")
    assert config.full_instructions == "Be brief.\nAlways answer in Japanese."


@pytest.mark.parametrize(
    "parameters", [{"agent_language": "xx"}, {"agent_temperature": "hot"}, {"agent_temperature": "9"}]
)
def test_invalid_overrides_are_ignored_not_fatal(parameters):
    config = agent_config(_settings(), AgentSettings(_env_file=None), parameters)
    assert config.language == "en" and config.temperature == 0.8


def test_openai_realtime_gets_model_voice_language_and_turn_detection():
    agent = agent_config(
        _settings(), AgentSettings(_env_file=None, TURN_DETECTION="server"),
        {"agent_model": "gpt-realtime-mini", "agent_voice": "cedar", "agent_language": "ja"},
    )
    s2s = speech_to_speech(_settings(), PlayoutTracker("MZ"), agent, local_agent_url="ws://127.0.0.1:9/v1/realtime")
    session = s2s.service._settings.session_properties
    assert s2s.service._settings.model == "gpt-realtime-mini"
    assert session.audio.output.voice == "cedar"
    assert session.audio.input.transcription.language == "ja"
    assert session.audio.input.turn_detection.type == "server_vad"
    assert "Japanese" in s2s.service._settings.system_instruction
    # The caller's audio goes as it came from the phone (8 kHz mu-law); replies are 24 kHz PCM.
    assert session.audio.input.format.type == "audio/pcmu"
    assert (s2s.input_sample_rate, s2s.output_sample_rate) == (8000, 24000)


def test_gemini_live_gets_voice_language_temperature_and_takes_8khz_as_is():
    settings = _settings(AGENT_PROVIDER="gemini", GOOGLE_API_KEY="k")
    agent = agent_config(settings, AgentSettings(_env_file=None), {"agent_language": "ja", "agent_voice": "Kore"})
    s2s = speech_to_speech(settings, PlayoutTracker("MZ"), agent)
    assert s2s.service._settings.voice == "Kore"
    assert str(s2s.service._settings.language) == "ja-JP"
    assert s2s.service._settings.temperature == 0.8
    assert s2s.service._settings.vad.disabled is True  # local Silero decides the turns
    assert s2s.service._settings.context_window_compression.enabled is True  # long calls
    assert (s2s.input_sample_rate, s2s.output_sample_rate) == (8000, 24000)


def test_an_outbound_calls_task_becomes_the_instructions():
    config = agent_config(_settings(), AgentSettings(_env_file=None), {"task_prompt": "Remind them of the 3 pm visit."})
    assert config.instructions == "Remind them of the 3 pm visit."
