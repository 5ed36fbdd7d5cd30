"""Twilio's REST API, through the twilio SDK: placing calls, changing and completing them.

Sources: https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource
(``Twiml``, ``StatusCallback``/``StatusCallbackEvent``, ``Timeout``, ``MachineDetection``,
``AsyncAmd``/``AsyncAmdStatusCallback``) and
https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource
(``Status=completed`` hangs up a call in progress; ``Twiml`` replaces what the call
is doing, which also ends its ``<Connect><Stream>``).

``TWILIO_API_BASE_URL`` points the SDK at another host (the SDK's ``api.base_url``);
the tests run against a local fake of the Call resource.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from loguru import logger
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from config import Settings

__all__ = ["RestError", "complete_call", "create_call", "rest_client", "update_call_twiml"]

#: Seconds a REST request may take before we give up on it.
REST_TIMEOUT_SECS = 15.0
#: Twilio's limit on the ``Twiml`` parameter of the Call resource, in characters.
MAX_TWIML_CHARS = 4000


class RestError(RuntimeError):
    """Twilio refused a request or could not be reached; the message says which and why.

    Attributes:
        status: Twilio's HTTP status, or None when Twilio was not reached.
        code: Twilio's error code (e.g. 21211 for an invalid ``To``), if any.
    """

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def rest_client(settings: Settings) -> Client | None:
    """An async-capable Twilio REST client, or None without credentials.

    Args:
        settings: Needs ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN``;
            ``TWILIO_API_BASE_URL`` points it at another host (a local fake in tests).

    Returns:
        The client, or None when either credential is missing.
    """
    if not (settings.TWILIO_ACCOUNT_SID and settings.auth_token):
        return None
    client = Client(
        settings.TWILIO_ACCOUNT_SID,
        settings.auth_token,
        http_client=AsyncTwilioHttpClient(timeout=REST_TIMEOUT_SECS),
    )
    if settings.TWILIO_API_BASE_URL:
        client.api.base_url = settings.TWILIO_API_BASE_URL.rstrip("/")
    return client


@asynccontextmanager
async def _client(settings: Settings, what: str):
    client = rest_client(settings)
    if client is None:
        raise RestError(f"cannot {what}: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    try:
        yield client
    except TwilioRestException as e:
        raise RestError(f"Twilio refused to {what}: {e.status} {e.msg}", status=e.status,
                        code=e.code) from None
    except RestError:
        raise
    except Exception as e:  # network trouble, timeouts
        raise RestError(f"could not reach Twilio's REST API to {what}: {type(e).__name__}: {e}") from None
    finally:
        await client.http_client.close()


async def create_call(
    settings: Settings,
    *,
    to: str,
    from_: str,
    twiml: str,
    status_callback: str,
    amd_callback: str,
    ring_timeout_secs: int,
    amd_timeout_secs: int,
) -> str:
    """Place an outbound call running ``twiml`` once answered, with asynchronous AMD.

    With ``AsyncAmd=true`` Twilio runs the TwiML as soon as the call is answered and
    posts ``AnsweredBy`` to ``amd_callback`` when detection ends; with
    ``MachineDetection=DetectMessageEnd`` a machine's verdict only comes at the end
    of its greeting (the beep), the moment to leave a message. Source:
    https://www.twilio.com/docs/voice/answering-machine-detection

    Args:
        settings: Credentials and REST base URL.
        to: The number to call (E.164).
        from_: Our caller ID (E.164, one of the account's numbers).
        twiml: What the call runs when answered (at most 4000 characters).
        status_callback: Absolute URL for ``initiated``, ``ringing``, ``answered``
            and ``completed`` callbacks.
        amd_callback: Absolute URL for the AMD verdict.
        ring_timeout_secs: How long to let it ring (``Timeout``), in s.
        amd_timeout_secs: ``MachineDetectionTimeout``, in s (Twilio allows 3-59).

    Returns:
        The new call's SID.

    Raises:
        RestError: No credentials, the TwiML is too long, Twilio refused (e.g. an
            invalid number) or could not be reached.
    """
    if len(twiml) > MAX_TWIML_CHARS:
        raise RestError(f"the call's TwiML is {len(twiml)} characters; Twilio takes {MAX_TWIML_CHARS}")
    async with _client(settings, f"call {to}") as client:
        call = await client.calls.create_async(
            to=to,
            from_=from_,
            twiml=twiml,
            status_callback=status_callback,
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            status_callback_method="POST",
            timeout=ring_timeout_secs,
            machine_detection="DetectMessageEnd",
            machine_detection_timeout=amd_timeout_secs,
            async_amd="true",
            async_amd_status_callback=amd_callback,
            async_amd_status_callback_method="POST",
        )
    logger.info(f"[{call.sid}] outbound call to {to} placed through Twilio's REST API")
    return call.sid


async def update_call_twiml(settings: Settings, call_sid: str, twiml: str) -> None:
    """Make a call in progress run new TwiML (ending whatever it was doing).

    Args:
        settings: Credentials and REST base URL.
        call_sid: The call.
        twiml: The new instructions.

    Raises:
        RestError: As for :func:`create_call`.
    """
    async with _client(settings, "update the call") as client:
        await client.calls(call_sid).update_async(twiml=twiml)
    logger.info(f"[{call_sid}] new TwiML sent through Twilio's REST API")


async def complete_call(settings: Settings, call_sid: str) -> bool:
    """Hang up a call in progress (``Status=completed``).

    Args:
        settings: The server's settings (credentials, REST base URL).
        call_sid: The call to complete.

    Returns:
        True if Twilio accepted it; False without credentials or on an error
        (logged, never raised: the call is ending either way).
    """
    if not (settings.TWILIO_ACCOUNT_SID and settings.auth_token):
        logger.info(f"[{call_sid}] no Twilio credentials: not completing the call over REST")
        return False
    try:
        async with _client(settings, "complete the call") as client:
            await client.calls(call_sid).update_async(status="completed")
    except RestError as e:
        logger.warning(f"[{call_sid}] {e}")
        return False
    logger.info(f"[{call_sid}] completed through Twilio's REST API")
    return True
