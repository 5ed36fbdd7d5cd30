"""The phone agent's web server: Twilio's voice webhook, its media streams, call records.

Routes:

- ``GET /health``: status, provider and number of active calls.
- ``POST /twilio/incoming-call``: Twilio's voice webhook. Answers TwiML that connects
  the call to our media stream, with the call's metadata as ``<Parameter>``s (Twilio
  drops query strings from Stream URLs). Signed requests are checked when
  ``TWILIO_AUTH_TOKEN`` is set.
- ``WS /twilio/media-stream``: Twilio Media Streams. One pipeline per call (``bot.py``).
- ``GET /api/calls/{call_sid}``: the call record with its turns.

Sources: https://www.twilio.com/docs/voice/twiml/stream,
https://www.twilio.com/docs/usage/webhooks/webhooks-security,
https://www.twilio.com/docs/voice/media-streams/websocket-messages

Run with ``python server.py`` (``make run``). With provider ``local`` the offline
agent is started in-process on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from loguru import logger
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from bot import StreamStart, run_bot
from config import ConfigError, Settings, load_settings
from resources import Resources

MEDIA_STREAM_PATH = "/twilio/media-stream"
#: How long a new media stream may take to send ``start`` before we close it, in s.
START_TIMEOUT_SECS = 10.0
# Webhook form fields passed on to the media stream as <Parameter>s (Twilio's names).
_CALL_PARAMETERS = {"From": "from", "To": "to", "CallerCountry": "caller_country", "Direction": "direction"}


def stream_url(settings: Settings) -> str:
    """The WebSocket URL Twilio connects the media stream to.

    Args:
        settings: Gives ``PUBLIC_BASE_URL`` (https -> wss, http -> ws).

    Returns:
        e.g. ``wss://abc.ngrok.app/twilio/media-stream``.
    """
    parts = urlsplit(settings.public_base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{MEDIA_STREAM_PATH}"


def connect_twiml(settings: Settings, form: dict[str, str]) -> str:
    """TwiML that connects the call to our media stream.

    Args:
        settings: The server's settings.
        form: The voice webhook's form fields.

    Returns:
        ``<Response><Connect><Stream url=...><Parameter .../>...`` as XML text.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(settings))
    for field, name in _CALL_PARAMETERS.items():
        if form.get(field):
            stream.parameter(name=name, value=form[field])
    response.append(connect)
    return str(response)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: The settings; read from the environment when None.

    Returns:
        The app. Its lifespan starts the shared :class:`~resources.Resources` (stores,
        offline agents, pre-rendered audio).

    Raises:
        ConfigError: If the configuration cannot work.
    """
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.resources = await Resources.start(settings)
        app.state.calls = {}
        logger.info(f"serving calls with provider '{settings.provider}' at {settings.public_base_url}")
        try:
            yield
        finally:
            for task in list(app.state.calls.values()):
                task.cancel()
            if app.state.calls:
                await asyncio.wait(list(app.state.calls.values()), timeout=5)
            await app.state.resources.stop()

    app = FastAPI(title="Phone voice agent", lifespan=lifespan)
    app.state.settings = settings

    @app.get("/health")
    async def health() -> dict:
        """Liveness and load: ``{status, provider, active_calls}``."""
        return {"status": "ok", "provider": settings.provider, "active_calls": len(app.state.calls)}

    @app.post("/twilio/incoming-call")
    async def incoming_call(request: Request) -> Response:
        """Twilio's voice webhook: answer with TwiML connecting the media stream."""
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if settings.auth_token:
            url = settings.public_base_url + request.url.path
            if request.url.query:
                url += "?" + request.url.query
            signature = request.headers.get("X-Twilio-Signature")
            if not signature:
                logger.warning(f"webhook refused: no X-Twilio-Signature header (url {url})")
                raise HTTPException(403, "missing X-Twilio-Signature")
            if not RequestValidator(settings.auth_token).validate(url, form, signature):
                logger.warning(
                    f"webhook refused: X-Twilio-Signature does not match {url} with "
                    f"{len(form)} form fields (is PUBLIC_BASE_URL the URL Twilio calls?)"
                )
                raise HTTPException(403, "invalid X-Twilio-Signature")
        if not form.get("CallSid"):
            logger.warning("webhook refused: no CallSid in the form")
            raise HTTPException(400, "not a Twilio voice webhook: CallSid missing")
        logger.info(f"[{form['CallSid']}] incoming call from {form.get('From')} to {form.get('To')}")
        return Response(connect_twiml(settings, form), media_type="application/xml")

    @app.websocket(MEDIA_STREAM_PATH)
    async def media_stream(websocket: WebSocket) -> None:
        """Twilio Media Streams: read ``connected`` and ``start``, then run the call."""
        await websocket.accept()
        start = await _read_start(websocket)
        if start is None:
            await _close(websocket)
            return
        if start.call_sid in app.state.calls:
            logger.warning(f"[{start.call_sid}] a second stream for a live call: closing it")
            await _close(websocket)
            return
        task = asyncio.current_task()
        app.state.calls[start.call_sid] = task
        try:
            await run_bot(websocket, start, app.state.resources)
        finally:
            app.state.calls.pop(start.call_sid, None)
            await _close(websocket)

    @app.get("/api/calls/{call_sid}")
    async def get_call(call_sid: str) -> JSONResponse:
        """The call record: metadata, end reason and turns in order."""
        record = app.state.resources.store.get_call(call_sid)
        if record is None:
            raise HTTPException(404, f"no call {call_sid}")
        return JSONResponse(record)

    return app


async def _read_start(websocket: WebSocket) -> StreamStart | None:
    """Read messages until Twilio's ``start``; None if it never comes or is unusable."""
    try:
        async with asyncio.timeout(START_TIMEOUT_SECS):
            while True:
                received = await websocket.receive()
                if received["type"] == "websocket.disconnect":
                    logger.info("media stream closed before start")
                    return None
                text = received.get("text")
                if text is None:
                    logger.warning("media stream: ignoring a binary message")
                    continue
                try:
                    message = json.loads(text)
                except ValueError:
                    logger.warning("media stream: ignoring a message that is not JSON")
                    continue
                event = message.get("event") if isinstance(message, dict) else None
                if event == "start":
                    try:
                        return StreamStart.from_message(message)
                    except ValueError as e:
                        logger.warning(f"media stream: bad start message ({e}); closing")
                        return None
                if event != "connected":
                    logger.debug(f"media stream: ignoring {event!r} before start")
    except TimeoutError:
        logger.warning(f"media stream: no start message within {START_TIMEOUT_SECS:.0f} s; closing")
    except (WebSocketDisconnect, RuntimeError):
        logger.info("media stream closed before start")
    return None


async def _close(websocket: WebSocket) -> None:
    try:
        await websocket.close()
    except Exception:
        pass  # already closed by the peer or the transport


def main() -> None:
    """Start the server on ``HOST``:``PORT`` (exit status 2 on a bad configuration)."""
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    logger.remove()
    logger.add(sys.stderr, level=settings.LOG_LEVEL)
    uvicorn.run(create_app(settings), host=settings.HOST, port=settings.PORT)


if __name__ == "__main__":
    main()
