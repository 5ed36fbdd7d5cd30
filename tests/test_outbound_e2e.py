"""Outbound calls end to end: the real server, a fake of Twilio's REST API, a simulated callee.

The test plays Twilio: it reads the TwiML the server gave ``Calls.json``, sends the
signed status and AMD callbacks, and, as the phone that answered, opens the call's
media stream with the simulated caller (``run_outbound_leg``). The server runs with
an API key, debug logging and known secrets, and the last test greps its log for them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import httpx
import pytest

from offline.caller import (
    amd_callback_params,
    post_twilio_request,
    run_outbound_leg,
    status_callback_params,
)
from tests.support import (
    ACCOUNT_SID,
    ROOT,
    TOKEN,
    FakeTwilioRest,
    running_server,
    speech_fraction,
    trimmed_wav,
)

API_KEY = "e2e-api-key-fedcba9876543210"
OPENAI_KEY = "sk-e2e-never-log-me-0123456789"
FROM = "+15559870002"
CALLEE = "+15551230001"
AMD_DELAY_S = 2.0  # how long "AMD" listens before saying who answered


@pytest.fixture(scope="module")
def rest():
    with FakeTwilioRest() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory, rest):
    tmp = tmp_path_factory.mktemp("outbound")
    events = tmp / "agent-events.jsonl"
    events.touch()
    with running_server(
        tmp, TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_API_BASE_URL=rest.url, TWILIO_FROM_NUMBER=FROM,
        API_KEY=API_KEY, OPENAI_API_KEY=OPENAI_KEY, LOG_LEVEL="DEBUG",
        LOCAL_AGENT_EVENT_LOG=str(events),
    ) as (url, log):
        yield url, log, events, tmp


def _api(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=15)


def _lines(path) -> int:
    return len(path.read_text().splitlines())


async def _place(url: str, rest: FakeTwilioRest, **body) -> tuple[str, str, dict[str, str]]:
    async with _api(url) as api:
        response = await api.post("/twilio/outbound-call", json={"to": CALLEE, **body})
    assert response.status_code == 201, response.text
    call_sid = response.json()["call_sid"]
    [created] = [r for r in rest.of_kind("create") if r["call_sid"] == call_sid]
    stream = ET.fromstring(created["form"]["Twiml"]).find("./Connect/Stream")
    return call_sid, stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


async def _twilio(url: str, path: str, params: dict[str, str]) -> None:
    response = await post_twilio_request(url, path, params, auth_token=TOKEN)
    assert response.status_code == 204, response.text


async def _progress(url: str, call_sid: str, statuses: list[str], first_sequence: int = 0, **extra):
    for seq, status in enumerate(statuses, first_sequence):
        params = status_callback_params(call_sid, ACCOUNT_SID, status, sequence_number=seq,
                                        from_number=FROM, to_number=CALLEE, **extra)
        await _twilio(url, "/twilio/call-status", params)


@pytest.mark.asyncio
async def test_a_person_answers_and_hears_the_agent_only_once_amd_says_so(server, rest, tmp_path):
    url, log, events, _ = server
    sessions_before = _lines(events)
    call_sid, stream_url, parameters = await _place(
        url, rest, preset="survey", task={"context": {"organisation": "Grand Harbor Hotel"}})
    await _progress(url, call_sid, ["initiated", "ringing", "in-progress"])

    # The person picks up: Twilio opens the stream at once; AMD decides 2 s later.
    leg = asyncio.create_task(run_outbound_leg(
        stream_url, parameters, trimmed_wav(tmp_path, 4.5), call_sid=call_sid,
        account_sid=ACCOUNT_SID, auth_token=TOKEN, reply_timeout_s=15, max_call_s=60,
    ))
    await asyncio.sleep(AMD_DELAY_S)
    assert not leg.done()
    assert _lines(events) == sessions_before, "a model session opened before AMD's verdict"
    await _twilio(url, "/twilio/amd-status", amd_callback_params(call_sid, ACCOUNT_SID, "human"))
    result = await leg
    await _progress(url, call_sid, ["completed"], first_sequence=3, duration_s=int(result.duration_s))

    # The person heard the agent, and not before AMD's verdict; their words were answered.
    assert result.greeting_ms is not None, result.summary()
    assert result.greeting_ms >= AMD_DELAY_S * 1000
    assert speech_fraction(result.heard_pcm) > 0.2
    assert result.utterances and result.utterances[0]["replied"], result.summary()
    assert _lines(events) > sessions_before

    async with _api(url) as api:
        for _ in range(20):  # the record is written as the pipeline ends
            record = (await api.get(f"/api/calls/{call_sid}")).json()
            if record["end_reason"]:
                break
            await asyncio.sleep(0.25)
    assert [h["status"] for h in record["status_history"]] == [
        "queued", "initiated", "ringing", "in-progress", "completed"]
    assert record["status"] == "completed" and record["duration_s"] == int(result.duration_s)
    assert record["answered_by"] == "human" and record["preset"] == "survey"
    assert record["from"] == FROM and record["to"] == CALLEE
    assert record["turns"] and record["turns"][0]["role"] == "assistant"
    assert rest.of_kind("update") == [] or all(
        u["call_sid"] != call_sid or u["form"] == {"Status": "completed"} for u in rest.of_kind("update"))


@pytest.mark.asyncio
async def test_a_machine_gets_a_short_message_after_the_beep_then_the_call_hangs_up(server, rest, tmp_path):
    url, log, events, _ = server
    sessions_before = _lines(events)
    call_sid, stream_url, parameters = await _place(
        url, rest, preset="appointment_reminder",
        task={"context": {"organisation": "Harbor Clinic", "when": "Friday at 9"}})
    await _progress(url, call_sid, ["initiated", "ringing", "in-progress"])
    # The answering machine plays its greeting; AMD speaks after the beep.
    leg = asyncio.create_task(run_outbound_leg(
        stream_url, parameters, trimmed_wav(tmp_path, 11.0), call_sid=call_sid,
        account_sid=ACCOUNT_SID, auth_token=TOKEN, reply_timeout_s=30, max_call_s=30,
    ))
    await asyncio.sleep(1.5)
    await _twilio(url, "/twilio/amd-status",
                  amd_callback_params(call_sid, ACCOUNT_SID, "machine_end_beep", duration_ms=1500))
    result = await asyncio.wait_for(leg, 10)

    # The call was given the message and a hang-up through the REST API; the stream
    # was let go and nothing was said to the machine by the agent.
    [update] = [u for u in rest.of_kind("update") if u["call_sid"] == call_sid]
    twiml = ET.fromstring(update["form"]["Twiml"])
    assert [verb.tag for verb in twiml] == ["Say", "Hangup"]
    message = twiml.find("Say").text
    assert "Harbor Clinic" in message and "Friday at 9" in message and len(message.split()) <= 40
    assert result.ended_by == "server" and result.duration_s < 5.0
    assert result.greeting_ms is None and result.media_received == 0
    assert _lines(events) == sessions_before, "a model session was opened for a machine"

    await _progress(url, call_sid, ["completed"], first_sequence=3, duration_s=12)
    async with _api(url) as api:
        record = (await api.get(f"/api/calls/{call_sid}")).json()
    assert record["answered_by"] == "machine_end_beep" and record["voicemail"] == message
    assert record["status"] == "completed" and record["turns"] == []


@pytest.mark.asyncio
async def test_unanswered_outbound_calls_are_recorded(server, rest):
    url, *_ = server
    for final in ("busy", "no-answer", "failed", "canceled"):
        call_sid, _, _ = await _place(url, rest, preset="survey")
        await _progress(url, call_sid, ["initiated", "ringing", final])
        async with _api(url) as api:
            record = (await api.get(f"/api/calls/{call_sid}")).json()
        assert record["status"] == final
        assert [h["status"] for h in record["status_history"]][-2:] == ["ringing", final]


def _cli(url: str, *args: str, api_key: str | None = API_KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "PORT")}
    argv = [sys.executable, "-m", "cli", "--server", url]
    if api_key:
        argv += ["--api-key", api_key]
    return subprocess.run(argv + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_cli_places_a_call_and_reads_its_status(server, rest):
    url, *_ = server
    placed = _cli(url, "call", "+15551239999", "--preset", "transit_booking",
                  "--context", "organisation=Harbor City Transit")
    assert placed.returncode == 0, placed.stderr
    call_sid = placed.stdout.split()[0]
    [created] = [r for r in rest.of_kind("create") if r["call_sid"] == call_sid]
    assert created["form"]["To"] == "+15551239999" and "queued" in placed.stdout
    status = _cli(url, "status", call_sid)
    assert status.returncode == 0 and '"preset": "transit_booking"' in status.stdout

    bad = _cli(url, "call", "555-1234", "--preset", "survey")
    assert bad.returncode == 1 and "HTTP 422" in bad.stderr and "to" in bad.stderr
    no_key = _cli(url, "call", "+15551239999", "--preset", "survey", api_key=None)
    assert no_key.returncode == 1 and "HTTP 401" in no_key.stderr
    usage = _cli(url, "call", "+15551239999")
    assert usage.returncode == 2 and "--preset" in usage.stderr


@pytest.mark.asyncio
async def test_secrets_never_reach_the_log(server, rest):
    url, log, *_ = server
    # A few knocks with wrong credentials, so refusals are logged too.
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post("/twilio/outbound-call", json={"to": CALLEE, "preset": "survey"},
                          headers={"Authorization": "Bearer wrong-key-0123456789"})
    await post_twilio_request(url, "/twilio/call-status", {"CallSid": "CA" + "0" * 32,
                              "CallStatus": "ringing"}, auth_token="not-the-token-0123456789")
    await asyncio.sleep(0.5)
    text = log.read_text()
    assert "outbound call to" in text and "DEBUG" in text  # the right log, at its chattiest
    tokens = [p.get("value") for r in rest.of_kind("create")
              for p in ET.fromstring(r["form"]["Twiml"]).iter("Parameter")
              if p.get("name") == "stream_token"]
    assert tokens
    basic = base64.b64encode(f"{ACCOUNT_SID}:{TOKEN}".encode()).decode()
    for secret in [TOKEN, API_KEY, OPENAI_KEY, basic, "wrong-key-0123456789", *tokens]:
        assert secret not in text, f"a secret is in the server log: {secret[:6]}..."
