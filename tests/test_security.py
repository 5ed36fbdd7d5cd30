"""Locked doors, in-process: Twilio signatures on every webhook and on the stream's
upgrade, one-time stream tokens, the API key, the unsigned-development switch, capacity.

The app runs under Starlette's TestClient with ``run_bot`` replaced by a recorder, so
"closed before any model session" means: the recorder was never called.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

import server
from config import ConfigError, load_settings
from security import StreamTokenError, StreamTokens, redact

TOKEN = "unit-auth-token-0123456789abcdef"
PUBLIC = "https://agent.example.ngrok.app"
STREAM_URL = "wss://agent.example.ngrok.app/twilio/media-stream"
ACCOUNT = "AC" + "2" * 32
LOCAL = ("127.0.0.1", 50000)  # a client on this machine


def _sid(n: int) -> str:
    return "CA" + f"{n:032x}"


def _incoming(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": ACCOUNT, "From": "+15551230001",
            "To": "+15559870002", "CallStatus": "ringing", "Direction": "inbound"}


WEBHOOKS = {
    "/twilio/incoming-call": _incoming(_sid(1)),
    "/twilio/call-status": {"CallSid": _sid(1), "AccountSid": ACCOUNT, "CallStatus": "ringing",
                            "SequenceNumber": "1", "Direction": "outbound-api"},
    "/twilio/amd-status": {"CallSid": _sid(1), "AccountSid": ACCOUNT, "AnsweredBy": "human",
                           "MachineDetectionDuration": "1800"},
}


def _settings(tmp_path, **overrides):
    base = dict(
        _env_file=None, CALLS_DB_PATH=str(tmp_path / "calls.db"),
        LOCAL_AGENT_BASE_URL="ws://127.0.0.1:9/unused",  # no offline agent needed here
        API_KEY=None, ALLOW_UNSIGNED_WEBHOOKS=None, TWILIO_ACCOUNT_SID=None,
    )
    return load_settings(**{**base, **overrides})


@pytest.fixture
def bots(monkeypatch, tmp_path):
    """Replaces run_bot: records every call that would have opened a model session."""
    started = []

    async def fake_run_bot(websocket, start, resources):
        started.append(start)
        return "caller_hung_up"

    monkeypatch.setattr(server, "run_bot", fake_run_bot)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'booking.db'}")  # not ./
    return started


@pytest.fixture
def signed(tmp_path, bots):
    app = server.create_app(_settings(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC))
    with TestClient(app, client=LOCAL) as client:
        yield client


def _sign(url: str, form: dict) -> str:
    return RequestValidator(TOKEN).compute_signature(url, form)


def _twiml_stream(text: str) -> ET.Element:
    stream = ET.fromstring(text).find("./Connect/Stream")
    assert stream is not None, text
    return stream


def _params(text: str) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in _twiml_stream(text).findall("Parameter")}


# ------------------------------------------------------------ webhook signatures


@pytest.mark.parametrize("path", list(WEBHOOKS))
def test_every_webhook_accepts_a_valid_signature(signed, path):
    form = WEBHOOKS[path]
    response = signed.post(path, data=form, headers={"X-Twilio-Signature": _sign(PUBLIC + path, form)})
    assert response.status_code in (200, 204), response.text


@pytest.mark.parametrize("path", list(WEBHOOKS))
@pytest.mark.parametrize(
    "tamper",
    ["host", "port", "query", "parameter", "scheme", "missing", "other-token"],
)
def test_every_webhook_refuses_a_tampered_or_missing_signature(signed, path, tamper):
    form = dict(WEBHOOKS[path])
    url, sent_path, headers = PUBLIC + path, path, {}
    signed_form = form
    if tamper == "host":
        url = "https://evil.example" + path
    elif tamper == "port":
        url = PUBLIC + ":8443" + path
    elif tamper == "query":
        url, sent_path = PUBLIC + path + "?tenant=a", path + "?tenant=b"
    elif tamper == "parameter":
        signed_form = {**form, "CallSid": _sid(99)}
    elif tamper == "scheme":
        url = url.replace("https://", "http://")
    if tamper == "other-token":
        headers["X-Twilio-Signature"] = RequestValidator("another-token").compute_signature(url, form)
    elif tamper != "missing":
        headers["X-Twilio-Signature"] = _sign(url, signed_form)
    response = signed.post(sent_path, data=form, headers=headers)
    assert response.status_code == 403
    assert "X-Twilio-Signature" in response.json()["detail"]


@pytest.mark.parametrize("path", list(WEBHOOKS))
def test_behind_a_proxy_the_public_url_counts_and_forwarded_headers_do_not(signed, path):
    form = WEBHOOKS[path]
    # TLS terminated by a proxy that forwards to us over plain http: Twilio signed the
    # public URL, which only PUBLIC_BASE_URL knows.
    proxy_headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "agent.example.ngrok.app",
                     "X-Forwarded-For": "54.172.60.1"}
    ok = signed.post(path + "?t=1", data=form, headers={
        **proxy_headers, "X-Twilio-Signature": _sign(PUBLIC + path + "?t=1", form)})
    assert ok.status_code in (200, 204)
    # A stranger cannot make us check against a URL of their choosing.
    spoofed = signed.post(path, data=form, headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example", "Host": "evil.example",
        "X-Twilio-Signature": _sign("https://evil.example" + path, form)})
    assert spoofed.status_code == 403


def test_repeated_form_fields_are_all_signed(signed):
    path = "/twilio/call-status"
    items = [("CallSid", _sid(1)), ("CallStatus", "ringing"), ("Tag", "b"), ("Tag", "a")]

    class Multi(dict):
        def getlist(self, name):
            return [v for k, v in items if k == name]

    signature = _sign(PUBLIC + path, Multi({k: v for k, v in items}))
    form = {"CallSid": _sid(1), "CallStatus": "ringing", "Tag": ["b", "a"]}
    assert signed.post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code == 204
    form["Tag"] = ["b"]  # a value dropped on the way
    assert signed.post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code == 403


def test_a_bad_webhook_body_gets_a_clear_400_and_the_server_carries_on(signed):
    path = "/twilio/call-status"
    form = {"CallSid": _sid(1), "CallStatus": "<script>"}
    response = signed.post(path, data=form, headers={"X-Twilio-Signature": _sign(PUBLIC + path, form)})
    assert response.status_code == 400 and "CallStatus" in response.json()["detail"]
    assert signed.get("/health").json()["status"] == "ok"


# ------------------------------------------------------------ the media stream


def _ws_headers(url: str = STREAM_URL, token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, {})}


def _issue_stream(client: TestClient, call_sid: str) -> dict[str, str]:
    form = _incoming(call_sid)
    path = "/twilio/incoming-call"
    response = client.post(path, data=form, headers={"X-Twilio-Signature": _sign(PUBLIC + path, form)})
    assert response.status_code == 200
    assert _twiml_stream(response.text).get("url") == STREAM_URL
    return _params(response.text)


def _start(call_sid: str, parameters: dict[str, str]) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "3" * 32,
        "start": {"accountSid": ACCOUNT, "streamSid": "MZ" + "3" * 32, "callSid": call_sid,
                  "tracks": ["inbound"], "customParameters": parameters,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def _stream(client: TestClient, call_sid: str, parameters: dict[str, str], headers=None) -> dict:
    """Open the stream, send connected + start; return the server's next ASGI message."""
    with client.websocket_connect("/twilio/media-stream", headers=headers or _ws_headers()) as ws:
        ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send_text(_start(call_sid, parameters))
        return ws.receive()


def test_a_genuine_stream_runs_the_call_without_its_token(signed, bots):
    parameters = _issue_stream(signed, _sid(1))
    assert parameters["stream_token"].startswith("st_") and parameters["from"] == "+15551230001"
    message = _stream(signed, _sid(1), parameters)
    assert message["type"] == "websocket.close" and message.get("code", 1000) == 1000
    assert len(bots) == 1
    assert bots[0].call_sid == _sid(1)
    assert "stream_token" not in bots[0].parameters  # the secret never reaches the pipeline
    assert bots[0].parameters["from"] == "+15551230001"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no signature
        _ws_headers("ws://agent.example.ngrok.app/twilio/media-stream"),  # wrong scheme
        _ws_headers("wss://evil.example/twilio/media-stream"),  # another host
        _ws_headers(token="another-token"),  # another account
    ],
    ids=["missing", "wrong-scheme", "wrong-host", "wrong-token"],
)
def test_a_badly_signed_upgrade_is_refused_at_the_handshake(signed, bots, headers):
    parameters = _issue_stream(signed, _sid(1))
    with pytest.raises(WebSocketDisconnect) as refused:
        with signed.websocket_connect("/twilio/media-stream", headers=headers):
            pass
    assert refused.value.code == 1008
    assert bots == []
    # The genuine stream still works afterwards: the token was not burnt.
    assert _stream(signed, _sid(1), parameters)["type"] == "websocket.close"
    assert len(bots) == 1


@pytest.mark.parametrize("forgery", ["no-token", "garbage-token", "other-calls-token", "replayed"])
def test_forged_and_replayed_streams_are_closed_before_any_model_session(signed, bots, forgery):
    parameters = _issue_stream(signed, _sid(1))
    other = _issue_stream(signed, _sid(2))
    if forgery == "no-token":
        parameters = {k: v for k, v in parameters.items() if k != "stream_token"}
    elif forgery == "garbage-token":
        parameters = {**parameters, "stream_token": "st_" + "A" * 32}
    elif forgery == "other-calls-token":
        parameters = {**parameters, "stream_token": other["stream_token"]}
    elif forgery == "replayed":
        assert _stream(signed, _sid(1), parameters)["type"] == "websocket.close"
        assert len(bots) == 1
    message = _stream(signed, _sid(1), parameters)
    assert message == {"type": "websocket.close", "code": 1008, "reason": ""}
    assert len(bots) == (1 if forgery == "replayed" else 0)


def test_an_expired_stream_token_is_refused(tmp_path, bots):
    app = server.create_app(_settings(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC,
                                      STREAM_TOKEN_TTL_SECS=0.2))
    with TestClient(app, client=LOCAL) as client:
        parameters = _issue_stream(client, _sid(1))
        time.sleep(0.4)
        assert _stream(client, _sid(1), parameters)["code"] == 1008
    assert bots == []


def test_stream_tokens_are_one_time_short_lived_and_bound_to_their_call():
    now = [0.0]
    tokens = StreamTokens(clock=lambda: now[0])
    token = tokens.issue(_sid(1), ttl_secs=30)
    assert tokens.outstanding == 1
    with pytest.raises(StreamTokenError, match="another call"):
        tokens.redeem(token, _sid(2))
    assert tokens.redeem(token, _sid(1)).call_sid == _sid(1)
    assert tokens.outstanding == 0
    with pytest.raises(StreamTokenError, match="already used"):
        tokens.redeem(token, _sid(1))
    late = tokens.issue(_sid(3), ttl_secs=30)
    now[0] = 31.0
    with pytest.raises(StreamTokenError, match="unknown"):
        tokens.redeem(late, _sid(3))
    unbound = tokens.issue(None, ttl_secs=30)  # an outbound call's, before Twilio named it
    tokens.bind(unbound, _sid(4))
    with pytest.raises(StreamTokenError, match="another call"):
        tokens.redeem(unbound, _sid(5))
    assert tokens.revoke_call(_sid(4)) == 1 and tokens.outstanding == 0


# ------------------------------------------------------------ our own API


def test_api_key_is_required_when_set(tmp_path, bots):
    app = server.create_app(_settings(tmp_path, API_KEY="k-0123456789"))
    with TestClient(app, client=("203.0.113.7", 40000)) as client:  # a remote client
        assert client.get("/api/calls/CAnope").status_code == 401
        wrong = client.get("/api/calls/CAnope", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = client.get("/api/calls/CAnope", headers={"Authorization": "Bearer k-0123456789"})
        assert right.status_code == 404
        outbound = client.post("/twilio/outbound-call", json={"to": "+15551234567", "preset": "survey"})
        assert outbound.status_code == 401
        assert client.get("/health").status_code == 200  # health stays open


@pytest.mark.parametrize(
    "peer,headers,status",
    [
        (("127.0.0.1", 1), {}, 404),
        (("::1", 1), {}, 404),
        (("203.0.113.7", 1), {}, 403),
        (("127.0.0.1", 1), {"X-Forwarded-For": "203.0.113.7"}, 403),  # a tunnel on this machine
        (("127.0.0.1", 1), {"Forwarded": "for=203.0.113.7"}, 403),
    ],
    ids=["loopback", "loopback-v6", "remote", "tunnel-xff", "tunnel-forwarded"],
)
def test_without_api_key_the_api_answers_this_machine_only(tmp_path, bots, peer, headers, status):
    with TestClient(server.create_app(_settings(tmp_path)), client=peer) as client:
        assert client.get("/api/calls/CAnope", headers=headers).status_code == status


# ------------------------------------------------------- unsigned development


def test_the_unsigned_switch_works_on_loopback_only(tmp_path, bots):
    app = server.create_app(_settings(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, ALLOW_UNSIGNED_WEBHOOKS=True))
    with TestClient(app, client=LOCAL) as client:
        response = client.post("/twilio/incoming-call", data=_incoming(_sid(1)))
        assert response.status_code == 200
        parameters = _params(response.text)
        # No signature on the upgrade either, but the one-time token is still required.
        forged = {**parameters, "stream_token": "st_" + "B" * 32}
        assert _stream(client, _sid(1), forged, headers={"X": "1"})["code"] == 1008
        assert _stream(client, _sid(1), parameters, headers={"X": "1"})["type"] == "websocket.close"
    assert len(bots) == 1


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"HOST": "0.0.0.0", "TWILIO_AUTH_TOKEN": TOKEN, "ALLOW_UNSIGNED_WEBHOOKS": "true"},
         "ALLOW_UNSIGNED_WEBHOOKS"),
        ({"ALLOW_UNSIGNED_WEBHOOKS": "false"}, "TWILIO_AUTH_TOKEN"),
        ({"PUBLIC_BASE_URL": "https://abc.ngrok.app"}, "PUBLIC_BASE_URL"),  # unsigned, yet public
        ({"PUBLIC_BASE_URL": "https://abc.ngrok.app", "TWILIO_AUTH_TOKEN": TOKEN,
          "ALLOW_UNSIGNED_WEBHOOKS": "true"}, "PUBLIC_BASE_URL"),
        ({"TWILIO_FROM_NUMBER": "555-1234"}, "TWILIO_FROM_NUMBER"),
        ({"MAX_CONCURRENT_CALLS": "0"}, "MAX_CONCURRENT_CALLS"),
    ],
)
def test_unsafe_configurations_refuse_to_start(monkeypatch, env, variable):
    for key in ("TWILIO_AUTH_TOKEN", "ALLOW_UNSIGNED_WEBHOOKS", "PUBLIC_BASE_URL", "HOST",
                "GOOGLE_API_KEY", "OPENAI_API_KEY", "AGENT_PROVIDER", "TWILIO_FROM_NUMBER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(_env_file=None)


def test_zero_configuration_is_unsigned_local_development(monkeypatch):
    for key in ("TWILIO_AUTH_TOKEN", "ALLOW_UNSIGNED_WEBHOOKS", "PUBLIC_BASE_URL", "HOST", "API_KEY"):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings(_env_file=None)
    assert not settings.signatures_required and settings.api_key is None
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    assert load_settings(_env_file=None).signatures_required


def test_redaction_hides_secrets_and_stream_tokens():
    line = redact("token e2e-secret-1 and st_abcdefghijklmnopqrstuvwxyz012345 here", ["e2e-secret-1"])
    assert line == "token [redacted] and st_[redacted] here"


# ------------------------------------------------------------ capacity, drain


def test_past_capacity_the_webhook_rejects_as_busy_and_records_it(tmp_path, bots):
    app = server.create_app(_settings(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC,
                                      MAX_CONCURRENT_CALLS=1))
    with TestClient(app, client=LOCAL) as client:
        _issue_stream(client, _sid(1))  # connecting: holds the only slot
        path, form = "/twilio/incoming-call", _incoming(_sid(2))
        response = client.post(path, data=form, headers={"X-Twilio-Signature": _sign(PUBLIC + path, form)})
        assert response.status_code == 200
        reject = ET.fromstring(response.text).find("./Reject")
        assert reject is not None and reject.get("reason") == "busy"
        assert ET.fromstring(response.text).find("./Connect") is None
        record = client.get(f"/api/calls/{_sid(2)}").json()
        assert record["status"] == "refused" and record["refused_reason"] == "capacity"
        assert record["from"] == "+15551230001"
        refused = client.get("/api/calls", params={"status": "refused"}).json()["calls"]
        assert [c["call_sid"] for c in refused] == [_sid(2)]
        # The first call ends before its stream came: its slot is free again.
        status = {"CallSid": _sid(1), "CallStatus": "canceled", "SequenceNumber": "3"}
        path = "/twilio/call-status"
        client.post(path, data=status, headers={"X-Twilio-Signature": _sign(PUBLIC + path, status)})
        _issue_stream(client, _sid(3))


def test_while_draining_calls_are_refused_and_health_says_so(tmp_path, bots):
    app = server.create_app(_settings(tmp_path))
    with TestClient(app, client=LOCAL) as client:
        app.state.draining = True
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        response = client.post("/twilio/incoming-call", data=_incoming(_sid(5)))
        assert ET.fromstring(response.text).find("./Reject").get("reason") == "busy"
        assert client.get(f"/api/calls/{_sid(5)}").json()["refused_reason"] == "draining"


def test_status_callbacks_build_an_ordered_history(tmp_path, bots):
    app = server.create_app(_settings(tmp_path))
    with TestClient(app, client=LOCAL) as client:
        sid = _sid(7)
        # Twilio may deliver out of order; SequenceNumber puts them right.
        for seq, status, extra in [(1, "ringing", {}), (0, "initiated", {}),
                                   (3, "completed", {"CallDuration": "42"}), (2, "in-progress", {})]:
            form = {"CallSid": sid, "CallStatus": status, "SequenceNumber": str(seq),
                    "Direction": "outbound-api", "From": "+15559870002", "To": "+15551230001", **extra}
            assert client.post("/twilio/call-status", data=form).status_code == 204
        record = client.get(f"/api/calls/{sid}").json()
    assert [h["status"] for h in record["status_history"]] == [
        "initiated", "ringing", "in-progress", "completed"]
    assert record["status"] == "completed" and record["duration_s"] == 42
    assert record["direction"] == "outbound-api" and record["to"] == "+15551230001"


def test_the_server_refuses_to_start_unsigned_on_a_public_bind(tmp_path):
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = {**os.environ, "HOST": "0.0.0.0", "ALLOW_UNSIGNED_WEBHOOKS": "true",
           "TWILIO_AUTH_TOKEN": TOKEN, "CALLS_DB_PATH": str(tmp_path / "calls.db")}
    started = subprocess.run([sys.executable, "server.py"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 2
    assert "ALLOW_UNSIGNED_WEBHOOKS" in started.stderr and TOKEN not in started.stderr
