"""The operators' side of the server: the dashboard page, live events, metrics, exports.

Routes (added to the app by :func:`install`):

- ``GET /``: the dashboard (``web/index.html``; its script and styles under ``/static``).
  The page itself holds no data, so it is served to anyone; everything it shows comes
  from the doors below, which are locked like the rest of our API.
- ``WS /events``: live call events as JSON text messages (shapes in :mod:`events`).
- ``GET /metrics``: Prometheus text (:mod:`metrics`).
- ``GET /api/calls/{call_sid}/export.json`` and ``/export.txt``: a call record as a
  download (:mod:`records.export`).
- ``GET /api/presets``: the outbound-call presets with their default instructions,
  for the dashboard's call form.

Locks: with ``API_KEY`` set, every door but ``/`` and ``/static`` needs the key
(``Authorization: Bearer <API_KEY>``; browsers cannot set headers on a WebSocket, so
``/events`` also takes it as the second of the subprotocols ``bearer, <API_KEY>``,
which, unlike a query string, stays out of access logs). Without ``API_KEY`` they
answer clients on this machine only, like ``/api/calls``. ``/metrics`` is locked too:
call counts are operational data; Prometheus sends the key with its
``authorization`` scrape setting.
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from loguru import logger

from metrics import CONTENT_TYPE_LATEST, Metrics
from outbound import PRESETS
from records.export import export_filename, to_json, to_text
from security import is_local_client, require_api_key

__all__ = ["WEB_DIR", "install"]

WEB_DIR = Path(__file__).resolve().parent / "web"
#: WebSocket close code for a refused ``/events`` client (RFC 6455 "policy violation").
POLICY_VIOLATION = 1008
#: The subprotocol a browser offers, followed by the key, to authenticate ``/events``.
BEARER_SUBPROTOCOL = "bearer"


def install(app: FastAPI) -> None:
    """Add the dashboard, ``/events``, ``/metrics``, exports and presets to the app.

    Needs ``app.state.calls`` (active calls) at once, and ``app.state.resources`` (the
    store and event bus) once the lifespan has started; the metrics start listening to
    the store then (:func:`start`).

    Args:
        app: The server's app.
    """
    app.state.metrics = Metrics(lambda: len(app.state.calls))
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The dashboard page."""
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/metrics", dependencies=[Depends(require_api_key)])
    async def metrics() -> Response:
        """Prometheus text exposition of this process's metrics."""
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/presets", dependencies=[Depends(require_api_key)])
    async def presets() -> JSONResponse:
        """``{presets: [{name, instructions, greeting, voicemail}]}`` (defaults, empty context)."""
        return JSONResponse({"presets": [
            {"name": p.name, "instructions": p.instructions({}), "greeting": p.greeting({}),
             "voicemail": p.voicemail({})}
            for p in PRESETS.values()
        ]})

    async def record_or_404(call_sid: str) -> dict:
        record = await app.state.resources.store.get_call(call_sid)
        if record is None:
            raise HTTPException(404, f"no call {call_sid}")
        return record

    @app.get("/api/calls/{call_sid}/export.json", dependencies=[Depends(require_api_key)])
    async def export_json(call_sid: str) -> Response:
        """The call record as a JSON download."""
        record = await record_or_404(call_sid)
        return Response(to_json(record), media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="{export_filename(call_sid, "json")}"'})

    @app.get("/api/calls/{call_sid}/export.txt", dependencies=[Depends(require_api_key)])
    async def export_text(call_sid: str) -> Response:
        """The call record as a plain-text transcript download."""
        record = await record_or_404(call_sid)
        return Response(to_text(record), media_type="text/plain; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{export_filename(call_sid, "txt")}"'})

    @app.websocket("/events")
    async def events(websocket: WebSocket) -> None:
        """Stream live call events until the client leaves."""
        subprotocol, problem = _events_door(app, websocket)
        if problem:
            logger.warning(f"/events refused: {problem}")
            await websocket.close(code=POLICY_VIOLATION)  # before accept: HTTP 403
            return
        await websocket.accept(subprotocol=subprotocol)
        bus = app.state.resources.events
        async with bus.subscribe() as queue:
            receiver = asyncio.ensure_future(_drain_client(websocket))
            try:
                while not receiver.done():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        break
                    await websocket.send_json(getter.result())
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client left mid-send
            finally:
                receiver.cancel()


def start(app: FastAPI) -> None:
    """Count the store's events in the app's metrics (call once the resources are up).

    Args:
        app: The server's app, its lifespan started.
    """
    app.state.resources.store.listeners.append(app.state.metrics.observe)


async def _drain_client(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it disconnects."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return


def _events_door(app: FastAPI, websocket: WebSocket) -> tuple[str | None, str | None]:
    """Check an ``/events`` client like :func:`security.require_api_key` checks requests.

    Returns:
        ``(subprotocol to answer, None)`` when let in, ``(None, why)`` when refused.
    """
    key = app.state.settings.api_key
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    chosen = BEARER_SUBPROTOCOL if offered[:1] == [BEARER_SUBPROTOCOL] else None
    where = websocket.client.host if websocket.client else "?"
    if not key:
        if not is_local_client(websocket):  # duck-typed: headers and client, as a Request
            return None, f"API_KEY is unset and the client is not local ({where})"
        return chosen, None
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), key.encode()):
        return chosen, None
    if chosen and len(offered) >= 2 and hmac.compare_digest(offered[1].encode(), key.encode()):
        return chosen, None
    return None, f"missing or wrong bearer key ({where})"
