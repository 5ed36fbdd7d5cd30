"""The operators' doors in-process: dashboard page, /events, /metrics, exports, presets, API key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import server
from config import load_settings
from records import utc_now

LOCAL = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.9", 50000)
SID = "CA" + "3" * 32
KEY = "dashboard-test-key-0123456789"


def _client(tmp_path, monkeypatch, client=LOCAL, **overrides) -> TestClient:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'booking.db'}")  # not ./
    settings = load_settings(**{
        "_env_file": None, "CALLS_DB_PATH": str(tmp_path / "calls.db"),
        "LOCAL_AGENT_BASE_URL": "ws://127.0.0.1:9/unused", "API_KEY": None,
        "ALLOW_UNSIGNED_WEBHOOKS": "true", "REDIS_URL": None, **overrides,
    })
    return TestClient(server.create_app(settings), client=client)


def _call(client: TestClient) -> None:
    """One short call, written through the app's own call-record store as a call writes it."""
    store = client.app.state.resources.store
    run = client.portal.call
    run(lambda: store.start_call(SID, stream_sid="MZ1", account_sid=None, from_number="+15551230001",
                                 to_number="+15557654321", provider="local"))
    run(lambda: store.add_turn(SID, role="user", text="Do you have rooms in Porto?",
                               started_at=utc_now(), ended_at=utc_now()))
    run(lambda: store.add_tool_call(SID, name="search_hotels", arguments={"city": "Porto"},
                                    result=None, error={"code": "unavailable"}, duration_ms=8.0,
                                    started_at=utc_now()))
    run(lambda: store.add_turn(SID, role="assistant", text="Let me", interrupted=True,
                               started_at=utc_now(), ended_at=utc_now(), audio_played_ms=300,
                               generated_text="Let me look.", latency_ms=450))
    run(lambda: store.end_call(SID, "model_error"))


def test_the_dashboard_page_is_served_with_its_script(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for landmark in ('<main id="main">', 'aria-live="polite"', '<label for="to">', 'role="search"'):
            assert landmark in page.text
        script = client.get("/static/app.js")
        assert script.status_code == 200 and "new WebSocket" in script.text


def test_events_stream_a_call_as_it_happens(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch) as client, client.websocket_connect("/events") as ws:
        _call(client)
        events = [ws.receive_json() for _ in range(6)]
    assert [e["type"] for e in events] == [
        "call_started", "turn", "tool_call", "turn", "interruption", "call_ended"]
    assert {e["call_sid"] for e in events} == {SID}
    assert events[3]["role"] == "assistant" and events[3]["latency_ms"] == 450
    assert events[5]["end_reason"] == "model_error"


def test_metrics_count_calls_turns_latency_barge_ins_and_errors(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch) as client:
        _call(client)
        text = client.get("/metrics").text
    assert "phone_agent_active_calls 0.0" in text
    assert 'phone_agent_turns_total{role="user"} 1.0' in text
    assert 'phone_agent_turns_total{role="assistant"} 1.0' in text
    assert "phone_agent_reply_latency_seconds_count 1.0" in text
    assert 'phone_agent_reply_latency_seconds_bucket{le="0.5"} 1.0' in text
    assert 'phone_agent_reply_latency_seconds_bucket{le="0.4"} 0.0' in text
    assert "phone_agent_barge_ins_total 1.0" in text
    assert 'phone_agent_errors_total{kind="tool"} 1.0' in text
    assert 'phone_agent_errors_total{kind="model_error"} 1.0' in text
    assert 'phone_agent_calls_total{end_reason="model_error"} 1.0' in text


def test_a_call_exports_as_json_and_text_and_history_searches(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch) as client:
        _call(client)
        as_json = client.get(f"/api/calls/{SID}/export.json")
        as_text = client.get(f"/api/calls/{SID}/export.txt")
        found = client.get("/api/calls", params={"q": "porto"}).json()["calls"]
        missing = client.get("/api/calls", params={"q": "lisbon"}).json()["calls"]
        active = client.get("/api/calls", params={"active": "true"}).json()["calls"]
        record = client.get(f"/api/calls/{SID}").json()
        unknown = client.get("/api/calls/CA404/export.txt")
    assert as_json.json() == record
    assert as_json.headers["content-disposition"] == f'attachment; filename="call-{SID}.json"'
    assert as_text.headers["content-type"].startswith("text/plain")
    assert "Caller: Do you have rooms in Porto?" in as_text.text
    assert "[interrupted: heard 300 ms; it was saying: Let me look.]" in as_text.text
    assert [c["call_sid"] for c in found] == [SID] and missing == [] and active == []
    assert record["turns"][1]["latency_ms"] == 450
    assert unknown.status_code == 404


def test_presets_for_the_call_form(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch) as client:
        presets = client.get("/api/presets").json()["presets"]
    assert [p["name"] for p in presets] == ["transit_booking", "appointment_reminder", "survey"]
    assert all(p["instructions"] and p["voicemail"] for p in presets)


def test_with_an_api_key_events_and_metrics_need_it(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch, client=REMOTE, API_KEY=KEY) as client:
        assert client.get("/").status_code == 200  # the page holds no data
        assert client.get("/metrics").status_code == 401
        assert client.get(f"/api/calls/{SID}/export.txt").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/events"):
                pass
        assert refused.value.code == 1008
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect("/events", subprotocols=["bearer", "wrong"]):
                pass
        with client.websocket_connect("/events", subprotocols=["bearer", KEY]) as ws:
            assert ws.accepted_subprotocol == "bearer"
            _call(client)
            assert ws.receive_json()["type"] == "call_started"
        with client.websocket_connect("/events", headers={"Authorization": f"Bearer {KEY}"}) as ws:
            client.portal.call(lambda: client.app.state.resources.store.end_call("CA-other", "x"))
            client.portal.call(lambda: client.app.state.resources.store.record_status("CA-other", "ringing"))
            assert ws.receive_json()["type"] == "status"


def test_without_an_api_key_only_this_machine_gets_events_and_metrics(tmp_path, monkeypatch):
    with _client(tmp_path, monkeypatch, client=REMOTE) as client:
        assert client.get("/metrics").status_code == 403
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect("/events"):
                pass
