"""Settings of the agent's tools and call control, read from the environment and ``.env``.

Kept apart from the server's :mod:`config` (listening, Twilio credentials, providers):
these describe what the agent can do during a call. Every variable is documented in
README.md and ``.env.example``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tools.mcp_tools import McpServerConfig

__all__ = ["AgentSettings"]


class AgentSettings(BaseSettings):
    """Tools and call control. Field names are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    DATABASE_URL: str = "sqlite+aiosqlite:///booking.db"
    LOAD_DEMO_DATA: bool = True  # hotels and a known caller, loaded once if missing
    TRANSFER_NUMBER: str | None = None  # E.164 number transfer_call dials
    TOOL_WEBHOOKS: list[dict[str, Any]] = Field(default_factory=list)  # JSON list of webhook tools
    # JSON list of MCP servers: URL strings or objects (tools/mcp_tools.McpServerConfig).
    MCP_SERVERS: list[McpServerConfig] = Field(default_factory=list)
    TOOL_ACK_TEXT: str = "One moment while I check that for you."
    # The agent's voice and manner, per deployment; a call may override each through a
    # TwiML <Parameter> named agent_model, agent_voice, agent_language,
    # agent_instructions or agent_temperature (see pipelines/call_settings.py).
    AGENT_MODEL: str | None = None  # default: OPENAI_REALTIME_MODEL / GEMINI_MODEL
    AGENT_VOICE: str | None = None  # default: marin (OpenAI), Charon (Gemini)
    AGENT_LANGUAGE: str = "en"  # en | ja (BCP 47)
    AGENT_TEMPERATURE: float | None = Field(default=0.8, ge=0.0, le=2.0)
    # Who decides the caller's turns: local Silero VAD (default), Silero with Pipecat's
    # smart-turn model at the end of each stretch of speech, or the provider's own VAD.
    TURN_DETECTION: Literal["local", "smart", "server"] = "local"
    END_CALL_WAIT_SECS: float = Field(default=15.0, gt=0)  # longest wait for the goodbye to play
