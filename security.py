"""Locked doors: Twilio's signatures, one-time media-stream tokens, our API key, log redaction.

- **Twilio's webhooks** (:func:`twilio_webhook`, a FastAPI dependency) carry an
  ``X-Twilio-Signature``: base64 HMAC-SHA1, keyed with the account's auth token, of the
  exact URL Twilio requested followed by the sorted POST parameters. We rebuild that
  URL from ``PUBLIC_BASE_URL`` (the origin Twilio was given) plus the path and query the
  server saw, never from the ``Host`` or ``X-Forwarded-*`` headers, which a client
  controls; a TLS-terminating proxy or tunnel in front of us therefore needs no
  special handling. The check itself is the twilio SDK's ``RequestValidator`` (it
  also tries the URL with and without the default port, as Twilio is inconsistent
  there). Source: https://www.twilio.com/docs/usage/webhooks/webhooks-security
- **The media stream's upgrade request** is signed the same way over the ``wss://``
  URL of the ``<Stream>`` with no parameters (Twilio signs every request it makes to
  the app, WebSocket handshakes included; the scheme is ``wss``, see
  https://github.com/twilio-labs/twilio-aspnet/issues/162):
  :func:`stream_signature_problem`. Source:
  https://www.twilio.com/docs/global-infrastructure/firewall-configurations/media-streams-configuration
- **A one-time stream token** (:class:`StreamTokens`): the TwiML that connects a call
  to our stream carries a fresh random token as a ``<Parameter>``; Twilio hands it
  back in the ``start`` message's ``customParameters``
  (https://www.twilio.com/docs/voice/twiml/stream#custom-parameters). A stream whose
  token is missing, unknown, expired, already used or issued for another call is
  closed before any model session opens, so a recorded or forged stream cannot spend
  our model credits even with a replayed upgrade signature.
- **Our own endpoints** (:func:`require_api_key`): ``Authorization: Bearer <API_KEY>``
  when ``API_KEY`` is set; without it, only clients on this machine that did not come
  through a proxy.
- **Logs** (:func:`install_log_redaction`): every configured secret and every stream
  token is replaced before a line is written.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, WebSocket
from loguru import logger
from starlette.datastructures import URL
from twilio.request_validator import RequestValidator

from config import Settings, is_loopback

__all__ = [
    "SIGNATURE_HEADER",
    "STREAM_TOKEN_PARAMETER",
    "StreamGrant",
    "StreamTokenError",
    "StreamTokens",
    "install_log_redaction",
    "is_local_client",
    "public_url",
    "redact",
    "require_api_key",
    "stream_signature_problem",
    "twilio_webhook",
]

SIGNATURE_HEADER = "X-Twilio-Signature"
#: Name of the ``<Parameter>`` carrying the one-time stream token.
STREAM_TOKEN_PARAMETER = "stream_token"
#: Every stream token starts with this, so logs can be scrubbed of tokens by pattern.
TOKEN_PREFIX = "st_"
_TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{16,}")
#: Headers a proxy adds; a request carrying one did not start on this machine.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


# ------------------------------------------------------------------ signatures


def public_url(settings: Settings, url: URL, *, websocket: bool = False) -> str:
    """The URL Twilio requested, as Twilio saw it: ``PUBLIC_BASE_URL`` + path + query.

    Args:
        settings: Gives ``PUBLIC_BASE_URL``.
        url: The URL the server saw (any host, e.g. ``http://127.0.0.1:8000/...``).
        websocket: For a WebSocket upgrade: the scheme becomes ``wss`` (``ws`` for
            an http base), as in the ``<Stream url>`` Twilio connected to.

    Returns:
        e.g. ``https://abc.ngrok.app/twilio/call-status?x=1``.
    """
    base = settings.public_base_url
    if websocket:
        parts = urlsplit(base)
        base = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}"
    return base + url.path + (f"?{url.query}" if url.query else "")


class _Form:
    """A webhook's form fields with every value of repeated fields (for the SDK's validator)."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items

    def __iter__(self):
        return iter(dict.fromkeys(k for k, _ in self.items))

    def __len__(self) -> int:
        return len(self.items)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]


async def twilio_webhook(request: Request) -> dict[str, str]:
    """FastAPI dependency for Twilio's webhooks: the form, once its signature is checked.

    Args:
        request: Twilio's POST (``application/x-www-form-urlencoded``).

    Returns:
        The form fields (the first value of a repeated field).

    Raises:
        HTTPException: 403 when signatures are required and the header is missing
            or does not match the public URL and the form; 400 when the body is
            not a form of text fields.
    """
    settings: Settings = request.app.state.settings
    try:
        form = await request.form()
    except Exception as e:  # malformed multipart and the like
        logger.warning(f"webhook {request.url.path} refused: unreadable form ({type(e).__name__})")
        raise HTTPException(400, "not a form-encoded Twilio webhook") from None
    items = list(form.multi_items())
    if any(not isinstance(v, str) for _, v in items):
        raise HTTPException(400, "Twilio webhooks carry text fields only")
    if settings.signatures_required:
        url = public_url(settings, request.url)
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            logger.warning(f"webhook refused: no {SIGNATURE_HEADER} header (url {url})")
            raise HTTPException(403, f"missing {SIGNATURE_HEADER}")
        if not RequestValidator(settings.auth_token).validate(url, _Form(items), signature):
            logger.warning(
                f"webhook refused: {SIGNATURE_HEADER} does not match {url} with {len(items)} "
                "form fields (is PUBLIC_BASE_URL the URL Twilio calls?)"
            )
            raise HTTPException(403, f"invalid {SIGNATURE_HEADER}")
    return {k: v for k, v in reversed(items)}  # first value wins


def stream_signature_problem(settings: Settings, websocket: WebSocket) -> str | None:
    """Check the media stream's WebSocket upgrade request, before accepting it.

    Args:
        settings: Whether signatures are required, the token, ``PUBLIC_BASE_URL``.
        websocket: The connection, not yet accepted.

    Returns:
        None if the request may proceed, else what is wrong (for the log).
    """
    if not settings.signatures_required:
        return None
    signature = websocket.headers.get(SIGNATURE_HEADER)
    url = public_url(settings, websocket.url, websocket=True)
    if not signature:
        return f"no {SIGNATURE_HEADER} header on the upgrade request (url {url})"
    if not RequestValidator(settings.auth_token).validate(url, {}, signature):
        return f"{SIGNATURE_HEADER} on the upgrade request does not match {url}"
    return None


# -------------------------------------------------------------- stream tokens


class StreamTokenError(Exception):
    """A media stream's token is missing, unknown, used, expired or not its call's."""


@dataclass
class StreamGrant:
    """What a stream token admits.

    Parameters:
        call_sid: The call it was issued for; None until known (an outbound call's
            TwiML is written before Twilio names the call).
        expires_at: ``time.monotonic()`` after which it is void, in s.
        plan: What the call is for (an outbound call's task), or None for inbound.
        issued_at: ``time.monotonic()`` when it was issued, in s.
    """

    call_sid: str | None
    expires_at: float
    plan: Any = None
    issued_at: float = 0.0


class StreamTokens:
    """One-time, short-lived tokens for media streams, kept in this process's memory.

    Tokens are ``st_`` + 32 random URL-safe characters (192 bits). An issued token
    that has not been redeemed or expired reserves a call slot (see
    :attr:`outstanding`).

    Args:
        clock: Monotonic clock in seconds (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._grants: dict[str, StreamGrant] = {}
        self._spent: dict[str, float] = {}  # sha256 of used tokens -> forget after (monotonic s)

    def issue(self, call_sid: str | None, ttl_secs: float, plan: Any = None) -> str:
        """A new token for one stream.

        Args:
            call_sid: The call it is for, when already known.
            ttl_secs: How long it stays valid, in s.
            plan: Carried to :meth:`redeem` (e.g. an outbound call's task).

        Returns:
            The token, for the TwiML ``<Parameter>`` only (never log it).
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = self._clock()
        self._grants[token] = StreamGrant(call_sid, now + ttl_secs, plan, issued_at=now)
        return token

    def bind(self, token: str, call_sid: str) -> None:
        """Tie a token issued before its call had a SID to that call."""
        grant = self._grants.get(token)
        if grant is not None and grant.call_sid is None:
            grant.call_sid = call_sid

    def redeem(self, token: str | None, call_sid: str) -> StreamGrant:
        """Use a token: valid once, before it expires, for its own call.

        Args:
            token: The ``start`` message's ``customParameters.stream_token``.
            call_sid: The ``start`` message's ``callSid``.

        Returns:
            The grant (the token is spent).

        Raises:
            StreamTokenError: Saying why the stream must be closed.
        """
        self._purge()
        if not token:
            raise StreamTokenError("no stream token")
        grant = self._grants.get(token)
        if grant is None:
            if _digest(token) in self._spent:
                raise StreamTokenError("stream token already used (replayed stream)")
            raise StreamTokenError("unknown stream token")
        if grant.call_sid is not None and not hmac.compare_digest(grant.call_sid, call_sid):
            raise StreamTokenError("stream token issued for another call")
        del self._grants[token]
        self._spent[_digest(token)] = grant.expires_at + 3600
        return grant

    def discard(self, token: str) -> None:
        """Void one unused token (its call could not be placed)."""
        self._grants.pop(token, None)

    def revoke_call(self, call_sid: str) -> int:
        """Void every unused token of a call (it ended before its stream came).

        Returns:
            How many tokens were voided.
        """
        stale = [t for t, g in self._grants.items() if g.call_sid == call_sid]
        for token in stale:
            del self._grants[token]
        return len(stale)

    def clear(self) -> None:
        """Void every unused token."""
        self._grants.clear()

    def count(self, predicate: Callable[[StreamGrant, float], bool]) -> int:
        """How many outstanding tokens satisfy ``predicate(grant, now)``."""
        self._purge()
        now = self._clock()
        return sum(1 for grant in self._grants.values() if predicate(grant, now))

    @property
    def outstanding(self) -> int:
        """Tokens issued, not yet redeemed and not expired: calls about to stream."""
        self._purge()
        return len(self._grants)

    def _purge(self) -> None:
        now = self._clock()
        for token in [t for t, g in self._grants.items() if g.expires_at <= now]:
            del self._grants[token]
        for digest in [d for d, until in self._spent.items() if until <= now]:
            del self._spent[digest]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------- our own API


def is_local_client(request: Request) -> bool:
    """Whether a request comes from this machine and not through a proxy.

    Args:
        request: The request.

    Returns:
        True when the peer address is loopback and no ``Forwarded``,
        ``X-Forwarded-For`` or ``X-Real-IP`` header is present (a tunnel such as
        ngrok connects from loopback but adds them).
    """
    host = request.client.host if request.client else ""
    if not is_loopback(host):
        return False
    return not any(name in request.headers for name in _FORWARDING_HEADERS)


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for our own endpoints (outbound calls, call records).

    Raises:
        HTTPException: 401 when ``API_KEY`` is set and the request lacks
            ``Authorization: Bearer <API_KEY>``; 403 when ``API_KEY`` is unset and
            the client is not on this machine (see :func:`is_local_client`).
    """
    key = request.app.state.settings.api_key
    where = f"{request.method} {request.url.path} from {request.client.host if request.client else '?'}"
    if key:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), key.encode()):
            logger.warning(f"API request refused: missing or wrong bearer key ({where})")
            raise HTTPException(
                401, "send Authorization: Bearer <API_KEY>", headers={"WWW-Authenticate": "Bearer"}
            )
        return
    if not is_local_client(request):
        logger.warning(f"API request refused: API_KEY is unset and the client is not local ({where})")
        raise HTTPException(403, "API_KEY is not set: this endpoint answers clients on this machine only")


# ----------------------------------------------------------------------- logs


def redact(text: str, secret_values: Iterable[str]) -> str:
    """Replace secrets and stream tokens in a log message.

    Args:
        text: The message.
        secret_values: Values to hide (auth token, API keys).

    Returns:
        The message with each secret as ``[redacted]`` and each stream token as
        ``st_[redacted]``.
    """
    for value in secret_values:
        if value:
            text = text.replace(value, "[redacted]")
    return _TOKEN_RE.sub(TOKEN_PREFIX + "[redacted]", text)


def install_log_redaction(settings: Settings) -> None:
    """Scrub every loguru record of the configured secrets and of stream tokens.

    Defence in depth: nothing is meant to log them in the first place.

    Args:
        settings: Gives the secrets (see :meth:`config.Settings.secrets`).
    """
    values = sorted(settings.secrets(), key=len, reverse=True)

    def patch(record: dict) -> None:
        record["message"] = redact(record["message"], values)

    logger.configure(patcher=patch)
