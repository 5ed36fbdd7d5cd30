"""Twilio's REST API, through the twilio SDK: completing a call the agent ended.

Source: https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource
(``Status=completed`` hangs up a call in progress).
"""

from __future__ import annotations

from loguru import logger
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from config import Settings

__all__ = ["complete_call", "rest_client"]


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
        settings.TWILIO_ACCOUNT_SID, settings.auth_token, http_client=AsyncTwilioHttpClient()
    )
    if settings.TWILIO_API_BASE_URL:
        client.api.base_url = settings.TWILIO_API_BASE_URL.rstrip("/")
    return client


async def complete_call(settings: Settings, call_sid: str) -> bool:
    """Hang up a call in progress (``Status=completed``).

    Args:
        settings: The server's settings (credentials, REST base URL).
        call_sid: The call to complete.

    Returns:
        True if Twilio accepted it; False without credentials or on an error
        (logged, never raised: the call is ending either way).
    """
    client = rest_client(settings)
    if client is None:
        logger.info(f"[{call_sid}] no Twilio credentials: not completing the call over REST")
        return False
    try:
        await client.calls(call_sid).update_async(status="completed")
        logger.info(f"[{call_sid}] completed through Twilio's REST API")
        return True
    except TwilioRestException as e:
        logger.warning(f"[{call_sid}] Twilio refused to complete the call: {e.status} {e.msg}")
    except Exception as e:  # network trouble must not break the call's teardown
        logger.warning(f"[{call_sid}] could not reach Twilio's REST API: {e}")
    finally:
        await client.http_client.close()
    return False
