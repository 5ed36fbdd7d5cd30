"""Call records in SQLite: one row per call, one row per turn, written as they happen.

Each turn is committed on its own as soon as it completes, in WAL mode, so a crash
loses at most the turn in progress. Timestamps are ISO 8601 in UTC with milliseconds.

Writes run in a worker thread (``asyncio.to_thread``) so the event loop that carries
the calls' audio never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

__all__ = ["CallStore", "utc_now"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_sid    TEXT PRIMARY KEY,
    stream_sid  TEXT,
    account_sid TEXT,
    from_number TEXT,
    to_number   TEXT,
    provider    TEXT,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    end_reason  TEXT
);
CREATE TABLE IF NOT EXISTS turns (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid    TEXT NOT NULL REFERENCES calls(call_sid),
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text        TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    ended_at    TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    audio_played_ms INTEGER,
    generated_text TEXT
);
CREATE INDEX IF NOT EXISTS turns_by_call ON turns (call_sid, id);
CREATE TABLE IF NOT EXISTS tool_calls (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid    TEXT NOT NULL REFERENCES calls(call_sid),
    name        TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    result      TEXT,
    error       TEXT,
    duration_ms REAL NOT NULL,
    started_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tool_calls_by_call ON tool_calls (call_sid, id);
"""
_ADDED_TURN_COLUMNS = {"audio_played_ms": "INTEGER", "generated_text": "TEXT"}


def utc_now(ago_ms: float = 0.0) -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-11-20T21:52:35.123Z``.

    Args:
        ago_ms: Give the time this many milliseconds ago instead.
    """
    moment = datetime.now(timezone.utc) - timedelta(milliseconds=ago_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallStore:
    """The store of call records.

    Args:
        path: SQLite database file (created with its folder if missing), or
            ``:memory:``.
    """

    def __init__(self, path: str):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(turns)")}
            for column, kind in _ADDED_TURN_COLUMNS.items():  # files from older versions
                if column not in columns:
                    self._db.execute(f"ALTER TABLE turns ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)

    async def start_call(
        self,
        call_sid: str,
        *,
        stream_sid: str | None,
        account_sid: str | None,
        from_number: str | None,
        to_number: str | None,
        provider: str,
    ) -> None:
        """Record that a call's media stream started (idempotent per call SID).

        Args:
            call_sid: Twilio's call SID (``CA...``).
            stream_sid: Twilio's stream SID (``MZ...``).
            account_sid: Twilio's account SID (``AC...``).
            from_number: The caller's number (E.164).
            to_number: The number dialled (E.164).
            provider: The speech-to-speech provider serving the call.
        """
        await asyncio.to_thread(
            self._write,
            "INSERT INTO calls (call_sid, stream_sid, account_sid, from_number, to_number,"
            " provider, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(call_sid) DO UPDATE SET stream_sid=excluded.stream_sid",
            (call_sid, stream_sid, account_sid, from_number, to_number, provider, utc_now()),
        )

    async def add_turn(
        self,
        call_sid: str,
        *,
        role: str,
        text: str,
        started_at: str,
        ended_at: str,
        interrupted: bool = False,
        audio_played_ms: int | None = None,
        generated_text: str | None = None,
    ) -> None:
        """Append one completed turn to a call, committed at once.

        Args:
            call_sid: The call's SID.
            role: ``user`` or ``assistant``.
            text: What was said (for the offline agent's caller turns, a description
                such as ``[caller spoke 2.4 s]``).
            started_at: ISO 8601 UTC time the turn's audio started.
            ended_at: ISO 8601 UTC time the turn's audio ended.
            interrupted: Whether the caller cut the turn off.
            audio_played_ms: For the agent's turns: how much of its audio the caller
                heard, in ms (from Twilio's mark echoes).
            generated_text: For the agent's turns: everything the model said, of
                which ``text`` is the part heard.
        """
        await asyncio.to_thread(
            self._write,
            "INSERT INTO turns (call_sid, role, text, started_at, ended_at, interrupted,"
            " audio_played_ms, generated_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (call_sid, role, text, started_at, ended_at, int(interrupted), audio_played_ms,
             generated_text),
        )

    async def add_tool_call(
        self,
        call_sid: str,
        *,
        name: str,
        arguments: dict[str, Any],
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        duration_ms: float,
        started_at: str,
    ) -> None:
        """Record one tool call of the agent, committed at once.

        Args:
            call_sid: The call's SID.
            name: The tool the model called.
            arguments: The arguments as the model sent them.
            result: The tool's result (None if it failed).
            error: The error envelope sent back to the model (None on success).
            duration_ms: How long the tool took, in ms.
            started_at: ISO 8601 UTC time the call started.
        """
        await asyncio.to_thread(
            self._write,
            "INSERT INTO tool_calls (call_sid, name, arguments, result, error, duration_ms,"
            " started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (call_sid, name, _json(arguments), _json(result), _json(error), duration_ms, started_at),
        )

    async def end_call(self, call_sid: str, reason: str) -> None:
        """Record the end of a call; the first reason recorded stays.

        Args:
            call_sid: The call's SID.
            reason: Why it ended, e.g. ``caller_hung_up``, ``agent_ended``, ``error``.
        """
        await asyncio.to_thread(
            self._write,
            "UPDATE calls SET ended_at=?, end_reason=? WHERE call_sid=? AND ended_at IS NULL",
            (utc_now(), reason, call_sid),
        )

    def get_call(self, call_sid: str) -> dict[str, Any] | None:
        """Read a call record with its turns in order.

        Args:
            call_sid: The call's SID.

        Returns:
            ``{call_sid, stream_sid, from, to, provider, started_at, ended_at,
            end_reason, turns: [{role, text, started_at, ended_at, interrupted}]}``
            in the order the turns started; the agent's turns also carry
            ``audio_played_ms`` and ``generated_text``; and ``tool_calls: [{name,
            arguments, result, error, duration_ms, started_at}]``. None if no such call.
        """
        with self._lock:
            call = self._db.execute("SELECT * FROM calls WHERE call_sid=?", (call_sid,)).fetchone()
            if call is None:
                return None
            turns = self._db.execute(
                "SELECT role, text, started_at, ended_at, interrupted, audio_played_ms,"
                " generated_text FROM turns WHERE call_sid=? ORDER BY started_at, id",
                (call_sid,),
            ).fetchall()
            tool_calls = self._db.execute(
                "SELECT name, arguments, result, error, duration_ms, started_at FROM tool_calls"
                " WHERE call_sid=? ORDER BY id",
                (call_sid,),
            ).fetchall()
        return {
            "call_sid": call["call_sid"],
            "stream_sid": call["stream_sid"],
            "from": call["from_number"],
            "to": call["to_number"],
            "provider": call["provider"],
            "started_at": call["started_at"],
            "ended_at": call["ended_at"],
            "end_reason": call["end_reason"],
            "turns": [_turn_json(t) for t in turns],
            "tool_calls": [
                {
                    "name": t["name"],
                    "arguments": json.loads(t["arguments"]),
                    "result": json.loads(t["result"]) if t["result"] else None,
                    "error": json.loads(t["error"]) if t["error"] else None,
                    "duration_ms": round(t["duration_ms"], 1),
                    "started_at": t["started_at"],
                }
                for t in tool_calls
            ],
        }


def _turn_json(row: sqlite3.Row) -> dict[str, Any]:
    turn = {k: row[k] for k in ("role", "text", "started_at", "ended_at")}
    turn["interrupted"] = bool(row["interrupted"])
    if row["role"] == "assistant":
        turn["audio_played_ms"] = row["audio_played_ms"]
        turn["generated_text"] = row["generated_text"]
    return turn


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)
