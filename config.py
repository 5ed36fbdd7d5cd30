"""Configuration, read from environment variables and an optional ``.env`` file.

Every variable is documented in ``README.md`` and ``.env.example``. A bad configuration
stops the server at start with a :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Provider = Literal["gemini", "openai", "local"]
#: A phone number in E.164: ``+``, country code, subscriber number, at most 15 digits.
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the variable to fix."""


def is_loopback(host: str) -> bool:
    """Tell whether a bind host is only reachable from this machine.

    Args:
        host: A host name or IP address, e.g. ``127.0.0.1``, ``::1``, ``localhost``.

    Returns:
        True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1).
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """The server's settings. Field names are the environment variable names.

    Raises:
        ConfigError: On construction, when the combination cannot work (see
            :meth:`check`).
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=0, le=65535)
    PUBLIC_BASE_URL: str | None = None
    # This process's path under PUBLIC_BASE_URL when several share one origin
    # (docs/deployment.md): e.g. "/w1"; the proxy routes /w1/... here.
    WORKER_PREFIX: str = Field(default="", pattern=r"^(/[A-Za-z0-9_-]+)?$")

    TWILIO_ACCOUNT_SID: str | None = None
    TWILIO_AUTH_TOKEN: SecretStr | None = None
    TWILIO_API_BASE_URL: str | None = None  # e.g. a local fake of api.twilio.com in tests
    TWILIO_FROM_NUMBER: str | None = None  # caller ID of outbound calls (one of our Twilio numbers)

    # Locked doors (README "Security").
    ALLOW_UNSIGNED_WEBHOOKS: bool | None = None  # None: only without a token, on loopback
    API_KEY: SecretStr | None = None  # Bearer key of our own endpoints; unset: loopback only
    STREAM_TOKEN_TTL_SECS: float = Field(default=30.0, gt=0, le=600)

    # Capacity and shutdown.
    MAX_CONCURRENT_CALLS: int = Field(default=10, ge=1)
    SHUTDOWN_GRACE_SECS: float = Field(default=30.0, ge=0)

    # Outbound calls (README "Outbound calls").
    OUTBOUND_RING_TIMEOUT_SECS: int = Field(default=30, ge=5, le=600)
    AMD_TIMEOUT_SECS: int = Field(default=30, ge=3, le=59)

    AGENT_PROVIDER: Provider | None = None
    GOOGLE_API_KEY: SecretStr | None = None
    OPENAI_API_KEY: SecretStr | None = None
    GEMINI_BASE_URL: str | None = None
    OPENAI_REALTIME_BASE_URL: str = "wss://api.openai.com/v1/realtime"
    OPENAI_REALTIME_MODEL: str = "gpt-realtime"
    GEMINI_MODEL: str = "models/gemini-2.5-flash-native-audio-preview-09-2025"
    LOCAL_AGENT_BASE_URL: str | None = None  # an already running offline agent; else one is started
    LOCAL_AGENT_DELAY_MS: int = Field(default=0, ge=0)
    # The offline agent's reply goes on this long after a response.cancel (audio in flight), ms.
    LOCAL_AGENT_CANCEL_LAG_MS: int = Field(default=0, ge=0)
    # A model silent this long while a response is owed is treated as dropped (OpenAI Realtime).
    MODEL_STALL_SECS: float = Field(default=5.0, gt=0)
    LOCAL_AGENT_EVENT_LOG: str | None = None  # JSON lines of what the offline agent received
    # Load figures at GET /debug/stats (loop lag, added latency, teardown): make bench.
    DIAGNOSTICS: bool = False

    AGENT_INSTRUCTIONS: str = (
        "You are the friendly front-desk agent of the Grand Harbor Hotel, answering the phone. "
        "Greet the caller, find out what they need, and help them with bookings. "
        "Keep every answer short and spoken: one or two sentences, no lists or markup."
    )
    AGENT_GREETING_PROMPT: str = "A caller has just been connected. Greet them and ask how you can help."
    BARGE_IN_MIN_SECS: float = Field(default=0.3, gt=0, le=2.0)
    VAD_STOP_SECS: float = Field(default=0.2, gt=0, le=2.0)
    VAD_MIN_VOLUME: float = Field(default=0.5, ge=0, le=1.0)
    VAD_MAX_GAIN_DB: float = Field(default=24.0, ge=0, le=40.0)
    VAD_CONFIDENCE: float = Field(default=0.5, gt=0, lt=1.0)
    USER_TURN_TIMEOUT_SECS: float = Field(default=0.6, gt=0, le=5.0)

    # Pipeline graphs (README "Graphs"): the deployment's, and one per dialled number.
    GRAPH: str = "realtime"
    NUMBER_GRAPHS: dict[str, dict[str, str]] = Field(default_factory=dict)  # JSON: {"+1555...": {"graph": ...}}

    CALLS_DB_PATH: str = "calls.db"
    REDIS_URL: str | None = None  # live events across server processes (events.py)
    LOG_LEVEL: str = "INFO"

    @field_validator("ALLOW_UNSIGNED_WEBHOOKS", "AGENT_PROVIDER", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        """An empty value (``ALLOW_UNSIGNED_WEBHOOKS=``, as in ``.env.example``) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def check(self) -> "Settings":
        """Refuse combinations that cannot work, naming the variable.

        Raises:
            ConfigError: ``AGENT_PROVIDER=gemini`` without ``GOOGLE_API_KEY``,
                ``AGENT_PROVIDER=openai`` without ``OPENAI_API_KEY``, a non-loopback
                ``HOST`` without ``TWILIO_AUTH_TOKEN``, ``ALLOW_UNSIGNED_WEBHOOKS=true``
                on a non-loopback ``HOST``, ``ALLOW_UNSIGNED_WEBHOOKS=false`` without
                a token, unsigned webhooks behind a public ``PUBLIC_BASE_URL``, a
                ``PUBLIC_BASE_URL`` that is not an http(s) origin, or a
                ``TWILIO_FROM_NUMBER`` that is not E.164, an unknown ``GRAPH``, or a
                ``NUMBER_GRAPHS`` entry with a number that is not E.164, an unknown
                graph or an unknown setting.
        """
        if self.provider == "gemini" and not self.GOOGLE_API_KEY:
            raise ConfigError("AGENT_PROVIDER=gemini needs GOOGLE_API_KEY to be set")
        if self.provider == "openai" and not self.OPENAI_API_KEY:
            raise ConfigError("AGENT_PROVIDER=openai needs OPENAI_API_KEY to be set")
        if self.ALLOW_UNSIGNED_WEBHOOKS and not is_loopback(self.HOST):
            raise ConfigError(
                f"ALLOW_UNSIGNED_WEBHOOKS=true is for local development only and HOST={self.HOST} "
                "is reachable from other machines: bind HOST=127.0.0.1 or drop the switch"
            )
        if not is_loopback(self.HOST) and not self.TWILIO_AUTH_TOKEN:
            raise ConfigError(
                f"HOST={self.HOST} is reachable from other machines: set TWILIO_AUTH_TOKEN so "
                "webhooks are signature-checked, or bind HOST=127.0.0.1"
            )
        if self.ALLOW_UNSIGNED_WEBHOOKS is False and not self.TWILIO_AUTH_TOKEN:
            raise ConfigError(
                "ALLOW_UNSIGNED_WEBHOOKS=false requires signed webhooks: set TWILIO_AUTH_TOKEN"
            )
        if self.PUBLIC_BASE_URL:
            parts = urlsplit(self.PUBLIC_BASE_URL)
            if parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname:
                raise ConfigError(
                    f"PUBLIC_BASE_URL must be an http(s) origin like https://abc.ngrok.app, "
                    f"got {self.PUBLIC_BASE_URL!r}"
                )
            if not self.signatures_required and not is_loopback(parts.hostname):
                raise ConfigError(
                    f"PUBLIC_BASE_URL={self.PUBLIC_BASE_URL} is reachable from the internet but "
                    "webhooks would not be signature-checked: set TWILIO_AUTH_TOKEN"
                )
        from pipelines.selection import check_graph_settings  # noqa: PLC0415 (pipelines import config)

        check_graph_settings(self.GRAPH, self.NUMBER_GRAPHS)
        if self.TWILIO_FROM_NUMBER and not E164.fullmatch(self.TWILIO_FROM_NUMBER):
            raise ConfigError(
                f"TWILIO_FROM_NUMBER must be an E.164 number like +15551234567, "
                f"got {self.TWILIO_FROM_NUMBER!r}"
            )
        return self

    @cached_property
    def provider(self) -> Provider:
        """The speech-to-speech provider: ``AGENT_PROVIDER``, else the first with a key.

        Returns:
            ``gemini`` if ``GOOGLE_API_KEY`` is set, else ``openai`` if
            ``OPENAI_API_KEY`` is set, else ``local`` (the offline agent).
        """
        if self.AGENT_PROVIDER:
            return self.AGENT_PROVIDER
        if self.GOOGLE_API_KEY:
            return "gemini"
        if self.OPENAI_API_KEY:
            return "openai"
        return "local"

    @property
    def public_base_url(self) -> str:
        """The origin Twilio reaches us at, without a trailing slash.

        Returns:
            ``PUBLIC_BASE_URL``, or ``http://HOST:PORT`` for local runs.
        """
        if self.PUBLIC_BASE_URL:
            return self.PUBLIC_BASE_URL.rstrip("/")
        return f"http://{self.HOST}:{self.PORT}"

    @property
    def worker_base_url(self) -> str:
        """The base of the URLs this process gives Twilio for a call it took.

        The stream URL in the TwiML and an outbound call's callbacks are built from it,
        so with several processes behind one origin a call's stream and callbacks come
        back to the process that answered its webhook (docs/deployment.md).

        Returns:
            :attr:`public_base_url` + ``WORKER_PREFIX``, e.g. ``https://voice.example.com/w1``.
        """
        return self.public_base_url + self.WORKER_PREFIX

    @property
    def auth_token(self) -> str | None:
        """The Twilio auth token in clear, or None (never log it)."""
        return (self.TWILIO_AUTH_TOKEN.get_secret_value() or None) if self.TWILIO_AUTH_TOKEN else None

    @property
    def api_key(self) -> str | None:
        """The key our own endpoints require as ``Authorization: Bearer``, or None."""
        return (self.API_KEY.get_secret_value() or None) if self.API_KEY else None

    @property
    def signatures_required(self) -> bool:
        """Whether Twilio's requests must carry a valid ``X-Twilio-Signature``.

        Returns:
            False with ``ALLOW_UNSIGNED_WEBHOOKS=true``, or when the switch is unset
            and there is no ``TWILIO_AUTH_TOKEN`` (local development on loopback:
            :meth:`check` refuses anything else); True otherwise.
        """
        if self.ALLOW_UNSIGNED_WEBHOOKS is not None:
            return not self.ALLOW_UNSIGNED_WEBHOOKS
        return bool(self.auth_token)

    def secrets(self) -> list[str]:
        """Every secret value set, in clear, for log redaction (never log the list)."""
        fields = (self.TWILIO_AUTH_TOKEN, self.API_KEY, self.GOOGLE_API_KEY, self.OPENAI_API_KEY)
        return [f.get_secret_value() for f in fields if f is not None and f.get_secret_value()]


def load_settings(**overrides) -> Settings:
    """Read the settings from the environment and ``.env``.

    Args:
        **overrides: Values that win over the environment (used by tests).

    Returns:
        The validated settings.

    Raises:
        ConfigError: When the configuration cannot work; the message names the variable.
    """
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except ValueError as e:  # pydantic's ValidationError: wrong type or value
        cause = getattr(e, "errors", lambda: [])()
        if cause and isinstance(cause[0].get("ctx", {}).get("error"), ConfigError):
            raise cause[0]["ctx"]["error"] from None
        names = ", ".join(str(err["loc"][0]) for err in cause if err.get("loc")) or "settings"
        raise ConfigError(f"invalid configuration ({names}): {e}") from None
