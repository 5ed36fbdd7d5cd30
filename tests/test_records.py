"""The call-record store on SQLite and on a real PostgreSQL: what a call record shows and exports."""

from __future__ import annotations

import json
import sqlite3

import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from datetime import timedelta

from records import CallStore, parse_time, utc_now
from records.db import VERSION_TABLE, migrate
from records.export import to_json, to_text
from records.models import Base

SID = "CA" + "7" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    """Where the records live: a SQLite file, or a fresh database on a real PostgreSQL."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "calls.db")


@pytest_asyncio.fixture
async def store(target):
    store = await CallStore.open(target)
    yield store
    await store.close()


async def _a_call(store: CallStore) -> None:
    await store.record_status(SID, "ringing", sequence_number=1, direction="inbound",
                              from_number="+15551230001", to_number="+15557654321")
    await store.start_call(SID, stream_sid="MZ" + "1" * 32, account_sid="AC" + "2" * 32,
                           from_number="+15551230001", to_number="+15557654321", provider="local")
    start = parse_time((await store.get_call(SID))["started_at"])

    def at(seconds: float) -> str:
        return (start + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    await store.add_turn(SID, role="assistant", text="Hello, how can I help?",
                         started_at=at(0.0), ended_at=at(1.5),
                         audio_played_ms=1500, generated_text="Hello, how can I help?")
    await store.add_turn(SID, role="user", text="I need a room in Lisbon.",
                         started_at=at(2.5), ended_at=at(4.5))
    await store.add_tool_call(SID, name="search_hotels", arguments={"city": "Lisbon"},
                              result={"hotels": ["Tejo"]}, error=None, duration_ms=12.34,
                              started_at=at(4.7))
    await store.add_turn(SID, role="assistant", text="The Tejo has", interrupted=True,
                         started_at=at(5.14), ended_at=at(6.0),
                         audio_played_ms=860, generated_text="The Tejo has a room for you.",
                         latency_ms=640)
    await store.record_status(SID, "completed", sequence_number=3, duration_s=9)
    await store.end_call(SID, "caller_hung_up")


@pytest.mark.asyncio
async def test_a_call_record_shows_turns_latency_tools_and_status_changes(store):
    events = []
    store.listeners.append(events.append)
    await _a_call(store)
    await store.end_call(SID, "error")  # the first end reason stays
    record = await store.get_call(SID)
    assert record["end_reason"] == "caller_hung_up" and record["provider"] == "local"
    assert [t["role"] for t in record["turns"]] == ["assistant", "user", "assistant"]
    cut = record["turns"][2]
    assert cut["interrupted"] and cut["audio_played_ms"] == 860 and cut["latency_ms"] == 640
    assert cut["generated_text"] == "The Tejo has a room for you."
    assert record["turns"][0]["latency_ms"] is None  # the greeting answered nobody
    assert record["tool_calls"] == [{"name": "search_hotels", "arguments": {"city": "Lisbon"},
                                     "result": {"hotels": ["Tejo"]}, "error": None,
                                     "duration_ms": 12.3, "started_at": record["tool_calls"][0]["started_at"]}]
    assert [h["status"] for h in record["status_history"]] == ["ringing", "completed"]
    assert record["status"] == "completed" and record["duration_s"] == 9
    assert record["direction"] == "inbound" and record["from"] == "+15551230001"
    # Every write told the listeners, once, after committing.
    assert [e["type"] for e in events] == [
        "status", "call_started", "turn", "turn", "tool_call", "turn", "interruption", "status",
        "call_ended"]
    assert all(e["call_sid"] == SID for e in events)


@pytest.mark.asyncio
async def test_each_turn_is_committed_as_it_happens(store):
    """Another connection (another process, after a crash) sees a turn as soon as it is written."""
    await store.start_call(SID, stream_sid="MZ1", account_sid=None, from_number=None,
                           to_number=None, provider="local")
    await store.add_turn(SID, role="user", text="first", started_at=utc_now(), ended_at=utc_now())
    reader = CallStore(store.url)
    try:
        record = await reader.get_call(SID)
    finally:
        await reader.close()
    assert [t["text"] for t in record["turns"]] == ["first"] and record["ended_at"] is None


@pytest.mark.asyncio
async def test_history_lists_searches_and_separates_active_calls(store):
    await _a_call(store)
    live = "CA" + "8" * 32
    await store.start_call(live, stream_sid="MZ2", account_sid=None, from_number="+15550000002",
                           to_number=None, provider="local")
    await store.record_refusal("CA" + "9" * 32, "capacity", from_number="+15550000003", to_number=None)
    assert [c["call_sid"] for c in await store.list(active=True)] == [live]
    assert live not in [c["call_sid"] for c in await store.list(active=False)]
    (found,) = await store.list(q="lisbon")  # words the caller said
    assert found["call_sid"] == SID and found["turn_count"] == 3 and found["interruptions"] == 1
    assert found["latency_ms_avg"] == 640 and found["end_reason"] == "caller_hung_up"
    assert [c["call_sid"] for c in await store.list(q="0000002")] == [live]  # a number
    assert [c["refused_reason"] for c in await store.list(status="refused")] == ["capacity"]
    assert len(await store.list(limit=2)) == 2
    # % and _ are literal characters, not wildcards.
    assert await store.list(q="%") == [] and await store.list(q="caller%up") == []
    assert await store.list(q="calle_") == [] and len(await store.list(q="_hung_")) == 1


@pytest.mark.asyncio
async def test_export_as_json_and_text(store):
    await _a_call(store)
    record = await store.get_call(SID)
    assert json.loads(to_json(record)) == record
    text = to_text(record)
    assert f"Call {SID}" in text and "End reason: caller_hung_up" in text
    assert "Status: ringing -> completed" in text
    lines = text.splitlines()
    transcript = lines[lines.index("") + 1:]
    assert transcript[0].startswith("[00:00.0] Agent: Hello, how can I help?")
    assert transcript[1] == "[00:02.5] Caller: I need a room in Lisbon."
    assert transcript[2].startswith("[00:04.7] Tool search_hotels 12.3 ms: {\"city\": \"Lisbon\"}")
    assert transcript[3] == ("[00:05.1] Agent (after 640 ms): The Tejo has [interrupted: heard 860 ms;"
                             " it was saying: The Tejo has a room for you.]")
    assert "Reply latency: mean 640 ms, max 640 ms over 1 replies" in text


@pytest.mark.asyncio
async def test_the_migrations_match_the_models(store):
    engine = store._engine

    def diff(connection):
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []


def test_a_calls_db_from_before_the_migrations_is_adopted(tmp_path):
    """Upgrading keeps the calls a raw-sqlite3 ``calls.db`` of earlier versions holds."""
    path = tmp_path / "calls.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE calls (call_sid TEXT PRIMARY KEY, stream_sid TEXT, account_sid TEXT,
            from_number TEXT, to_number TEXT, provider TEXT, started_at TEXT NOT NULL,
            ended_at TEXT, end_reason TEXT);
        CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, call_sid TEXT NOT NULL, role TEXT NOT NULL,
            text TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0, audio_played_ms INTEGER, generated_text TEXT);
        CREATE TABLE tool_calls (id INTEGER PRIMARY KEY AUTOINCREMENT, call_sid TEXT NOT NULL, name TEXT NOT NULL,
            arguments TEXT NOT NULL, result TEXT, error TEXT, duration_ms REAL NOT NULL, started_at TEXT NOT NULL);
        CREATE TABLE call_progress (call_sid TEXT PRIMARY KEY, direction TEXT, from_number TEXT,
            to_number TEXT, preset TEXT, task TEXT, answered_by TEXT, amd_duration_ms INTEGER,
            voicemail TEXT, refused_reason TEXT, duration_s INTEGER, created_at TEXT NOT NULL);
        CREATE TABLE call_status_events (id INTEGER PRIMARY KEY AUTOINCREMENT, call_sid TEXT NOT NULL,
            status TEXT NOT NULL, sequence_number INTEGER, duration_s INTEGER, twilio_timestamp TEXT,
            received_at TEXT NOT NULL);
    """)
    db.execute("INSERT INTO calls VALUES (?, 'MZ1', 'AC1', '+1555', '+1666', 'local',"
               " '2026-11-01T10:00:00.000Z', '2026-11-01T10:01:00.000Z', 'agent_ended')", (SID,))
    db.execute("INSERT INTO turns (call_sid, role, text, started_at, ended_at) VALUES"
               " (?, 'user', 'old words', '2026-11-01T10:00:01.000Z', '2026-11-01T10:00:02.000Z')", (SID,))
    db.execute("INSERT INTO tool_calls (call_sid, name, arguments, result, duration_ms, started_at)"
               " VALUES (?, 't', '{\"a\": 1}', '{\"ok\": true}', 5.0, '2026-11-01T10:00:03.000Z')", (SID,))
    db.execute("INSERT INTO call_progress (call_sid, direction, preset, task, created_at) VALUES"
               " (?, 'outbound-api', 'survey', '{\"prompt\": \"p\"}', '2026-11-01T09:59:00.000Z')", (SID,))
    db.execute("INSERT INTO call_status_events (call_sid, status, received_at) VALUES"
               " (?, 'queued', '2026-11-01T09:59:00.000Z')", (SID,))
    db.commit()
    db.close()
    migrate(f"sqlite+aiosqlite:///{path}")
    import asyncio

    async def read():
        store = CallStore(str(path))
        try:
            return await store.get_call(SID)
        finally:
            await store.close()

    record = asyncio.run(read())
    assert record["end_reason"] == "agent_ended" and record["turns"][0]["text"] == "old words"
    assert record["tool_calls"][0]["arguments"] == {"a": 1} and record["tool_calls"][0]["result"] == {"ok": True}
    assert record["preset"] == "survey" and record["task"] == {"prompt": "p"}
    assert [h["status"] for h in record["status_history"]] == ["queued"]


@pytest.mark.asyncio
async def test_a_bad_turn_is_refused_and_loses_nothing_else(store):
    await store.start_call(SID, stream_sid="MZ1", account_sid=None, from_number=None,
                           to_number=None, provider="local")
    with pytest.raises(ValueError, match="role"):
        await store.add_turn(SID, role="robot", text="x", started_at=utc_now(), ended_at=utc_now())
    await store.add_turn(SID, role="user", text="still here", started_at=utc_now(), ended_at=utc_now())
    assert [t["text"] for t in (await store.get_call(SID))["turns"]] == ["still here"]
