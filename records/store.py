"""The call-record store on SQLAlchemy async: calls, turns, tool calls, status changes.

Each write is its own transaction, committed as soon as the thing it records has
happened (a turn when it completes, a tool call when it returns, a status callback
when it arrives), so a crash loses at most the turn in progress. Writes go through
the async engine: with SQLite (aiosqlite) the disk work runs in the driver's thread,
with PostgreSQL (asyncpg) it is network I/O; the event loop that carries the calls'
audio never waits on a disk.

After each committed write the store tells its listeners (:attr:`CallStore.listeners`)
what happened, as an event dict (see :mod:`events` for the shapes); the server
publishes them on the live event bus and counts them in its metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from loguru import logger
from sqlalchemy import Select, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from records.db import create_engine, migrate_async, records_url
from records.models import Call, StatusEvent, ToolCall, Turn

__all__ = ["CallStore", "TERMINAL_STATUSES", "utc_now"]

#: Statuses after which a call has ended.
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled", "refused"})

Listener = Callable[[dict[str, Any]], None]


def utc_now(ago_ms: float = 0.0) -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-11-20T21:52:35.123Z``.

    Args:
        ago_ms: Give the time this many milliseconds ago instead.
    """
    moment = datetime.now(timezone.utc) - timedelta(milliseconds=ago_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """Read a time written by :func:`utc_now`.

    Raises:
        ValueError: If it is not ISO 8601.
    """
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class CallStore:
    """The store of call records. Open it with :meth:`open` (which migrates the schema).

    Args:
        target: A database URL or a SQLite file path (see :func:`records.db.records_url`).

    Attributes:
        listeners: Called with each event after its write commits; a listener that
            raises is logged and skipped.
    """

    def __init__(self, target: str | None = None):
        self.url = records_url(target)
        self._engine = create_engine(self.url)
        self.listeners: list[Listener] = []

    @classmethod
    async def open(cls, target: str | None = None) -> "CallStore":
        """Migrate the records' database to the newest schema and open the store.

        Args:
            target: A database URL or a SQLite file path (see :func:`records.db.records_url`).

        Returns:
            The store.

        Raises:
            Exception: Whatever Alembic or the database raise (e.g. unreachable server).
        """
        url = records_url(target)
        await migrate_async(url)
        return cls(url)

    async def close(self) -> None:
        """Close the database connections."""
        await self._engine.dispose()

    # ------------------------------------------------------------------ writes

    def _emit(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception as e:  # a broken listener must not lose the record
                logger.warning(f"call record listener {listener!r} failed on {event['type']}: {e}")

    def _upsert(self, conn: AsyncConnection, values: dict[str, Any], update_cols: dict[str, Any]):
        """``INSERT INTO calls ... ON CONFLICT (call_sid) DO UPDATE/NOTHING`` for this dialect."""
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(Call).values(**values)
        if update_cols:
            return stmt.on_conflict_do_update(index_elements=[Call.call_sid], set_=update_cols)
        return stmt.on_conflict_do_nothing(index_elements=[Call.call_sid])

    async def _ensure_call(self, conn: AsyncConnection, call_sid: str) -> None:
        await conn.execute(self._upsert(conn, {"call_sid": call_sid, "created_at": utc_now()}, {}))

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
        now = utc_now()
        values = {
            "call_sid": call_sid, "stream_sid": stream_sid, "account_sid": account_sid,
            "from_number": from_number, "to_number": to_number, "provider": provider,
            "created_at": now, "started_at": now,
        }
        async with self._engine.begin() as conn:
            await conn.execute(self._upsert(conn, values, {
                "stream_sid": stream_sid, "account_sid": account_sid, "provider": provider,
                "started_at": func.coalesce(Call.started_at, now),
                "from_number": func.coalesce(Call.from_number, from_number),
                "to_number": func.coalesce(Call.to_number, to_number),
            }))
            direction = (await conn.execute(
                select(Call.direction).where(Call.call_sid == call_sid))).scalar()
        self._emit({"type": "call_started", "call_sid": call_sid, "at": now, "stream_sid": stream_sid,
                    "from": from_number, "to": to_number, "provider": provider, "direction": direction})

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
        latency_ms: int | None = None,
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
            latency_ms: For the agent's turns: from the caller's turn ending (our VAD's
                stop) to the reply's first audio frame sent to Twilio, in ms; None for
                a reply nobody was waiting for (the greeting).

        Raises:
            ValueError: If ``role`` is neither ``user`` nor ``assistant``.
        """
        if role not in ("user", "assistant"):
            raise ValueError(f"role must be user or assistant, not {role!r}")
        turn = {
            "role": role, "text": text, "started_at": started_at, "ended_at": ended_at,
            "interrupted": bool(interrupted), "audio_played_ms": audio_played_ms,
            "generated_text": generated_text, "latency_ms": latency_ms,
        }
        async with self._engine.begin() as conn:
            await self._ensure_call(conn, call_sid)
            await conn.execute(Turn.__table__.insert().values(call_sid=call_sid, **turn))
        self._emit({"type": "turn", "call_sid": call_sid, "at": ended_at, **_turn_json(turn)})
        if role == "assistant" and interrupted:
            self._emit({"type": "interruption", "call_sid": call_sid, "at": ended_at,
                        "audio_played_ms": audio_played_ms, "heard_text": text,
                        "generated_text": generated_text})

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
        row = {"name": name, "arguments": _jsonable(arguments), "result": _jsonable(result),
               "error": _jsonable(error), "duration_ms": float(duration_ms), "started_at": started_at}
        async with self._engine.begin() as conn:
            await self._ensure_call(conn, call_sid)
            await conn.execute(ToolCall.__table__.insert().values(call_sid=call_sid, **row))
        self._emit({"type": "tool_call", "call_sid": call_sid, "at": utc_now(), **_tool_json(row)})

    async def end_call(self, call_sid: str, reason: str) -> None:
        """Record the end of a call; the first reason recorded stays.

        Args:
            call_sid: The call's SID.
            reason: Why it ended, e.g. ``caller_hung_up``, ``agent_ended``, ``error``.
        """
        now = utc_now()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(Call).where(Call.call_sid == call_sid, Call.ended_at.is_(None))
                .values(ended_at=now, end_reason=reason)
            )
        if result.rowcount:
            self._emit({"type": "call_ended", "call_sid": call_sid, "at": now, "end_reason": reason})

    # -------------------------------------------------------- status changes

    async def _status(self, call_sid: str, status: str, values: dict[str, Any], **event: Any) -> None:
        now = utc_now()
        async with self._engine.begin() as conn:
            await self._ensure_call(conn, call_sid)
            if values:
                await conn.execute(update(Call).where(Call.call_sid == call_sid).values(**values))
            await conn.execute(StatusEvent.__table__.insert().values(
                call_sid=call_sid, status=status, received_at=now, **event))
        self._emit({"type": "status", "call_sid": call_sid, "at": now, "status": status,
                    "sequence_number": event.get("sequence_number")})

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
        await self._status(call_sid, "queued", {
            "direction": "outbound-api", "to_number": to_number, "from_number": from_number,
            "preset": preset, "task": task,
        })

    async def record_status(
        self, call_sid: str, status: str, *, sequence_number: int | None = None,
        duration_s: int | None = None, twilio_timestamp: str | None = None,
        direction: str | None = None, from_number: str | None = None, to_number: str | None = None,
    ) -> None:
        """Append one status callback to a call's history.

        Source of the fields: https://www.twilio.com/docs/voice/api/call-resource#statuscallback
        (``CallStatus``, ``CallDuration``, ``SequenceNumber``, ``Timestamp``).

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
        await self._status(call_sid, status, {
            "direction": func.coalesce(Call.direction, direction),
            "from_number": func.coalesce(Call.from_number, from_number),
            "to_number": func.coalesce(Call.to_number, to_number),
            "duration_s": func.coalesce(duration_s, Call.duration_s),
        }, sequence_number=sequence_number, duration_s=duration_s, twilio_timestamp=twilio_timestamp)

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
        await self._status(call_sid, "refused", {
            "refused_reason": reason,
            "direction": func.coalesce(Call.direction, direction),
            "from_number": func.coalesce(Call.from_number, from_number),
            "to_number": func.coalesce(Call.to_number, to_number),
        })

    async def record_answered_by(
        self, call_sid: str, answered_by: str, *, amd_duration_ms: int | None,
        voicemail: str | None = None,
    ) -> None:
        """Record answering machine detection's verdict.

        Source: https://www.twilio.com/docs/voice/answering-machine-detection (``AnsweredBy``).

        Args:
            call_sid: ``CallSid``.
            answered_by: ``AnsweredBy`` (``human``, ``machine_end_beep``, ``fax``, ...).
            amd_duration_ms: ``MachineDetectionDuration`` in ms.
            voicemail: The message left on a machine, if one was.
        """
        async with self._engine.begin() as conn:
            await self._ensure_call(conn, call_sid)
            await conn.execute(update(Call).where(Call.call_sid == call_sid).values(
                answered_by=answered_by, amd_duration_ms=amd_duration_ms,
                voicemail=func.coalesce(voicemail, Call.voicemail)))
        self._emit({"type": "answered_by", "call_sid": call_sid, "at": utc_now(),
                    "answered_by": answered_by})

    # ------------------------------------------------------------------- reads

    async def get_call(self, call_sid: str) -> dict[str, Any] | None:
        """Read a call record: its media stream, turns, tool calls and progress.

        Args:
            call_sid: The call's SID.

        Returns:
            None if no such call, else ``{call_sid, stream_sid, from, to, provider,
            started_at, ended_at, end_reason, turns: [{role, text, started_at, ended_at,
            interrupted}], tool_calls: [{name, arguments, result, error, duration_ms,
            started_at}]}`` plus the progress fields of :meth:`get_progress` (``status``,
            ``status_history``, ...). Turns are in the order they started; the agent's
            also carry ``audio_played_ms``, ``generated_text`` and ``latency_ms``.
        """
        async with self._engine.connect() as conn:
            call = (await conn.execute(select(Call.__table__).where(Call.call_sid == call_sid))).mappings().first()
            if call is None:
                return None
            turns = (await conn.execute(
                select(Turn.__table__).where(Turn.call_sid == call_sid).order_by(Turn.started_at, Turn.id)
            )).mappings().all()
            tools = (await conn.execute(
                select(ToolCall.__table__).where(ToolCall.call_sid == call_sid).order_by(ToolCall.id)
            )).mappings().all()
            events = (await conn.execute(
                select(StatusEvent.__table__).where(StatusEvent.call_sid == call_sid).order_by(StatusEvent.id)
            )).mappings().all()
        record = _call_json(call)
        record["turns"] = [_turn_json(t) for t in turns]
        record["tool_calls"] = [_tool_json(t) for t in tools]
        record.update(_progress_json(call, events))
        return record

    async def get_progress(self, call_sid: str) -> dict[str, Any] | None:
        """A call's progress alone (no turns).

        Args:
            call_sid: The call's SID.

        Returns:
            ``{call_sid, status, status_history: [{status, at, sequence_number,
            duration_s}], duration_s, direction, from, to, preset, task, answered_by,
            amd_duration_ms, voicemail, refused_reason}``; ``status`` is the last status
            in Twilio's order (a terminal status wins over a late ``ringing``). None if
            the call is unknown.
        """
        async with self._engine.connect() as conn:
            call = (await conn.execute(select(Call.__table__).where(Call.call_sid == call_sid))).mappings().first()
            if call is None:
                return None
            events = (await conn.execute(
                select(StatusEvent.__table__).where(StatusEvent.call_sid == call_sid).order_by(StatusEvent.id)
            )).mappings().all()
        return {"call_sid": call_sid, **_progress_json(call, events)}

    async def list(
        self, *, status: str | None = None, active: bool | None = None, q: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The newest calls first, each a summary: its progress and record fields, no turns.

        Args:
            status: Only calls whose current status (as :meth:`get_progress` computes
                it) is this, e.g. ``refused``; None for all.
            active: True: only calls whose media stream started and has not ended;
                False: only the others; None: both.
            q: Only calls whose SID, numbers, end reason or turn text contain this
                (case-insensitive).
            limit: At most this many.

        Returns:
            Entries of :meth:`get_progress` plus ``started_at``, ``ended_at``,
            ``end_reason``, ``provider``, ``turn_count``, ``interruptions`` and
            ``latency_ms_avg``.
        """
        query: Select = select(Call.__table__).order_by(Call.created_at.desc(), Call.call_sid.desc())
        if active is True:
            query = query.where(Call.started_at.is_not(None), Call.ended_at.is_(None))
        elif active is False:
            query = query.where(or_(Call.started_at.is_(None), Call.ended_at.is_not(None)))
        if q:
            like = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

            def has(column):
                return func.lower(column).like(like, escape="\\")

            in_turns = select(Turn.call_sid).where(has(Turn.text))
            query = query.where(or_(
                has(Call.call_sid), has(Call.from_number), has(Call.to_number), has(Call.end_reason),
                Call.call_sid.in_(in_turns),
            ))
        out: list[dict[str, Any]] = []
        offset, page = 0, max(limit, 50)
        async with self._engine.connect() as conn:
            while len(out) < limit:
                calls = (await conn.execute(query.limit(page).offset(offset))).mappings().all()
                if not calls:
                    break
                offset += len(calls)
                sids = [c["call_sid"] for c in calls]
                events = (await conn.execute(
                    select(StatusEvent.__table__).where(StatusEvent.call_sid.in_(sids)).order_by(StatusEvent.id)
                )).mappings().all()
                stats = {row[0]: row[1:] for row in (await conn.execute(
                    select(Turn.call_sid, func.count(), func.sum(case((Turn.interrupted, 1), else_=0)),
                           func.avg(Turn.latency_ms))
                    .where(Turn.call_sid.in_(sids)).group_by(Turn.call_sid)
                )).all()}
                for call in calls:
                    entry = {"call_sid": call["call_sid"],
                             **_progress_json(call, [e for e in events if e["call_sid"] == call["call_sid"]])}
                    if status is not None and entry["status"] != status:
                        continue
                    count, interruptions, latency = stats.get(call["call_sid"], (0, 0, None))
                    entry.update({
                        "started_at": call["started_at"], "ended_at": call["ended_at"],
                        "end_reason": call["end_reason"], "provider": call["provider"],
                        "turn_count": int(count or 0), "interruptions": int(interruptions or 0),
                        "latency_ms_avg": round(float(latency)) if latency is not None else None,
                    })
                    out.append(entry)
                    if len(out) >= limit:
                        break
        return out


def _call_json(call) -> dict[str, Any]:
    return {
        "call_sid": call["call_sid"], "stream_sid": call["stream_sid"], "from": call["from_number"],
        "to": call["to_number"], "provider": call["provider"], "started_at": call["started_at"],
        "ended_at": call["ended_at"], "end_reason": call["end_reason"],
    }


def _turn_json(row) -> dict[str, Any]:
    turn = {k: row[k] for k in ("role", "text", "started_at", "ended_at")}
    turn["interrupted"] = bool(row["interrupted"])
    if row["role"] == "assistant":
        turn["audio_played_ms"] = row["audio_played_ms"]
        turn["generated_text"] = row["generated_text"]
        turn["latency_ms"] = row["latency_ms"]
    return turn


def _tool_json(row) -> dict[str, Any]:
    return {
        "name": row["name"], "arguments": row["arguments"], "result": row["result"],
        "error": row["error"], "duration_ms": round(row["duration_ms"], 1), "started_at": row["started_at"],
    }


def _progress_json(call, events) -> dict[str, Any]:
    # Our own events (no sequence number) keep their arrival order; Twilio's are
    # placed by SequenceNumber among themselves (Twilio may deliver them out of order).
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
        "status": status,
        "status_history": history,
        "duration_s": call["duration_s"],
        "direction": call["direction"],
        "from": call["from_number"],
        "to": call["to_number"],
        "preset": call["preset"],
        "task": call["task"],
        "answered_by": call["answered_by"],
        "amd_duration_ms": call["amd_duration_ms"],
        "voicemail": call["voicemail"],
        "refused_reason": call["refused_reason"],
    }


def _jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (dates and the like as strings)."""
    return None if value is None else json.loads(json.dumps(value, default=str))
