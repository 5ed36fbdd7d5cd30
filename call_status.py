"""Call progress in SQLite: Twilio's status callbacks, AMD results, outbound tasks, refusals.

Kept beside the call records (same file, ``CALLS_DB_PATH``, own tables) until they
move into ``records.py``:

- ``call_status_events``: one row per status callback (``initiated``, ``ringing``,
  ``in-progress``, ``completed``, ``busy``, ``no-answer``, ``failed``, ``canceled``),
  plus our own ``queued`` (the REST API accepted an outbound call) and ``refused``
  (the webhook turned the call away).
- ``call_progress``: one row per call: direction, numbers, outbound preset and task,
  who answered (AMD), whether a voicemail was left, the refusal reason, the duration.

Status values and callback fields: https://www.twilio.com/docs/voice/api/call-resource#call-status-values
and https://www.twilio.com/docs/voice/twiml#request-parameters (``CallStatus``,
``CallDuration``, ``SequenceNumber``, ``Timestamp``). Twilio may deliver callbacks out
of order, so the history is ordered by ``SequenceNumber`` where Twilio sent one.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from records import utc_now

__all__ = ["CallStatusStore", "TERMINAL_STATUSES"]

#: Statuses after which a call has ended.
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled", "refused"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_progress (
    call_sid        TEXT PRIMARY KEY,
    direction       TEXT,
    from_number     TEXT,
    to_number       TEXT,
    preset          TEXT,
    task            TEXT,
    answered_by     TEXT,
    amd_duration_ms INTEGER,
    voicemail       TEXT,
    refused_reason  TEXT,
    duration_s      INTEGER,
    created_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS call_status_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid        TEXT NOT NULL,
    status          TEXT NOT NULL,
    sequence_number INTEGER,
    duration_s      INTEGER,
    twilio_timestamp TEXT,
    received_at     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS status_events_by_call ON call_status_events (call_sid, id);
"""


class CallStatusStore:
    """The store of call progress.

    Args:
        path: SQLite file (shared with :class:`records.CallStore`), or ``:memory:``.
    """

    def __init__(self, path: str):
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _run(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def _ensure(call_sid: str) -> tuple[str, tuple]:
        return (
            "INSERT INTO call_progress (call_sid, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (call_sid, utc_now()),
        )

    async def record_outbound(
        self, call_sid: str, *, to_number: str, from_number: str, preset: str | None,
        task: dict[str, Any],
    ) -> None:
        """Record an outbound call the REST API accepted (status ``queued``).

        Args:
            call_sid: The SID Twilio gave the call.
            to_number: Who we call (E.164).
            from_number: Our caller ID (E.164).
            preset: The preset's name, if any.
            task: ``{prompt, context}`` as the agent gets them.
        """
        await asyncio.to_thread(self._run, [
            self._ensure(call_sid),
            ("UPDATE call_progress SET direction='outbound-api', to_number=?, from_number=?,"
             " preset=?, task=? WHERE call_sid=?",
             (to_number, from_number, preset, json.dumps(task), call_sid)),
            ("INSERT INTO call_status_events (call_sid, status, received_at) VALUES (?, 'queued', ?)",
             (call_sid, utc_now())),
        ])

    async def record_status(
        self, call_sid: str, status: str, *, sequence_number: int | None = None,
        duration_s: int | None = None, twilio_timestamp: str | None = None,
        direction: str | None = None, from_number: str | None = None, to_number: str | None = None,
    ) -> None:
        """Append one status callback to a call's history.

        Args:
            call_sid: ``CallSid``.
            status: ``CallStatus``.
            sequence_number: ``SequenceNumber`` (orders callbacks of one call).
            duration_s: ``CallDuration`` in s (sent with ``completed``).
            twilio_timestamp: ``Timestamp`` as Twilio wrote it (RFC 2822).
            direction: ``Direction`` (``inbound``, ``outbound-api``, ...).
            from_number: ``From``.
            to_number: ``To``.
        """
        await asyncio.to_thread(self._run, [
            self._ensure(call_sid),
            ("UPDATE call_progress SET direction=COALESCE(direction, ?),"
             " from_number=COALESCE(from_number, ?), to_number=COALESCE(to_number, ?),"
             " duration_s=COALESCE(?, duration_s) WHERE call_sid=?",
             (direction, from_number, to_number, duration_s, call_sid)),
            ("INSERT INTO call_status_events (call_sid, status, sequence_number, duration_s,"
             " twilio_timestamp, received_at) VALUES (?, ?, ?, ?, ?, ?)",
             (call_sid, status, sequence_number, duration_s, twilio_timestamp, utc_now())),
        ])

    async def record_refusal(
        self, call_sid: str, reason: str, *, from_number: str | None, to_number: str | None,
        direction: str | None = "inbound",
    ) -> None:
        """Record a call the webhook refused (status ``refused``).

        Args:
            call_sid: ``CallSid``.
            reason: ``capacity`` (``MAX_CONCURRENT_CALLS`` reached) or ``draining``
                (the server is shutting down).
            from_number: The caller.
            to_number: The number called.
            direction: ``Direction`` of the webhook.
        """
        await asyncio.to_thread(self._run, [
            self._ensure(call_sid),
            ("UPDATE call_progress SET refused_reason=?, direction=COALESCE(direction, ?),"
             " from_number=COALESCE(from_number, ?), to_number=COALESCE(to_number, ?)"
             " WHERE call_sid=?",
             (reason, direction, from_number, to_number, call_sid)),
            ("INSERT INTO call_status_events (call_sid, status, received_at) VALUES (?, 'refused', ?)",
             (call_sid, utc_now())),
        ])

    async def record_answered_by(
        self, call_sid: str, answered_by: str, *, amd_duration_ms: int | None,
        voicemail: str | None = None,
    ) -> None:
        """Record answering machine detection's verdict.

        Args:
            call_sid: ``CallSid``.
            answered_by: ``AnsweredBy`` (``human``, ``machine_end_beep``, ``fax``, ...).
            amd_duration_ms: ``MachineDetectionDuration`` in ms.
            voicemail: The message left on a machine, if one was.
        """
        await asyncio.to_thread(self._run, [
            self._ensure(call_sid),
            ("UPDATE call_progress SET answered_by=?, amd_duration_ms=?,"
             " voicemail=COALESCE(?, voicemail) WHERE call_sid=?",
             (answered_by, amd_duration_ms, voicemail, call_sid)),
        ])

    def get(self, call_sid: str) -> dict[str, Any] | None:
        """A call's progress.

        Args:
            call_sid: The call's SID.

        Returns:
            ``{call_sid, status, status_history: [{status, at, sequence_number,
            duration_s}], duration_s, direction, from, to, preset, task,
            answered_by, amd_duration_ms, voicemail, refused_reason}``; ``status`` is
            the last status in Twilio's order (a terminal status wins over a late
            ``ringing``). None if the call is unknown here.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM call_progress WHERE call_sid=?", (call_sid,)
            ).fetchone()
            if row is None:
                return None
            events = self._db.execute(
                "SELECT status, sequence_number, duration_s, twilio_timestamp, received_at"
                " FROM call_status_events WHERE call_sid=? ORDER BY id", (call_sid,)
            ).fetchall()
        return _progress_json(row, events)

    def list(self, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest calls first, optionally only those whose current status is ``status``.

        Args:
            status: e.g. ``refused``; None for all.
            limit: At most this many.

        Returns:
            Entries as :meth:`get` returns them.
        """
        with self._lock:
            sids = [r[0] for r in self._db.execute(
                "SELECT call_sid FROM call_progress ORDER BY created_at DESC, rowid DESC"
            )]
        out = []
        for sid in sids:
            entry = self.get(sid)
            if entry and (status is None or entry["status"] == status):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out


def _progress_json(row: sqlite3.Row, events: list[sqlite3.Row]) -> dict[str, Any]:
    # Our own events (no sequence number) keep their arrival order; Twilio's are
    # placed by SequenceNumber among themselves.
    ours = [e for e in events if e["sequence_number"] is None]
    twilio = sorted((e for e in events if e["sequence_number"] is not None),
                    key=lambda e: e["sequence_number"])
    ordered = ours[:1] + twilio + ours[1:] if ours and ours[0]["status"] == "queued" else ours + twilio
    history = [
        {"status": e["status"], "at": e["received_at"], "sequence_number": e["sequence_number"],
         "duration_s": e["duration_s"]}
        for e in ordered
    ]
    terminal = [h["status"] for h in history if h["status"] in TERMINAL_STATUSES]
    status = terminal[-1] if terminal else (history[-1]["status"] if history else None)
    return {
        "call_sid": row["call_sid"],
        "status": status,
        "status_history": history,
        "duration_s": row["duration_s"],
        "direction": row["direction"],
        "from": row["from_number"],
        "to": row["to_number"],
        "preset": row["preset"],
        "task": json.loads(row["task"]) if row["task"] else None,
        "answered_by": row["answered_by"],
        "amd_duration_ms": row["amd_duration_ms"],
        "voicemail": row["voicemail"],
        "refused_reason": row["refused_reason"],
    }
