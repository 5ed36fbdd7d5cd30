"""What a pipeline graph is built from: one call's facts and shared resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipecat.transports.websocket.fastapi import FastAPIWebsocketTransport

from config import Settings
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
