"""The voice webhook: TwiML answers and X-Twilio-Signature checks, direct and behind a proxy."""

import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from config import ConfigError, load_settings
from server import create_app

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://agent.example.ngrok.app"
FORM = {
    "CallSid": "CA" + "1" * 32,
    "AccountSid": "AC" + "2" * 32,
    "From": "+15551230001",
    "To": "+15559870002",
    "CallStatus": "ringing",
    "Direction": "inbound",
}


def _app(tmp_path, **overrides):
    settings = load_settings(
        CALLS_DB_PATH=str(tmp_path / "calls.db"),
        LOCAL_AGENT_BASE_URL="ws://127.0.0.1:9/unused",  # no offline agent needed here
        **overrides,
    )
    return create_app(settings)


def _sign(url: str, form: dict) -> str:
    return RequestValidator(TOKEN).compute_signature(url, form)


@pytest.fixture
def signed_client(tmp_path):
    with TestClient(_app(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC)) as client:
        yield client


def test_health_reports_provider_and_calls(tmp_path):
    with TestClient(_app(tmp_path)) as client:
        body = client.get("/health").json()
    assert body == {"status": "ok", "provider": "local", "active_calls": 0}


def test_twiml_connects_the_stream_with_call_parameters(signed_client):
    url = PUBLIC + "/twilio/incoming-call"
    response = signed_client.post(
        "/twilio/incoming-call", data=FORM, headers={"X-Twilio-Signature": _sign(url, FORM)}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://agent.example.ngrok.app/twilio/media-stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["from"] == FORM["From"] and params["to"] == FORM["To"]


def test_signature_is_checked_against_the_public_url_behind_a_proxy(signed_client):
    # The test client reaches the app as http://testserver, like a TLS-terminating proxy
    # forwarding to 127.0.0.1: only a check against PUBLIC_BASE_URL accepts this.
    url = PUBLIC + "/twilio/incoming-call?tenant=harbor"
    response = signed_client.post(
        "/twilio/incoming-call?tenant=harbor",
        data=FORM,
        headers={"X-Twilio-Signature": _sign(url, FORM), "X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 200


def test_a_process_behind_a_shared_origin_names_its_prefix_and_serves_under_it(tmp_path):
    """WORKER_PREFIX: the webhook (round robin, no prefix) and the prefixed stream and
    callbacks are all served, each checked against the URL Twilio signed."""
    app = _app(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_BASE_URL=PUBLIC, WORKER_PREFIX="/w2")
    with TestClient(app) as client:
        response = client.post("/twilio/incoming-call", data=FORM,
                               headers={"X-Twilio-Signature": _sign(PUBLIC + "/twilio/incoming-call", FORM)})
        assert response.status_code == 200
        stream = ET.fromstring(response.text).find("./Connect/Stream")
        assert stream.get("url") == "wss://agent.example.ngrok.app/w2/twilio/media-stream"

        status = {"CallSid": FORM["CallSid"], "CallStatus": "completed", "SequenceNumber": "0"}
        signed = _sign(PUBLIC + "/w2/twilio/call-status", status)
        assert client.post("/w2/twilio/call-status", data=status,
                           headers={"X-Twilio-Signature": signed}).status_code == 204
        # the same request signed for the unprefixed URL is not the one Twilio sent
        unprefixed = _sign(PUBLIC + "/twilio/call-status", status)
        assert client.post("/w2/twilio/call-status", data=status,
                           headers={"X-Twilio-Signature": unprefixed}).status_code == 403
        assert client.get("/w1/health").status_code == 404  # another process's prefix


@pytest.mark.parametrize(
    "signed_url,path,form",
    [
        ("https://evil.example/twilio/incoming-call", "/twilio/incoming-call", FORM),  # host
        (PUBLIC + ":8443/twilio/incoming-call", "/twilio/incoming-call", FORM),  # port
        (PUBLIC + "/twilio/incoming-call?a=1", "/twilio/incoming-call?a=2", FORM),  # query
        (PUBLIC + "/twilio/incoming-call", "/twilio/incoming-call", {**FORM, "From": "+1999"}),
    ],
    ids=["tampered-host", "tampered-port", "tampered-query", "tampered-parameter"],
)
def test_tampered_requests_are_refused(signed_client, signed_url, path, form):
    response = signed_client.post(
        path, data=FORM, headers={"X-Twilio-Signature": _sign(signed_url, form)}
    )
    assert response.status_code == 403


def test_missing_signature_is_refused(signed_client):
    response = signed_client.post("/twilio/incoming-call", data=FORM)
    assert response.status_code == 403
    assert "missing" in response.json()["detail"]


def test_unsigned_local_development_answers_without_a_token(tmp_path):
    with TestClient(_app(tmp_path)) as client:
        response = client.post("/twilio/incoming-call", data=FORM)
    assert response.status_code == 200
    assert "ws://127.0.0.1:8000/twilio/media-stream" in response.text


def test_malformed_webhook_gets_a_clear_error(tmp_path):
    with TestClient(_app(tmp_path)) as client:
        response = client.post("/twilio/incoming-call", data={"From": "+1555"})
        assert response.status_code == 400
        assert "CallSid" in response.json()["detail"]
        assert client.get("/health").status_code == 200  # the server carries on


def test_unknown_call_record_is_404(tmp_path):
    # The API answers clients on this machine when API_KEY is unset (TestClient's
    # default peer is "testclient", not an address).
    with TestClient(_app(tmp_path), client=("127.0.0.1", 50000)) as client:
        assert client.get("/api/calls/CAnope").status_code == 404


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"AGENT_PROVIDER": "gemini"}, "GOOGLE_API_KEY"),
        ({"AGENT_PROVIDER": "openai"}, "OPENAI_API_KEY"),
        ({"HOST": "0.0.0.0"}, "TWILIO_AUTH_TOKEN"),
        ({"PUBLIC_BASE_URL": "agent.example.com"}, "PUBLIC_BASE_URL"),
        ({"PORT": "not-a-port"}, "PORT"),
        ({"WORKER_PREFIX": "w1/"}, "WORKER_PREFIX"),
    ],
)
def test_bad_configuration_names_the_variable(monkeypatch, env, variable):
    for key in ("GOOGLE_API_KEY", "OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "AGENT_PROVIDER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    "env,provider",
    [
        ({}, "local"),
        ({"OPENAI_API_KEY": "sk-x"}, "openai"),
        ({"OPENAI_API_KEY": "sk-x", "GOOGLE_API_KEY": "g-x"}, "gemini"),
        ({"GOOGLE_API_KEY": "g-x", "AGENT_PROVIDER": "local"}, "local"),
    ],
)
def test_default_provider_follows_the_keys(monkeypatch, env, provider):
    for key in ("GOOGLE_API_KEY", "OPENAI_API_KEY", "AGENT_PROVIDER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings(_env_file=None).provider == provider
