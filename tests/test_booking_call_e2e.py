"""A whole booking by voice: real caller speech, the offline agent's tool calls, real effects.

The offline agent, when the booking tools are declared, looks the caller up, searches
Lisbon, books the first hotel and ends the call, one step per caller turn. The test
checks the effects where a user would: in the booking database, in the call record,
in what the caller heard, and in Twilio's REST API (a local fake) completing the call.
"""

from __future__ import annotations


import pytest

from booking.store import BookingStore
from offline.caller import CallerBehaviour, run_call
from tests.support import ACCOUNT_SID, AUDIO, TOKEN, ended_record, running_server


@pytest.fixture(params=["sqlite", "postgresql"])
def booking_server(request, tmp_path, fake_twilio_rest):
    """The real server with a fresh booking database: SQLite, or a real PostgreSQL."""
    if request.param == "postgresql":
        url_db = request.getfixturevalue("postgres_url")
    else:
        url_db = f"sqlite+aiosqlite:///{tmp_path / 'booking.db'}"
    with running_server(
        tmp_path,
        DATABASE_URL=url_db,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_API_BASE_URL=fake_twilio_rest.url,
    ) as (url, log):
        yield url, url_db, fake_twilio_rest


@pytest.mark.asyncio
async def test_a_caller_books_a_hotel_by_voice(booking_server):
    url, db_url, rest = booking_server
    result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90)
    record = await ended_record(url, result.call_sid)

    # Every caller turn was answered, and the agent hung up after its goodbye.
    assert all(u["replied"] for u in result.utterances), result.summary()
    assert result.ended_by == "server"
    assert record["end_reason"] == "agent_ended"
    goodbye = record["turns"][-1]
    assert goodbye["role"] == "assistant" and "goodbye" in goodbye["text"].lower()
    assert goodbye["interrupted"] is False  # heard to its end before the hang-up

    # The tool calls are in the record, with arguments, results and durations.
    calls = record["tool_calls"]
    assert [c["name"] for c in calls] == [
        "get_caller_context", "search_hotels", "create_booking", "end_call"
    ]
    assert all(c["error"] is None and c["duration_ms"] >= 0 for c in calls)
    assert calls[0]["result"]["customer"]["phone_number"] == "+15551230001"  # from the call
    reference = calls[2]["result"]["booking"]["reference"]

    # The booking is real: stored, confirmed, under this caller and this call.
    store = BookingStore.from_url(db_url)
    try:
        booking = await store.get_booking(reference)
    finally:
        await store.close()
    assert booking is not None and booking.status == "confirmed"
    assert booking.call_sid == result.call_sid
    # The agent read the reference back to the caller.
    spoken = " ".join(t["text"] for t in record["turns"] if t["role"] == "assistant")
    assert " ".join("dash" if c == "-" else c for c in reference) in spoken

    # Twilio's REST API completed the call once the goodbye had played.
    completions = [r for r in rest.requests if r["call_sid"] == result.call_sid]
    assert [r["form"] for r in completions] == [{"Status": "completed"}]


@pytest.mark.asyncio
@pytest.mark.parametrize("booking_server", ["sqlite"], indirect=True)
async def test_keys_the_caller_presses_reach_the_agent(booking_server):
    url, _, _ = booking_server
    result = await run_call(
        url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=60,
        behaviour=CallerBehaviour(dtmf_after_greeting="42#"),
    )
    record = await ended_record(url, result.call_sid)
    assert result.dtmf_sent_at is not None and result.dtmf_answered_at is not None
    pressed = [t for t in record["turns"] if t["role"] == "user" and "pressed" in t["text"]]
    assert pressed and pressed[0]["text"] == "[caller pressed 4 2 #]"
    # The agent answered the keys: its next turn is a reply, here the caller lookup.
    assert record["tool_calls"][0]["name"] == "get_caller_context"
