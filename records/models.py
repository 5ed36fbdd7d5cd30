"""SQLAlchemy 2.x models of the call records.

Tables:

- ``calls``: one row per call SID: the media stream's facts (stream SID, numbers,
  provider, start, end and end reason) and the call's progress from Twilio's
  callbacks (direction, outbound preset and task, who answered, voicemail, refusal,
  duration). A call known only from status callbacks has no ``started_at``.
- ``turns``: one row per completed turn, caller's or agent's, with the text heard,
  for the agent the text generated, whether the caller cut it off, how much of its
  audio played, and the reply latency (caller stopped speaking -> first agent audio
  sent), in ms.
- ``tool_calls``: one row per tool call of the agent.
- ``call_status_events``: one row per status callback (``initiated``, ``ringing``,
  ``in-progress``, ``completed``, ``busy``, ``no-answer``, ``failed``, ``canceled``),
  plus our own ``queued`` (the REST API accepted an outbound call) and ``refused``
  (the webhook turned the call away).

Timestamps are ISO 8601 strings in UTC with milliseconds (``records.utc_now``), so
the API shows them as stored and they sort as text. The schema is created by the
Alembic migrations in ``records/migrations``; ``tests/test_records.py`` checks the
two never drift apart.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Call", "StatusEvent", "ToolCall", "Turn"]

_TIME = String(32)
_JSON = JSON(none_as_null=True)  # Python None is SQL NULL, not the JSON text null


class Base(DeclarativeBase):
    """Declarative base of the call records (its own metadata, apart from the booking store's)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Call(Base):
    """One call, by Twilio's call SID (``CA...``)."""

    __tablename__ = "calls"

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream_sid: Mapped[str | None] = mapped_column(String(64))
    account_sid: Mapped[str | None] = mapped_column(String(64))
    from_number: Mapped[str | None] = mapped_column(String(32))
    to_number: Mapped[str | None] = mapped_column(String(32))
    provider: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[str] = mapped_column(_TIME)
    started_at: Mapped[str | None] = mapped_column(_TIME)
    ended_at: Mapped[str | None] = mapped_column(_TIME)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    direction: Mapped[str | None] = mapped_column(String(32))
    preset: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[dict | None] = mapped_column(_JSON)
    answered_by: Mapped[str | None] = mapped_column(String(32))
    amd_duration_ms: Mapped[int | None] = mapped_column(Integer)
    voicemail: Mapped[str | None] = mapped_column(Text)
    refused_reason: Mapped[str | None] = mapped_column(String(32))
    duration_s: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_calls_created_at", "created_at"),)


class Turn(Base):
    """One completed turn of a call."""

    __tablename__ = "turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(ForeignKey("calls.call_sid", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    started_at: Mapped[str] = mapped_column(_TIME)
    ended_at: Mapped[str] = mapped_column(_TIME)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    audio_played_ms: Mapped[int | None] = mapped_column(Integer)
    generated_text: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        Index("ix_turns_call", "call_sid", "id"),
    )


class ToolCall(Base):
    """One tool call of the agent."""

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(ForeignKey("calls.call_sid", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict | list | None] = mapped_column(_JSON)
    result: Mapped[dict | list | None] = mapped_column(_JSON)
    error: Mapped[dict | list | None] = mapped_column(_JSON)
    duration_ms: Mapped[float] = mapped_column(Float)
    started_at: Mapped[str] = mapped_column(_TIME)

    __table_args__ = (Index("ix_tool_calls_call", "call_sid", "id"),)


class StatusEvent(Base):
    """One status change of a call (a Twilio status callback, or our ``queued``/``refused``)."""

    __tablename__ = "call_status_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(ForeignKey("calls.call_sid", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32))
    sequence_number: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[int | None] = mapped_column(Integer)
    twilio_timestamp: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[str] = mapped_column(_TIME)

    __table_args__ = (Index("ix_call_status_events_call", "call_sid", "id"),)
