"""The agent's settings for one call: deployment defaults, overridden per call.

A call may override the agent's model, voice, language, instructions and temperature
through TwiML ``<Parameter>``s (they arrive in Twilio's ``start`` message as
``customParameters``): ``agent_model``, ``agent_voice``, ``agent_language``,
``agent_instructions``, ``agent_temperature``. An outbound call sets them from its
request. Invalid overrides are logged and ignored; the call goes on with the defaults.
An outbound call's ``task_prompt`` (built by ``outbound.py`` from the request's task
and preset) replaces the instructions.

Defaults suited to phone calls: temperature 0.8, short spoken answers (the
instructions say so), English; Japanese (``ja``) is supported by both providers, and
the instructions then ask the model to answer in Japanese.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loguru import logger

from agent_settings import AgentSettings
from config import Settings

__all__ = ["AgentConfig", "LANGUAGES", "agent_config"]

#: Languages the agent speaks, by BCP 47 code: (Gemini language code, name).
LANGUAGES = {"en": ("en-US", "English"), "ja": ("ja-JP", "Japanese")}


@dataclass(frozen=True)
class AgentConfig:
    """One call's agent.

    Parameters:
        model: The provider's model name.
        voice: The provider's voice name, or None for the provider's default.
        language: BCP 47 code, a key of :data:`LANGUAGES`.
        instructions: The system instructions.
        temperature: Sampling temperature, or None for the provider's default.
        turn_detection: ``local``, ``smart`` or ``server`` (see AgentSettings).
    """

    model: str
    voice: str | None
    language: str
    instructions: str
    temperature: float | None
    turn_detection: str

    @property
    def full_instructions(self) -> str:
        """The instructions, with the language to answer in when it is not English."""
        if self.language == "en":
            return self.instructions
        return f"{self.instructions}\nAlways answer in {LANGUAGES[self.language][1]}."


def agent_config(settings: Settings, agent: AgentSettings | None, parameters: dict[str, str]) -> AgentConfig:
    """Resolve one call's agent from the deployment's settings and the call's parameters.

    Args:
        settings: The server's settings (provider, its model, instructions).
        agent: The agent settings (voice, language, temperature, turn detection).
        parameters: The call's TwiML ``<Parameter>``s.

    Returns:
        The call's agent configuration.
    """
    agent = agent or AgentSettings()
    default_model = settings.GEMINI_MODEL if settings.provider == "gemini" else settings.OPENAI_REALTIME_MODEL
    config = AgentConfig(
        model=agent.AGENT_MODEL or default_model,
        voice=agent.AGENT_VOICE,
        language=agent.AGENT_LANGUAGE if agent.AGENT_LANGUAGE in LANGUAGES else "en",
        instructions=parameters.get("task_prompt") or settings.AGENT_INSTRUCTIONS,
        temperature=agent.AGENT_TEMPERATURE,
        turn_detection=agent.TURN_DETECTION,
    )
    for key, value in parameters.items():
        field = key.removeprefix("agent_") if key.startswith("agent_") else None
        if field not in ("model", "voice", "language", "instructions", "temperature") or not value:
            continue
        if field == "language" and value not in LANGUAGES:
            logger.warning(f"ignoring agent_language={value!r}: supported are {sorted(LANGUAGES)}")
            continue
        if field == "temperature":
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not 0.0 <= number <= 2.0:
                logger.warning(f"ignoring agent_temperature={value!r}: needs a number in 0..2")
                continue
            config = replace(config, temperature=number)
            continue
        config = replace(config, **{field: value})
    return config
