"""The TwiML we answer Twilio with, built with the twilio SDK.

- :func:`connect_twiml`: an incoming call, connected to our media stream;
- :func:`outbound_twiml`: what an outbound call runs once answered (the same stream);
- :func:`reject_twiml`: a call we cannot take (capacity, shutting down);
- :func:`voicemail_twiml`: a message left on an answering machine, then hang up.

Sources: https://www.twilio.com/docs/voice/twiml/stream (``<Connect><Stream>``; the
``url`` takes no query string, so per-call data travels as ``<Parameter>``s that come
back in the ``start`` message's ``customParameters``),
https://www.twilio.com/docs/voice/twiml/reject, https://www.twilio.com/docs/voice/twiml/say,
https://www.twilio.com/docs/voice/twiml/hangup.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, VoiceResponse

from config import Settings
from pipelines.selection import number_parameters
from security import STREAM_TOKEN_PARAMETER

__all__ = [
    "MEDIA_STREAM_PATH",
    "connect_twiml",
    "outbound_twiml",
    "reject_twiml",
    "stream_url",
    "voicemail_twiml",
]

MEDIA_STREAM_PATH = "/twilio/media-stream"
# Webhook form fields passed on to the media stream as <Parameter>s (Twilio's names).
_CALL_PARAMETERS = {"From": "from", "To": "to", "CallerCountry": "caller_country", "Direction": "direction"}


def stream_url(settings: Settings) -> str:
    """The WebSocket URL Twilio connects the media stream to.

    Args:
        settings: Gives ``PUBLIC_BASE_URL`` (https -> wss, http -> ws) and
            ``WORKER_PREFIX`` (this process's path behind a shared origin).

    Returns:
        e.g. ``wss://abc.ngrok.app/twilio/media-stream``, or
        ``wss://voice.example.com/w1/twilio/media-stream`` with ``WORKER_PREFIX=/w1``.
    """
    parts = urlsplit(settings.worker_base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}{MEDIA_STREAM_PATH}"


def _stream_response(settings: Settings, parameters: dict[str, str]) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(settings))
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def connect_twiml(settings: Settings, form: dict[str, str], token: str | None = None) -> str:
    """TwiML that connects an incoming call to our media stream.

    Args:
        settings: The server's settings.
        form: The voice webhook's form fields (``From``, ``To``, ...).
        token: The call's one-time stream token, sent as ``<Parameter name="stream_token">``.

    Returns:
        ``<Response><Connect><Stream url=...><Parameter .../>...`` as XML text, with
        the call's graph (``graph``) and the dialled number's agent settings
        (``agent_language``, ...) from ``GRAPH`` / ``NUMBER_GRAPHS``.
    """
    parameters = {name: form.get(field, "") for field, name in _CALL_PARAMETERS.items()}
    parameters.update(number_parameters(settings.GRAPH, settings.NUMBER_GRAPHS, form.get("To")))
    if token:
        parameters[STREAM_TOKEN_PARAMETER] = token
    return _stream_response(settings, parameters)


def outbound_twiml(settings: Settings, token: str, parameters: dict[str, str]) -> str:
    """TwiML an outbound call runs once answered: our media stream, with its token.

    Args:
        settings: The server's settings.
        token: The call's one-time stream token.
        parameters: Further ``<Parameter>``s (``direction``, ``from``, ``to``, ``preset``).

    Returns:
        The XML text (well under Twilio's 4000-character limit for ``Twiml``).
    """
    return _stream_response(settings, {**parameters, STREAM_TOKEN_PARAMETER: token})


def reject_twiml() -> str:
    """``<Reject reason="busy"/>``: the caller hears busy and the call is not answered (nor billed)."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return str(response)


def voicemail_twiml(message: str) -> str:
    """Say ``message`` (Twilio's text-to-speech), then hang up.

    Args:
        message: The words to leave on the answering machine.

    Returns:
        ``<Response><Say>message</Say><Hangup/></Response>``.
    """
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)
