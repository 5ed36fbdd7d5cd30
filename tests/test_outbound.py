"""Outbound calls, in-process, against a local fake of Twilio's REST API.

``POST /twilio/outbound-call`` must place the call with the TwiML, callbacks and
answering machine detection Twilio needs; its stream must stay silent (no model
session) until AMD says a person answered; a machine gets a voicemail and a hang-up.
``run_bot`` is replaced by a recorder: "the agent started" means it was called.
"""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

import server
from config import load_settings
from tests.support import free_port

TOKEN = "unit-auth-token-0123456789abcdef"
ACCOUNT = "AC" + "7" * 32
PUBLIC = "https://agent.example.ngrok.app"
FROM = "+15559870002"
LOCAL = ("127.0.0.1", 50000)


@pytest.fixture
def bots(monkeypatch, tmp_path):
    started = []

    async def fake_run_bot(websocket, start, resources):
        started.append(start)
        return "caller_hung_up"

    monkeypatch.setattr(server, "run_bot", fake_run_bot)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'booking.db'}")  # not ./
    return started


def _app(tmp_path, rest_url: str, **overrides):
    settings = load_settings(**{
        "_env_file": None, "CALLS_DB_PATH": str(tmp_path / "calls.db"),
        "LOCAL_AGENT_BASE_URL": "ws://127.0.0.1:9/unused", "API_KEY": None,
        "ALLOW_UNSIGNED_WEBHOOKS": None, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_API_BASE_URL": rest_url, "TWILIO_FROM_NUMBER": FROM, "PUBLIC_BASE_URL": PUBLIC,
        **overrides,
    })
    return server.create_app(settings)


@pytest.fixture
def client(tmp_path, fake_twilio_rest, bots):
    with TestClient(_app(tmp_path, fake_twilio_rest.url), client=LOCAL) as c:
        yield c


def _post_signed(client: TestClient, path: str, form: dict) -> int:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, form)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code


def _place(client: TestClient, **body) -> dict:
    response = client.post("/twilio/outbound-call", json={"to": "+15551234567", **body})
    assert response.status_code == 201, response.text
    return response.json()


def _stream_of(created: dict) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(created["form"]["Twiml"]).find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def _start(call_sid: str, parameters: dict[str, str]) -> str:
    return json.dumps({"event": "start", "streamSid": "MZ" + "4" * 32, "start": {
        "accountSid": ACCOUNT, "streamSid": "MZ" + "4" * 32, "callSid": call_sid,
        "customParameters": parameters}})


def _ws_headers(url: str) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, {})}


def test_an_outbound_call_is_placed_with_stream_callbacks_and_async_amd(client, fake_twilio_rest):
    call = _place(client, preset="appointment_reminder",
                  task={"prompt": "Mention the new address.", "context": {"when": "Tuesday at 10"}})
    [created] = fake_twilio_rest.of_kind("create")
    form = created["form"]
    assert call == {"call_sid": created["call_sid"], "status": "queued", "to": "+15551234567",
                    "from": FROM, "preset": "appointment_reminder"}
    assert created["account_sid"] == ACCOUNT
    assert created["authorization"] == "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    assert form["To"] == "+15551234567" and form["From"] == FROM
    assert form["StatusCallback"] == PUBLIC + "/twilio/call-status"
    assert [v for k, v in created["form_items"] if k == "StatusCallbackEvent"] == [
        "initiated", "ringing", "answered", "completed"]
    assert form["MachineDetection"] == "DetectMessageEnd"
    assert form["AsyncAmd"] == "true"
    assert form["AsyncAmdStatusCallback"] == PUBLIC + "/twilio/amd-status"
    assert form["Timeout"] == "30" and form["MachineDetectionTimeout"] == "30"
    url, parameters = _stream_of(created)
    assert url == "wss://agent.example.ngrok.app/twilio/media-stream"
    assert parameters["stream_token"].startswith("st_")
    assert parameters["direction"] == "outbound-api" and parameters["preset"] == "appointment_reminder"
    assert len(form["Twiml"]) < 4000
    record = client.get(f"/api/calls/{call['call_sid']}").json()
    assert record["status"] == "queued" and record["preset"] == "appointment_reminder"
    assert record["task"]["context"] == {"when": "Tuesday at 10"}
    assert "Tuesday at 10" in record["task"]["voicemail"]


@pytest.mark.parametrize(
    "body,problem",
    [
        ({"to": "555-1234", "preset": "survey"}, "to"),
        ({"to": "+15551234567"}, "task.prompt"),
        ({"to": "+15551234567", "preset": "lottery"}, "preset"),
        ({"to": "+15551234567", "preset": "survey", "unexpected": 1}, "unexpected"),
        ({"to": "+15551234567", "task": {"prompt": "x" * 5000}}, "prompt"),
    ],
    ids=["bad-number", "no-task", "unknown-preset", "unknown-field", "prompt-too-long"],
)
def test_bad_outbound_requests_get_a_clear_422(client, fake_twilio_rest, body, problem):
    response = client.post("/twilio/outbound-call", json=body)
    assert response.status_code == 422
    assert problem in json.dumps(response.json())
    assert fake_twilio_rest.requests == []


def test_twilio_refusing_the_call_is_reported_and_frees_the_slot(tmp_path, fake_twilio_rest, bots):
    fake_twilio_rest.fail_with = (400, 21211, "The 'To' number +15551234567 is not a valid phone number.")
    with TestClient(_app(tmp_path, fake_twilio_rest.url, MAX_CONCURRENT_CALLS=1), client=LOCAL) as c:
        response = c.post("/twilio/outbound-call", json={"to": "+15551234567", "preset": "survey"})
        assert response.status_code == 400
        assert "not a valid phone number" in response.json()["detail"]
        fake_twilio_rest.fail_with = None
        _place(c, preset="survey")  # the failed attempt did not keep the only slot


def test_unreachable_twilio_is_a_502(tmp_path, bots):
    dead = f"http://127.0.0.1:{free_port()}"
    with TestClient(_app(tmp_path, dead), client=LOCAL) as c:
        response = c.post("/twilio/outbound-call", json={"to": "+15551234567", "preset": "survey"})
    assert response.status_code == 502 and "could not reach" in response.json()["detail"]


def test_outbound_calls_need_credentials_and_a_caller_id(tmp_path, fake_twilio_rest, bots):
    with TestClient(_app(tmp_path, fake_twilio_rest.url, TWILIO_ACCOUNT_SID=None), client=LOCAL) as c:
        response = c.post("/twilio/outbound-call", json={"to": "+15551234567", "preset": "survey"})
        assert response.status_code == 503 and "TWILIO_ACCOUNT_SID" in response.json()["detail"]
    with TestClient(_app(tmp_path, fake_twilio_rest.url, TWILIO_FROM_NUMBER=None), client=LOCAL) as c:
        response = c.post("/twilio/outbound-call", json={"to": "+15551234567", "preset": "survey"})
        assert response.status_code == 400 and "TWILIO_FROM_NUMBER" in response.json()["detail"]
        assert _place(c, preset="survey", **{"from": "+15550001111"})["from"] == "+15550001111"


def test_a_ringing_outbound_call_holds_its_slot(tmp_path, fake_twilio_rest, bots):
    with TestClient(_app(tmp_path, fake_twilio_rest.url, MAX_CONCURRENT_CALLS=1), client=LOCAL) as c:
        call = _place(c, preset="survey")
        busy = c.post("/twilio/outbound-call", json={"to": "+15551234568", "preset": "survey"})
        assert busy.status_code == 503 and "MAX_CONCURRENT_CALLS" in busy.json()["detail"]
        # No answer: the slot is free again.
        form = {"CallSid": call["call_sid"], "CallStatus": "no-answer", "SequenceNumber": "2"}
        assert _post_signed(c, "/twilio/call-status", form) == 204
        _place(c, to="+15551234568", preset="survey")
        assert c.get(f"/api/calls/{call['call_sid']}").json()["status"] == "no-answer"


def test_the_stream_is_held_silent_until_amd_says_a_person_answered(client, fake_twilio_rest, bots):
    call = _place(client, preset="survey", task={"prompt": "Ask about the room.",
                                                 "context": {"organisation": "Grand Harbor Hotel"}})
    url, parameters = _stream_of(fake_twilio_rest.of_kind("create")[0])
    with client.websocket_connect("/twilio/media-stream", headers=_ws_headers(url)) as ws:
        ws.send_text(json.dumps({"event": "connected"}))
        ws.send_text(_start(call["call_sid"], parameters))
        for _ in range(10):  # the callee says "hello?" while AMD listens
            ws.send_text(json.dumps({"event": "media", "media": {"payload": "//8="}}))
        time.sleep(0.5)
        assert bots == []  # no pipeline, no model session yet
        amd = {"CallSid": call["call_sid"], "AccountSid": ACCOUNT, "AnsweredBy": "human",
               "MachineDetectionDuration": "2100"}
        assert _post_signed(client, "/twilio/amd-status", amd) == 204
        assert ws.receive()["type"] == "websocket.close"
    [start] = bots
    p = start.parameters
    assert p["answered_by"] == "human" and p["direction"] == "outbound-api"
    assert p["preset"] == "survey" and p["to"] == "+15551234567" and p["from"] == FROM
    assert "Grand Harbor Hotel" in p["task_prompt"] and "Ask about the room." in p["task_prompt"]
    assert "- organisation: Grand Harbor Hotel" in p["task_prompt"]  # the facts, spelled out
    assert json.loads(p["task_context"]) == {"organisation": "Grand Harbor Hotel"}
    assert p["greeting_prompt"] and "stream_token" not in p
    record = client.get(f"/api/calls/{call['call_sid']}").json()
    assert record["answered_by"] == "human" and record["amd_duration_ms"] == 2100
    assert fake_twilio_rest.of_kind("update") == []  # no voicemail for a person


def test_an_amd_verdict_before_the_stream_lets_the_agent_start_at_once(client, fake_twilio_rest, bots):
    call = _place(client, preset="survey")
    url, parameters = _stream_of(fake_twilio_rest.of_kind("create")[0])
    amd = {"CallSid": call["call_sid"], "AnsweredBy": "unknown", "MachineDetectionDuration": "30000"}
    assert _post_signed(client, "/twilio/amd-status", amd) == 204
    with client.websocket_connect("/twilio/media-stream", headers=_ws_headers(url)) as ws:
        ws.send_text(_start(call["call_sid"], parameters))
        assert ws.receive()["type"] == "websocket.close"
    assert [s.parameters["answered_by"] for s in bots] == ["unknown"]


@pytest.mark.parametrize("answered_by", ["machine_end_beep", "machine_end_silence", "machine_end_other"])
def test_a_machine_gets_a_short_voicemail_and_a_hang_up(client, fake_twilio_rest, bots, answered_by):
    call = _place(client, preset="appointment_reminder", task={"context": {"when": "Friday at 9"}})
    url, parameters = _stream_of(fake_twilio_rest.of_kind("create")[0])
    with client.websocket_connect("/twilio/media-stream", headers=_ws_headers(url)) as ws:
        ws.send_text(_start(call["call_sid"], parameters))
        amd = {"CallSid": call["call_sid"], "AnsweredBy": answered_by, "MachineDetectionDuration": "9000"}
        assert _post_signed(client, "/twilio/amd-status", amd) == 204
        assert ws.receive()["type"] == "websocket.close"  # the stream is let go
    assert bots == []  # no model session for a machine
    [update] = fake_twilio_rest.of_kind("update")
    assert update["call_sid"] == call["call_sid"]
    twiml = ET.fromstring(update["form"]["Twiml"])
    assert [verb.tag for verb in twiml] == ["Say", "Hangup"]
    message = twiml.find("Say").text
    assert "Friday at 9" in message and len(message.split()) <= 40
    record = client.get(f"/api/calls/{call['call_sid']}").json()
    assert record["answered_by"] == answered_by and record["voicemail"] == message


def test_a_fax_is_hung_up_on(client, fake_twilio_rest, bots):
    call = _place(client, preset="survey")
    fax = {"CallSid": call["call_sid"], "AnsweredBy": "fax"}
    assert _post_signed(client, "/twilio/amd-status", fax) == 204
    [update] = fake_twilio_rest.of_kind("update")
    assert update["form"] == {"Status": "completed"}


def test_a_callee_hanging_up_while_held_never_starts_the_agent(client, fake_twilio_rest, bots):
    call = _place(client, preset="survey")
    url, parameters = _stream_of(fake_twilio_rest.of_kind("create")[0])
    with client.websocket_connect("/twilio/media-stream", headers=_ws_headers(url)) as ws:
        ws.send_text(_start(call["call_sid"], parameters))
        ws.send_text(json.dumps({"event": "stop", "stop": {"callSid": call["call_sid"]}}))
        assert ws.receive()["type"] == "websocket.close"
    assert bots == []
    assert client.get("/health").json()["active_calls"] == 0
