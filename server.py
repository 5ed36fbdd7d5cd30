"""The phone agent's web server: Twilio's webhooks, its media streams, our API.

Twilio's doors (each request signed, see ``security.py``; README "Security"):

- ``POST /twilio/incoming-call``: the voice webhook. Answers TwiML that connects the
  call to our media stream, with the call's metadata and a one-time stream token as
  ``<Parameter>``s (Twilio drops query strings from Stream URLs); past
  ``MAX_CONCURRENT_CALLS``, or while shutting down, ``<Reject reason="busy"/>``.
- ``WS /twilio/media-stream``: Twilio Media Streams. The upgrade request must be
  signed and the ``start`` message must carry an unused token of its own call; only
  then does a pipeline (``bot.py``), and with it a model session, start. An outbound
  call's stream is held silent until answering machine detection says a person
  answered (``outbound.py``).
- ``POST /twilio/call-status``: call progress callbacks (initiated, ringing,
  in-progress, completed, busy, no-answer, failed, canceled; duration).
- ``POST /twilio/amd-status``: answering machine detection's verdict for outbound
  calls; on a machine the call is given a short voicemail and hung up.

Our own doors (``Authorization: Bearer <API_KEY>``, or loopback only without a key):

- ``POST /twilio/outbound-call``: place an outbound call (README "Outbound calls").
- ``GET /api/calls/{call_sid}``: the call record with its turns and its progress.
- ``GET /api/calls?status=refused``: recent calls, e.g. those refused (``?active=true``,
  ``?q=`` search).
- The dashboard at ``/``, ``WS /events``, ``GET /metrics``, call exports: ``dashboard.py``.

And ``GET /health``: ``{status: ok|draining, provider, active_calls[, mcp]}`` (503 while draining).

SIGTERM (or Ctrl-C) drains: no new calls (the webhook rejects them as busy, health
says ``draining``), active calls go on for up to ``SHUTDOWN_GRACE_SECS``, then the
rest are ended and the process exits. A second signal exits at once.

Sources: https://www.twilio.com/docs/voice/twiml/stream,
https://www.twilio.com/docs/usage/webhooks/webhooks-security,
https://www.twilio.com/docs/voice/media-streams/websocket-messages,
https://www.twilio.com/docs/voice/api/call-resource (status callbacks),
https://www.twilio.com/docs/voice/answering-machine-detection,
https://www.twilio.com/docs/voice/twiml/reject

Run with ``python server.py`` (``make run``). With provider ``local`` the offline
agent is started in-process on a free loopback port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import re
import signal
import sys
from contextlib import asynccontextmanager

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from loguru import logger

from bot import StreamStart, run_bot
import dashboard
import diagnostics
import wait_for
from config import ConfigError, Settings, is_loopback, load_settings
from outbound import AMD_FAX, AMD_MACHINE, AnsweringMachineGate, OutboundCallRequest, plan_call
from processors.vad import shared_silero_session
from records import TERMINAL_STATUSES
from resources import Resources
from security import (
    STREAM_TOKEN_PARAMETER,
    StreamGrant,
    StreamTokenError,
    StreamTokens,
    install_log_redaction,
    require_api_key,
    stream_signature_problem,
    twilio_webhook,
)
from twilio_rest import RestError, complete_call, create_call, update_call_twiml
from twiml import (
    MEDIA_STREAM_PATH,
    connect_twiml,
    outbound_twiml,
    reject_twiml,
    stream_url,
    voicemail_twiml,
)

__all__ = ["MEDIA_STREAM_PATH", "WorkerPrefix", "connect_twiml", "create_app", "drain", "main", "stream_url"]

#: How long a new media stream may take to send ``start`` before we close it, in s.
START_TIMEOUT_SECS = 10.0
#: WebSocket close code for a stream we refuse (RFC 6455 "policy violation").
POLICY_VIOLATION = 1008
#: How much longer than AMD's own timeout a held outbound stream waits for the verdict, in s.
AMD_WAIT_MARGIN_SECS = 5.0
#: Twilio may add this much to an outbound call's ring timeout, in s (Call resource, ``Timeout``).
RING_TIMEOUT_BUFFER_SECS = 5.0
#: While draining, how long an incoming call's stream may take to connect after its TwiML, in s.
CONNECT_WAIT_SECS = 5.0
_STATUS_RE = re.compile(r"[a-z-]{1,32}")  # CallStatus values, e.g. no-answer
_ANSWERED_BY_RE = re.compile(r"[a-z_]{1,32}")  # AnsweredBy values, e.g. machine_end_beep
_XML = "application/xml"


class WorkerPrefix:
    """ASGI middleware: serve ``<prefix>/x`` as ``/x``, for a process behind a shared origin.

    Several server processes can share one public origin when a proxy routes each
    ``WORKER_PREFIX`` to its process and everything else (the voice webhook) to any of
    them (docs/deployment.md). The process that answers a webhook names its prefix in
    the TwiML's stream URL and in the call's callbacks, so the call comes back to it.

    A request whose path starts with the prefix gets it as its ASGI ``root_path``:
    routes match the rest, and ``request.url`` keeps the whole path, which is the URL
    Twilio requested and signed. Other requests pass unchanged. The proxy must pass the
    path on as it is (not strip the prefix).

    Args:
        app: The ASGI app.
        prefix: e.g. ``/w1``.
    """

    def __init__(self, app, prefix: str):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        """Handle one ASGI connection (``http``, ``websocket`` or ``lifespan``)."""
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                scope = {**scope, "root_path": scope.get("root_path", "") + self.prefix}
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: The settings; read from the environment when None.

    Returns:
        The app. Its lifespan starts the shared :class:`~resources.Resources` (stores,
        offline agents, pre-rendered audio) and the call-progress store.

    Raises:
        ConfigError: If the configuration cannot work.
    """
    settings = settings or load_settings()
    wait_for.install()  # Pipecat's per-frame asyncio.wait_for without a task each (Python 3.11)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.resources = await Resources.start(settings)
        shared_silero_session()  # loaded now, not in the first call (~40 ms of the event loop)
        # Startup's ~220k objects (modules, Pipecat, the app) live as long as the process:
        # frozen, full collections skip them (docs.python.org/3/library/gc.html#gc.freeze).
        # Python ran one every minute or so at 10 calls, holding every call's audio for
        # 135-143 ms; with the freeze, 14-24 ms.
        gc.collect()
        gc.freeze()
        app.state.statuses = app.state.resources.store  # status changes live in the call records
        dashboard.start(app)
        logger.info(
            f"serving calls with provider '{settings.provider}' at {settings.worker_base_url} "
            f"(pid {os.getpid()}, at most {settings.MAX_CONCURRENT_CALLS} calls)"
        )
        _log_doors(settings)
        if settings.DIAGNOSTICS:
            diagnostics.STATS.start_lag_probe()
        try:
            yield
        finally:
            await diagnostics.STATS.stop_lag_probe()
            await _end_calls(app)
            await app.state.resources.stop()

    app = FastAPI(title="Phone voice agent", lifespan=lifespan)
    if settings.WORKER_PREFIX:
        app.add_middleware(WorkerPrefix, prefix=settings.WORKER_PREFIX)
    app.state.settings = settings
    app.state.calls = {}  # call SID -> the task serving its media stream
    app.state.tokens = StreamTokens()
    app.state.amd = AnsweringMachineGate()
    app.state.outbound = {}  # call SID -> OutboundPlan, until the call ends
    app.state.draining = False
    tokens: StreamTokens = app.state.tokens
    amd: AnsweringMachineGate = app.state.amd
    dashboard.install(app)  # /, /events, /metrics, exports (dashboard.py)
    if settings.DIAGNOSTICS:
        diagnostics.install(app, dependencies=[Depends(require_api_key)])

    def refusal() -> str | None:
        """Why a new call cannot be taken now (``draining``, ``capacity``), or None."""
        if app.state.draining:
            return "draining"
        if len(app.state.calls) + tokens.outstanding >= settings.MAX_CONCURRENT_CALLS:
            return "capacity"
        return None

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and load: ``{status, provider, active_calls[, mcp]}``; 503 while draining.

            ``mcp`` (when MCP servers are configured) maps each server to ``{state:
            connecting|connected|down, tools, error}``; a down MCP server does not make
            the process unhealthy, its tools are simply not offered.
            """
        draining = app.state.draining
        body = {"status": "draining" if draining else "ok", "provider": settings.provider,
                "active_calls": len(app.state.calls)}
        mcp = app.state.resources.mcp if getattr(app.state, "resources", None) else []
        if mcp:
            body["mcp"] = {source.config.label: source.status() for source in mcp}
        return JSONResponse(body, status_code=503 if draining else 200)

    @app.post("/twilio/incoming-call")
    async def incoming_call(form: dict[str, str] = Depends(twilio_webhook)) -> Response:
        """Twilio's voice webhook: connect the media stream, or reject when full."""
        call_sid = form.get("CallSid")
        if not call_sid:
            logger.warning("webhook refused: no CallSid in the form")
            raise HTTPException(400, "not a Twilio voice webhook: CallSid missing")
        reason = refusal()
        if reason:
            logger.warning(
                f"[{call_sid}] rejecting the call as busy ({reason}): {len(app.state.calls)} "
                f"active, {tokens.outstanding} connecting, limit {settings.MAX_CONCURRENT_CALLS}"
            )
            try:
                await app.state.statuses.record_refusal(
                    call_sid, reason, from_number=form.get("From"), to_number=form.get("To"),
                    direction=form.get("Direction") or "inbound",
                )
            except Exception as e:  # the caller still gets a clean busy
                logger.error(f"[{call_sid}] could not record the refusal: {e}")
            return Response(reject_twiml(), media_type=_XML)
        logger.info(f"[{call_sid}] incoming call from {form.get('From')} to {form.get('To')}")
        token = tokens.issue(call_sid, settings.STREAM_TOKEN_TTL_SECS)
        return Response(connect_twiml(settings, form, token), media_type=_XML)

    @app.post("/twilio/call-status", status_code=204)
    async def call_status(form: dict[str, str] = Depends(twilio_webhook)) -> Response:
        """Twilio's call progress callback: append to the call's status history."""
        call_sid, status = form.get("CallSid"), form.get("CallStatus", "")
        if not call_sid or not _STATUS_RE.fullmatch(status):
            logger.warning("status callback refused: no CallSid or no valid CallStatus")
            raise HTTPException(400, "not a Twilio status callback: CallSid and CallStatus needed")
        duration = _int(form.get("CallDuration"))
        await app.state.statuses.record_status(
            call_sid, status, sequence_number=_int(form.get("SequenceNumber")),
            duration_s=duration, twilio_timestamp=form.get("Timestamp"),
            direction=form.get("Direction"), from_number=form.get("From"), to_number=form.get("To"),
        )
        took = f" ({duration} s)" if duration is not None else ""
        logger.info(f"[{call_sid}] call status: {status}{took}")
        if status in TERMINAL_STATUSES:
            tokens.revoke_call(call_sid)  # a stream can no longer come: free the slot
            amd.forget(call_sid)
            app.state.outbound.pop(call_sid, None)
        return Response(status_code=204)

    @app.post("/twilio/amd-status", status_code=204)
    async def amd_status(form: dict[str, str] = Depends(twilio_webhook)) -> Response:
        """Answering machine detection's verdict: wake the held stream, or leave a voicemail."""
        call_sid, answered_by = form.get("CallSid"), form.get("AnsweredBy", "")
        if not call_sid or not _ANSWERED_BY_RE.fullmatch(answered_by):
            logger.warning("AMD callback refused: no CallSid or no valid AnsweredBy")
            raise HTTPException(400, "not a Twilio AMD callback: CallSid and AnsweredBy needed")
        duration_ms = _int(form.get("MachineDetectionDuration"))
        logger.info(f"[{call_sid}] answered by {answered_by} (AMD took {duration_ms} ms)")
        voicemail = None
        if answered_by in AMD_MACHINE:
            plan = app.state.outbound.get(call_sid)
            if plan is None:
                logger.warning(f"[{call_sid}] a machine answered a call we know nothing of: hanging up")
                await complete_call(settings, call_sid)
            else:
                try:
                    await update_call_twiml(settings, call_sid, voicemail_twiml(plan.voicemail))
                    voicemail = plan.voicemail
                    logger.info(f"[{call_sid}] leaving a voicemail, then hanging up")
                except RestError as e:
                    logger.warning(f"[{call_sid}] could not leave the voicemail: {e}")
        elif answered_by == AMD_FAX:
            await complete_call(settings, call_sid)
        await app.state.statuses.record_answered_by(
            call_sid, answered_by, amd_duration_ms=duration_ms, voicemail=voicemail
        )
        amd.set(call_sid, answered_by)
        return Response(status_code=204)

    @app.post("/twilio/outbound-call", status_code=201, dependencies=[Depends(require_api_key)])
    async def outbound_call(body: OutboundCallRequest) -> dict:
        """Place an outbound call running a task, with answering machine detection."""
        if not (settings.TWILIO_ACCOUNT_SID and settings.auth_token):
            raise HTTPException(503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        from_number = body.from_ or settings.TWILIO_FROM_NUMBER
        if not from_number:
            raise HTTPException(400, "no caller ID: give 'from' or set TWILIO_FROM_NUMBER")
        reason = refusal()
        if reason:
            logger.warning(f"outbound call to {body.to} refused ({reason})")
            detail = ("the server is shutting down" if reason == "draining"
                      else f"MAX_CONCURRENT_CALLS={settings.MAX_CONCURRENT_CALLS} reached")
            raise HTTPException(503, f"cannot place a call now: {detail}", headers={"Retry-After": "30"})
        plan = plan_call(body, from_number)
        ttl = settings.OUTBOUND_RING_TIMEOUT_SECS + RING_TIMEOUT_BUFFER_SECS + settings.STREAM_TOKEN_TTL_SECS
        token = tokens.issue(None, ttl, plan)
        base = settings.worker_base_url  # the callbacks come back to this process
        try:
            call_sid = await create_call(
                settings, to=plan.to, from_=plan.from_,
                twiml=outbound_twiml(settings, token, plan.twiml_parameters()),
                status_callback=f"{base}/twilio/call-status", amd_callback=f"{base}/twilio/amd-status",
                ring_timeout_secs=settings.OUTBOUND_RING_TIMEOUT_SECS,
                amd_timeout_secs=settings.AMD_TIMEOUT_SECS,
            )
        except RestError as e:
            tokens.discard(token)
            logger.warning(f"outbound call to {plan.to} failed: {e}")
            raise HTTPException(400 if e.status == 400 else 502, str(e)) from None
        tokens.bind(token, call_sid)
        plan.call_sid = call_sid
        app.state.outbound[call_sid] = plan
        await app.state.statuses.record_outbound(
            call_sid, to_number=plan.to, from_number=plan.from_, preset=plan.preset,
            task=plan.task_record(),
        )
        return {"call_sid": call_sid, "status": "queued", "to": plan.to, "from": plan.from_,
                "preset": plan.preset}

    @app.websocket(MEDIA_STREAM_PATH)
    async def media_stream(websocket: WebSocket) -> None:
        """Twilio Media Streams: check the door, read ``start``, then run the call."""
        problem = stream_signature_problem(settings, websocket)
        if problem:
            logger.warning(f"media stream refused before the handshake: {problem}")
            await websocket.close(code=POLICY_VIOLATION)  # before accept: HTTP 403
            return
        await websocket.accept()
        start = await _read_start(websocket)
        if start is None:
            await _close(websocket)
            return
        try:
            grant = tokens.redeem(start.parameters.pop(STREAM_TOKEN_PARAMETER, None), start.call_sid)
        except StreamTokenError as e:
            logger.warning(f"[{start.call_sid}] media stream refused: {e}; closed before any model session")
            await _close(websocket, POLICY_VIOLATION)
            return
        if start.call_sid in app.state.calls:
            logger.warning(f"[{start.call_sid}] a second stream for a live call: closing it")
            await _close(websocket, POLICY_VIOLATION)
            return
        app.state.calls[start.call_sid] = asyncio.current_task()
        try:
            plan = grant.plan
            if plan is not None:
                timeout = settings.AMD_TIMEOUT_SECS + AMD_WAIT_MARGIN_SECS
                answered_by = await _await_answer(websocket, amd, start.call_sid, timeout)
                if answered_by is None:
                    logger.info(f"[{start.call_sid}] hung up before anyone spoke to them")
                    return
                if answered_by in AMD_MACHINE or answered_by == AMD_FAX:
                    logger.info(f"[{start.call_sid}] {answered_by}: no conversation; closing the stream")
                    return
                start = dataclasses.replace(
                    start, parameters={**start.parameters, **plan.agent_parameters(answered_by)}
                )
                logger.info(f"[{start.call_sid}] {answered_by} answered: the agent starts the task")
            await run_bot(websocket, start, app.state.resources)
        finally:
            app.state.calls.pop(start.call_sid, None)
            await _close(websocket)

    @app.get("/api/calls/{call_sid}", dependencies=[Depends(require_api_key)])
    async def get_call(call_sid: str) -> JSONResponse:
        """The call: record (metadata, end reason, turns, tool calls) and progress (status history, AMD)."""
        record = await app.state.resources.store.get_call(call_sid)
        if record is None:
            raise HTTPException(404, f"no call {call_sid}")
        return JSONResponse(record)

    @app.get("/api/calls", dependencies=[Depends(require_api_key)])
    async def list_calls(
        status: str | None = Query(default=None, max_length=32),
        limit: int = Query(default=50, ge=1, le=500),
        active: bool | None = Query(default=None),
        q: str | None = Query(default=None, max_length=100),
    ) -> JSONResponse:
        """Recent calls, newest first; ``?status=refused`` for the refusals, ``?active=true``
        for calls in progress, ``?q=`` to search SIDs, numbers, end reasons and turn text."""
        calls = await app.state.resources.store.list(status=status, active=active, q=q, limit=limit)
        return JSONResponse({"calls": calls})

    return app


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _log_doors(settings: Settings) -> None:
    """Say at start-up how each door is locked (never the secrets themselves)."""
    if settings.signatures_required:
        logger.info("Twilio webhooks and media streams: X-Twilio-Signature required")
    else:
        logger.warning(
            "Twilio webhooks and media streams are NOT signature-checked (local development; "
            "set TWILIO_AUTH_TOKEN before exposing the server)"
        )
    if settings.api_key:
        logger.info("API endpoints: bearer API_KEY required")
    else:
        logger.info("API endpoints: API_KEY unset, clients on this machine only")
        if not is_loopback(settings.HOST):
            logger.warning(f"HOST={settings.HOST}: set API_KEY to use the API from other machines")


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
                event = _event(text)
                if event == "start":
                    try:
                        return StreamStart.from_message(json.loads(text))
                    except ValueError as e:
                        logger.warning(f"media stream: bad start message ({e}); closing")
                        return None
                if event is None:
                    logger.warning("media stream: ignoring a message that is not a JSON event")
                elif event != "connected":
                    logger.debug(f"media stream: ignoring {event!r} before start")
    except TimeoutError:
        logger.warning(f"media stream: no start message within {START_TIMEOUT_SECS:.0f} s; closing")
    except (WebSocketDisconnect, RuntimeError):
        logger.info("media stream closed before start")
    return None


def _event(text: str | None) -> str | None:
    """The ``event`` of a Media Streams message, or None if it is not one."""
    try:
        message = json.loads(text or "")
    except ValueError:
        return None
    event = message.get("event") if isinstance(message, dict) else None
    return event if isinstance(event, str) else None


async def _await_answer(
    websocket: WebSocket, amd: AnsweringMachineGate, call_sid: str, timeout_secs: float
) -> str | None:
    """Hold an outbound call's stream, reading and dropping its audio, until AMD's verdict.

    Args:
        websocket: The accepted stream, past ``start``.
        amd: Where the AMD callback leaves the verdict.
        call_sid: The call.
        timeout_secs: How long to wait; then the verdict is taken as ``unknown``.

    Returns:
        ``AnsweredBy``, or None if the call hung up (``stop`` or the socket closed) first.
    """
    verdict = amd.get(call_sid)
    if verdict:
        return verdict
    logger.info(f"[{call_sid}] outbound call answered: silent until AMD says who answered")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_secs
    waiter = asyncio.ensure_future(amd.wait(call_sid))
    receiver: asyncio.Future | None = None

    def hung_up(received: asyncio.Future) -> bool:
        if received.cancelled():
            return False
        if received.exception() is not None:
            return True  # WebSocketDisconnect, or a socket already closed
        message = received.result()
        return message["type"] == "websocket.disconnect" or _event(message.get("text")) == "stop"

    try:
        while True:
            receiver = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait(
                {waiter, receiver}, timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if receiver in done:
                if hung_up(receiver):
                    return None
                if not waiter.done():
                    continue
            receiver.cancel()  # safe: a cancelled receive loses no message
            await asyncio.gather(receiver, return_exceptions=True)
            if hung_up(receiver):
                return None
            if waiter.done():
                return waiter.result()
            logger.warning(f"[{call_sid}] no AMD verdict within {timeout_secs:.0f} s: taking it as unknown")
            return "unknown"
    finally:
        waiter.cancel()
        if receiver is not None and not receiver.done():
            receiver.cancel()


async def _close(websocket: WebSocket, code: int = 1000) -> None:
    try:
        await websocket.close(code=code)
    except Exception:
        pass  # already closed by the peer or the transport


# ------------------------------------------------------------------ shutdown


async def drain(app: FastAPI, grace_secs: float) -> None:
    """Stop taking calls, let the active ones finish for ``grace_secs``, then end the rest.

    Args:
        app: The running app.
        grace_secs: How long active calls (and calls about to connect) may go on, in s.
    """
    app.state.draining = True
    tokens: StreamTokens = app.state.tokens
    calls: dict = app.state.calls
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_secs

    def coming(grant: StreamGrant, now: float) -> bool:
        # An outbound call still ringing, or an incoming call whose TwiML just left:
        # its stream is on its way. Older inbound tokens were abandoned.
        return grant.plan is not None or now - grant.issued_at < CONNECT_WAIT_SECS

    logger.info(
        f"draining: taking no new calls; {len(calls)} active and {tokens.count(coming)} connecting "
        f"may go on for up to {grace_secs:.0f} s"
    )
    while (calls or tokens.count(coming)) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if tokens.count(lambda grant, now: grant.plan is not None):
        logger.warning("grace period over with outbound calls still ringing: they will not connect")
    tokens.clear()
    if calls:
        logger.warning(f"grace period over: ending {len(calls)} call(s)")
        await _end_calls(app)
    logger.info("drained: no calls left")


async def _end_calls(app: FastAPI, reason: str = "server_shutdown", timeout_secs: float = 5.0) -> None:
    """End every active call now, recording ``reason`` as its end reason.

    The reason is written before the call's task is cancelled: Pipecat's
    ``WorkerRunner.run`` swallows the cancellation, so ``run_bot`` would otherwise
    record the socket closing as ``caller_hung_up``.
    """
    calls = dict(app.state.calls)
    if not calls:
        return
    for call_sid in calls:
        try:
            await app.state.resources.store.end_call(call_sid, reason)
        except Exception as e:  # the call must end all the same
            logger.warning(f"[{call_sid}] could not record its end ({e})")
    for task in calls.values():
        task.cancel()
    await asyncio.wait(list(calls.values()), timeout=timeout_secs)


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains calls (:func:`drain`) before exiting.

    uvicorn alone would close every media stream at once (WebSocket close 1012) and
    stop listening, so Twilio's webhook would fail instead of hearing busy.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_secs: float):
        super().__init__(config)
        self._app = app
        self._grace_secs = grace_secs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._drain_requested or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or not serving yet: exit now
            return
        self._drain_requested = True
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, name: str) -> None:
        logger.info(f"{name} received: shutting down gracefully (send it again to stop at once)")
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self._app, self._grace_secs)
        finally:
            self.should_exit = True


def main() -> None:
    """Start the server on ``HOST``:``PORT`` (exit status 2 on a bad configuration)."""
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    logger.remove()
    # diagnose=False: tracebacks must not print variable values (they may hold secrets).
    logger.add(sys.stderr, level=settings.LOG_LEVEL, diagnose=False)
    install_log_redaction(settings)
    app = create_app(settings)
    # No permessage-deflate: compressing 20 ms of base64 audio per message costs CPU on
    # every frame of every call and saves little.
    config = uvicorn.Config(app, host=settings.HOST, port=settings.PORT, timeout_graceful_shutdown=5,
                            ws_per_message_deflate=False)
    _DrainingServer(config, app, settings.SHUTDOWN_GRACE_SECS).run()


if __name__ == "__main__":
    main()
