"""Forged and replayed media streams against the real server: closed before any model session.

The offline agent logs every client event it receives (``LOCAL_AGENT_EVENT_LOG``);
a model session that opens writes to it at once (``session.update``). So "no model
session" is checked as "the agent's event log did not grow", a second after each
refused stream.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import xml.etree.ElementTree as ET

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from offline.caller import post_twilio_request
from tests.support import ACCOUNT_SID, TOKEN, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream-security")
    events = tmp / "agent-events.jsonl"
    events.touch()
    with running_server(tmp, LOCAL_AGENT_EVENT_LOG=str(events)) as (url, log):
        yield url, log, events


def _call_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def _webhook(url: str, call_sid: str) -> tuple[str, dict[str, str]]:
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": "+15551230001",
            "To": "+15559870002", "CallStatus": "ringing", "Direction": "inbound"}
    response = await post_twilio_request(url, "/twilio/incoming-call", form, auth_token=TOKEN)
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def _start(call_sid: str, parameters: dict[str, str]) -> str:
    stream_sid = "MZ" + secrets.token_hex(16)
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
        "accountSid": ACCOUNT_SID, "streamSid": stream_sid, "callSid": call_sid,
        "tracks": ["inbound"], "customParameters": parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


async def _stream(stream_url: str, call_sid: str, parameters: dict[str, str], *,
                  signed_url: str | None = None, hold_s: float = 0.0) -> dict:
    """Open a stream like Twilio; report the close code and whether the agent spoke."""
    headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(signed_url or stream_url, {})}
    heard = False
    async with connect(stream_url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(_start(call_sid, parameters))
        try:
            async with asyncio.timeout(10):
                async for raw in ws:
                    if json.loads(raw).get("event") == "media":
                        heard = True
                        break
        except (ConnectionClosed, TimeoutError):
            pass
        if heard:
            try:  # keep listening (a phone plays what it gets), then hang up
                async with asyncio.timeout(hold_s):
                    async for _ in ws:
                        pass
            except TimeoutError:
                pass
            await ws.send(json.dumps({"event": "stop", "stop": {"callSid": call_sid}}))
    return {"code": ws.close_code, "heard_agent": heard}


async def _no_session_opens(events, before: int, url: str) -> None:
    await asyncio.sleep(1.0)
    assert len(events.read_text().splitlines()) == before, "a model session was opened"
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).json()["active_calls"] == 0


@pytest.mark.asyncio
async def test_a_genuine_stream_reaches_the_agent(server):
    url, _, events = server
    before = len(events.read_text().splitlines())
    call_sid = _call_sid()
    stream_url, parameters = await _webhook(url, call_sid)
    outcome = await _stream(stream_url, call_sid, parameters)
    assert outcome["heard_agent"], outcome
    assert len(events.read_text().splitlines()) > before


@pytest.mark.asyncio
@pytest.mark.parametrize("forgery", ["no-token", "garbage-token", "another-calls-token"])
async def test_a_forged_stream_is_closed_before_any_model_session(server, forgery):
    url, _, events = server
    call_sid = _call_sid()
    stream_url, parameters = await _webhook(url, call_sid)
    _, other = await _webhook(url, _call_sid())
    if forgery == "no-token":
        parameters.pop("stream_token")
    elif forgery == "garbage-token":
        parameters["stream_token"] = "st_" + secrets.token_urlsafe(24)
    else:
        parameters["stream_token"] = other["stream_token"]
    before = len(events.read_text().splitlines())
    outcome = await _stream(stream_url, call_sid, parameters)
    assert outcome == {"code": 1008, "heard_agent": False}
    await _no_session_opens(events, before, url)


@pytest.mark.asyncio
async def test_a_replayed_stream_is_closed_during_and_after_the_genuine_call(server):
    url, _, events = server
    call_sid = _call_sid()
    stream_url, parameters = await _webhook(url, call_sid)
    genuine = asyncio.create_task(_stream(stream_url, call_sid, parameters, hold_s=3.0))
    await asyncio.sleep(1.5)  # the genuine call is live: its token has been used
    during = await _stream(stream_url, call_sid, parameters)
    assert during == {"code": 1008, "heard_agent": False}
    assert (await genuine)["heard_agent"]
    before = len(events.read_text().splitlines())
    after = await _stream(stream_url, call_sid, parameters)  # a second start, same token
    assert after == {"code": 1008, "heard_agent": False}
    await _no_session_opens(events, before, url)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["missing", "other-url", "other-token"])
async def test_a_badly_signed_upgrade_is_refused_with_403(server, how):
    url, _, events = server
    call_sid = _call_sid()
    stream_url, parameters = await _webhook(url, call_sid)
    headers = {}
    if how == "other-url":
        headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(
            stream_url.replace("ws://", "wss://"), {})
    elif how == "other-token":
        headers["X-Twilio-Signature"] = RequestValidator("x" * 32).compute_signature(stream_url, {})
    before = len(events.read_text().splitlines())
    with pytest.raises(InvalidStatus) as refused:
        async with connect(stream_url, additional_headers=headers):
            pass
    assert refused.value.response.status_code == 403
    await _no_session_opens(events, before, url)
    # The token survived the forged knock: the genuine stream still gets through.
    assert (await _stream(stream_url, call_sid, parameters))["heard_agent"]
