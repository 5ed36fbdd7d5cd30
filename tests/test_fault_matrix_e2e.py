"""The fault matrix: every way a call can go wrong, against the real server over loopback.

Each row breaks one call in one way and checks what a user of the system would notice:
the call ended, or went on and was answered; its record holds the turns so far and a
sensible end reason; the server serves the next call. Functional assertions only: how
fast calls end and how much they cost is measured by ``make bench``, not here.

| fault | where | row |
|---|---|---|
| caller hangs up mid-reply | Twilio side | ``hang_up_mid_reply`` |
| socket closes without ``stop`` (TCP drop) | Twilio side | ``socket_dropped_without_stop`` |
| ``stop`` without the socket closing | Twilio side | ``stop_without_close`` |
| malformed JSON, unknown events, bad base64, binary frames, oversized messages, mid-call | Twilio side | ``bad_input_mid_call`` |
| media (and junk) before ``start`` | Twilio side | ``media_before_start`` |
| 10,000 fuzzed messages (hypothesis), mid-call, over the real socket | Twilio side | ``test_ten_thousand_fuzzed_messages`` |
| model socket stalled (open, silent) | model side | ``test_a_stalled_model_is_reconnected`` |
| a tool raising / hanging | tools | ``test_a_failing_tool``, ``test_a_hanging_tool`` |
| server killed with -9 mid-call | process | ``test_kill_9_mid_call_keeps_the_turns_so_far`` |

Covered elsewhere, not repeated: a model socket dropped (reconnected with the
conversation) or gone (spoken apology) in ``test_model_drop_e2e.py``; an unreachable
model in ``test_call_failures.py``; each malformed message's handling in the serializer
in ``test_twilio_serializer.py``; graceful shutdown in ``test_shutdown_e2e.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from dataclasses import dataclass

import httpx
import pytest

from offline.caller import CallerBehaviour, run_call
from tests.support import TOKEN, running_server, server_pid, trimmed_wav

#: How long a test waits for a call to be over before calling it stuck (not a performance
#: threshold: the benchmark measures teardown times).
ENDED_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the Twilio-side rows (each row is its own call)."""
    with running_server(tmp_path_factory.mktemp("faults")) as running:
        yield running


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> str:
    """Two caller utterances of real speech (the first 5.5 s of jfk_8k.wav)."""
    return trimmed_wav(tmp_path_factory.mktemp("speech"), 5.5)


async def _ended_record(url: str, call_sid: str) -> dict:
    """The call's record once the call is over (no call active, ``ended_at`` set)."""
    deadline = time.monotonic() + ENDED_WITHIN_S
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            health = (await client.get("/health")).json()
            response = await client.get(f"/api/calls/{call_sid}")
            record = response.json() if response.status_code == 200 else None
            if health["active_calls"] == 0 and record and record["ended_at"]:
                return record
            assert time.monotonic() < deadline, f"call not over {ENDED_WITHIN_S:.0f} s later: {record}"
            await asyncio.sleep(0.1)


def _media(payload: bytes, stream_sid: str = "MZ" + "0" * 32) -> str:
    return json.dumps({"event": "media", "streamSid": stream_sid,
                       "media": {"payload": base64.b64encode(payload).decode()}})


def _once_at(at_s: float, messages: list[str | bytes]):
    """An ``inject`` hook sending ``messages`` at the first tick after ``at_s`` of call time."""
    sent = False

    def inject(now: float) -> list[str | bytes]:
        nonlocal sent
        if sent or now < at_s:
            return []
        sent = True
        return messages

    return inject


BAD_INPUT = [
    "{not json",
    "",
    json.dumps([1, 2, 3]),
    json.dumps({"event": "no-such-event", "streamSid": "MZ1"}),
    json.dumps({"event": "media", "media": {"payload": "***not base64***"}}),
    json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 159).decode()}}),
    json.dumps({"event": "media"}),
    json.dumps({"event": "mark", "mark": {"name": "not-ours"}}),
    json.dumps({"event": "dtmf", "dtmf": {"digit": "not a key"}}),
    json.dumps({"event": "start", "start": {"streamSid": "MZ2", "callSid": "CA2"}}),  # a second start
    b"\x00\x01\x02 binary frame",
    _media(b"\xff" * 1_000_000),  # oversized: 125 s of audio in one message
    "x" * 1_000_000,  # oversized junk
]


@dataclass
class Row:
    """One Twilio-side fault: how the caller misbehaves and what must follow."""

    behaviour: CallerBehaviour
    max_call_s: float = 90.0
    answered: bool = True  # every utterance said got a reply
    end_reasons: tuple[str, ...] = ("agent_ended", "caller_hung_up")


ROWS = {
    "hang_up_mid_reply": Row(CallerBehaviour(), max_call_s=3.0, answered=False,
                             end_reasons=("caller_hung_up",)),
    "socket_dropped_without_stop": Row(CallerBehaviour(hang_up="abort"), max_call_s=9.0,
                                       answered=False, end_reasons=("caller_hung_up",)),
    "stop_without_close": Row(CallerBehaviour(hang_up="stop_only"), max_call_s=9.0,
                              answered=False, end_reasons=("caller_hung_up",)),
    "bad_input_mid_call": Row(CallerBehaviour(inject=_once_at(1.0, BAD_INPUT))),
    "media_before_start": Row(CallerBehaviour(
        before_start=[_media(b"\xff" * 160)] * 5 + ["{junk", b"\x00binary"])),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(ROWS))
async def test_twilio_side_fault(server, speech, name):
    url, log = server
    row = ROWS[name]
    result = await run_call(url, speech, auth_token=TOKEN, behaviour=row.behaviour,
                            max_call_s=row.max_call_s, reply_timeout_s=15)
    record = await _ended_record(url, result.call_sid)

    # The caller heard the agent, and was answered whenever it waited for an answer.
    assert result.greeting_ms is not None, result.summary()
    if row.answered:
        assert result.all_answered, result.summary()
    # The record is whole: every turn so far, the greeting first, and why it ended.
    assert record["end_reason"] in row.end_reasons, record
    turns = record["turns"]
    assert turns and turns[0]["role"] == "assistant" and "Grand Harbor" in turns[0]["generated_text"]
    said = [u for u in result.utterances if u["ended_at"] is not None]
    assert len([t for t in turns if t["role"] == "user"]) >= len(said) - (not row.answered)
    if name == "hang_up_mid_reply":
        assert turns[-1]["role"] == "assistant" and turns[-1]["interrupted"] is True
        assert turns[-1]["audio_played_ms"] < 3000  # and its text is the part heard
        assert len(turns[-1]["text"]) < len(turns[-1]["generated_text"])
    if name == "stop_without_close":
        assert result.closed_after_stop_s is not None, "the server never closed the socket"
    assert "Traceback" not in log.read_text()


@pytest.mark.asyncio
async def test_ten_thousand_fuzzed_messages(server, speech):
    """Hypothesis-generated messages, 10,000 of them, over the real socket during a call.

    The messages are drawn by hypothesis first (``tests/fuzz_messages.py``; no ``stop``
    among them), then sent 250 per 20 ms tick from 1 s into the call. The call must
    go on as if nothing happened: every utterance answered, the record whole.
    """
    from hypothesis import HealthCheck, given, settings

    from tests.fuzz_messages import messages

    fuzz: list[str | bytes] = []

    @settings(max_examples=10_000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def draw(message):
        fuzz.append(message)

    draw()
    assert len(fuzz) == 10_000
    batches = iter([fuzz[i : i + 250] for i in range(0, len(fuzz), 250)])

    def inject(now: float) -> list[str | bytes]:
        return next(batches, []) if now >= 1.0 else []

    url, log = server
    result = await run_call(url, speech, auth_token=TOKEN, behaviour=CallerBehaviour(inject=inject),
                            max_call_s=120, reply_timeout_s=20)
    record = await _ended_record(url, result.call_sid)
    assert next(batches, None) is None, "not every fuzzed message was sent"
    assert result.greeting_ms is not None and result.all_answered, result.summary()
    assert record["end_reason"] in ("agent_ended", "caller_hung_up")
    assert len([t for t in record["turns"] if t["role"] == "user"]) == len(result.utterances)
    assert "Traceback" not in log.read_text()


@pytest.mark.asyncio
async def test_kill_9_mid_call_keeps_the_turns_so_far(tmp_path, speech):
    """The server dies mid-call (SIGKILL): after a restart the record has what was said."""
    call_sid = "CA" + "9" * 32
    with running_server(tmp_path) as (url, log):
        pid = server_pid(log)
        call = asyncio.create_task(
            run_call(url, speech, auth_token=TOKEN, max_call_s=60, call_sid=call_sid)
        )
        async with httpx.AsyncClient(base_url=url) as client:
            deadline = time.monotonic() + 60
            while True:  # until the first caller turn and its reply are in the record
                response = await client.get(f"/api/calls/{call_sid}")
                if response.status_code == 200:
                    roles = [t["role"] for t in response.json().get("turns") or []]
                    if roles[:3] == ["assistant", "user", "assistant"]:
                        break
                assert time.monotonic() < deadline, "the call never got past its first turn"
                await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            result = await call
    assert result.ended_by == "server"  # the socket went with the process

    with running_server(tmp_path) as (url, _):  # the same database, a new process
        async with httpx.AsyncClient(base_url=url) as client:
            record = (await client.get(f"/api/calls/{call_sid}")).json()
        # The turns written before the crash survived it.
        roles = [t["role"] for t in record["turns"]]
        assert roles[:3] == ["assistant", "user", "assistant"]
        assert "Grand Harbor" in record["turns"][0]["text"]
        # And the restarted server takes calls.
        again = await run_call(url, speech, auth_token=TOKEN, max_call_s=60)
        assert again.greeting_ms is not None and again.all_answered, again.summary()


@pytest.mark.asyncio
async def test_a_stalled_model_is_reconnected(tmp_path, speech):
    """The model's socket stays open but it goes silent mid-call: the call reconnects.

    The offline agent runs in the test's process so the test can hang it; new
    connections are served, so the call recovers on a new session with the
    conversation so far, and every caller turn is answered.
    """
    from offline.realtime_server import OfflineRealtimeServer

    agent = OfflineRealtimeServer()
    await agent.start()
    try:
        with running_server(tmp_path, LOCAL_AGENT_BASE_URL=agent.url, MODEL_STALL_SECS="2") as (url, log):
            stalled = False

            def stall_after_greeting(now: float) -> list[str | bytes]:
                nonlocal stalled
                if not stalled and now >= 1.0:  # the greeting is streaming: hang the model
                    stalled = agent.stall_connections() == 1
                return []

            result = await run_call(url, speech, auth_token=TOKEN, max_call_s=90, reply_timeout_s=20,
                                    behaviour=CallerBehaviour(inject=stall_after_greeting))
            record = await _ended_record(url, result.call_sid)
    finally:
        await agent.stop()
    assert stalled
    opened = [e for e in agent.received if e["type"] == "connection.opened"]
    assert len(opened) == 2  # a second session replaced the hung one
    assert result.all_answered, result.summary()
    assert record["end_reason"] != "model_error"
    assert "model stalled" in log.read_text()


#: Tool faults: how the caller behaves, the error type recorded, and the call SID's digit.
TOOL_FAULTS = {
    "raising": (CallerBehaviour(), "tool_failed", "1"),
    "hanging": (CallerBehaviour(pause_ms=3000), "timeout", "2"),
    "interrupted": (CallerBehaviour(barge_in_after_ms=600), "cancelled", "3"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", list(TOOL_FAULTS))
async def test_a_failing_tool(tmp_path, speech, fault):
    """The first tool the agent calls (``get_caller_context``) raises, hangs, or is cut off.

    Raising: its table is gone from the booking database. Hanging: another process
    holds the database's exclusive lock, so the query waits past the tool's 4 s
    deadline; the caller pauses 3 s before each turn, so the deadline comes first.
    Interrupted: the same hanging query, but the caller talks over the "one moment",
    so Pipecat cancels the call (barge-in) before the deadline. In each case the agent
    goes on talking, every caller turn is answered, and the record holds the tool call
    with its error.
    """
    import sqlite3

    booking_db = tmp_path / "booking.db"
    lock: sqlite3.Connection | None = None
    behaviour, expected, digit = TOOL_FAULTS[fault]
    with running_server(tmp_path) as (url, log):
        database = sqlite3.connect(booking_db, isolation_level=None)
        if fault == "raising":
            database.execute("ALTER TABLE customers RENAME TO customers_gone")
            database.close()
        else:
            database.execute("BEGIN EXCLUSIVE")
            lock = database
        call_sid = "CA" + digit * 32
        call = asyncio.create_task(run_call(url, speech, auth_token=TOKEN, max_call_s=90,
                                            reply_timeout_s=20, call_sid=call_sid, behaviour=behaviour))
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                while not call.done():  # until the tool call is over and recorded
                    response = await client.get(f"/api/calls/{call_sid}")
                    if response.status_code == 200 and response.json().get("tool_calls"):
                        break
                    await asyncio.sleep(0.2)
        finally:
            if lock is not None:
                lock.rollback()
                lock.close()
        result = await call
        record = await _ended_record(url, call_sid)

    assert record["tool_calls"], "the tool call is missing from the record"
    tool = record["tool_calls"][0]
    assert tool["name"] == "get_caller_context"
    assert tool["error"]["error"]["type"] == expected, tool
    assert result.all_answered, result.summary()
    assert record["end_reason"] in ("agent_ended", "caller_hung_up")
    logged = log.read_text()
    if fault == "raising":  # an unexpected exception in a tool is logged, with its traceback
        assert logged.count("tool get_caller_context failed") == 1
    else:
        assert "Traceback" not in logged
