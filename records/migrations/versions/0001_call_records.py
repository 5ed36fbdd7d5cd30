"""Call records: calls, turns, tool_calls, call_status_events.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Replaces the raw-sqlite3 schema of earlier versions (``calls.db`` files without a
``records_alembic_version`` table): their tables are renamed ``legacy_*`` and their
rows copied into the new tables, so an upgrade loses no call.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.String(length=32)
_LEGACY = ("calls", "turns", "tool_calls", "call_progress", "call_status_events")


def upgrade() -> None:
    """Create the four tables and their indexes (adopting a pre-Alembic SQLite file's rows)."""
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    legacy = [t for t in _LEGACY if t in existing]
    for table in legacy:
        op.rename_table(table, f"legacy_{table}")
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("stream_sid", sa.String(length=64), nullable=True),
        sa.Column("account_sid", sa.String(length=64), nullable=True),
        sa.Column("from_number", sa.String(length=32), nullable=True),
        sa.Column("to_number", sa.String(length=32), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("started_at", _TIME, nullable=True),
        sa.Column("ended_at", _TIME, nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.Column("direction", sa.String(length=32), nullable=True),
        sa.Column("preset", sa.String(length=64), nullable=True),
        sa.Column("task", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("answered_by", sa.String(length=32), nullable=True),
        sa.Column("amd_duration_ms", sa.Integer(), nullable=True),
        sa.Column("voicemail", sa.Text(), nullable=True),
        sa.Column("refused_reason", sa.String(length=32), nullable=True),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("call_sid", name=op.f("pk_calls")),
    )
    op.create_index("ix_calls_created_at", "calls", ["created_at"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("ended_at", _TIME, nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("audio_played_ms", sa.Integer(), nullable=True),
        sa.Column("generated_text", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.CheckConstraint("role IN ('user', 'assistant')", name=op.f("ck_turns_role")),
        sa.ForeignKeyConstraint(["call_sid"], ["calls.call_sid"], name=op.f("fk_turns_call_sid_calls"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turns")),
    )
    op.create_index("ix_turns_call", "turns", ["call_sid", "id"])
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("arguments", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["call_sid"], ["calls.call_sid"],
                                name=op.f("fk_tool_calls_call_sid_calls"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_calls")),
    )
    op.create_index("ix_tool_calls_call", "tool_calls", ["call_sid", "id"])
    op.create_table(
        "call_status_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("sequence_number", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.Column("twilio_timestamp", sa.String(length=64), nullable=True),
        sa.Column("received_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["call_sid"], ["calls.call_sid"],
                                name=op.f("fk_call_status_events_call_sid_calls"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_status_events")),
    )
    op.create_index("ix_call_status_events_call", "call_status_events", ["call_sid", "id"])
    if legacy:
        _adopt(set(legacy))


def _adopt(legacy: set[str]) -> None:
    """Copy a pre-Alembic SQLite file's rows into the new tables (SQLite SQL)."""
    if "calls" in legacy:
        op.execute(
            "INSERT INTO calls (call_sid, stream_sid, account_sid, from_number, to_number, provider,"
            " created_at, started_at, ended_at, end_reason)"
            " SELECT call_sid, stream_sid, account_sid, from_number, to_number, provider, started_at,"
            " started_at, ended_at, end_reason FROM legacy_calls"
        )
    if "call_progress" in legacy:
        op.execute(
            "INSERT OR IGNORE INTO calls (call_sid, created_at) SELECT call_sid, created_at"
            " FROM legacy_call_progress"
        )
        op.execute(
            "UPDATE calls SET (direction, from_number, to_number, preset, task, answered_by,"
            " amd_duration_ms, voicemail, refused_reason, duration_s) = (SELECT p.direction,"
            " COALESCE(calls.from_number, p.from_number), COALESCE(calls.to_number, p.to_number),"
            " p.preset, p.task, p.answered_by, p.amd_duration_ms, p.voicemail, p.refused_reason,"
            " p.duration_s FROM legacy_call_progress p WHERE p.call_sid = calls.call_sid)"
            " WHERE call_sid IN (SELECT call_sid FROM legacy_call_progress)"
        )
    if "turns" in legacy:
        op.execute(
            "INSERT INTO turns (call_sid, role, text, started_at, ended_at, interrupted,"
            " audio_played_ms, generated_text) SELECT call_sid, role, text, started_at, ended_at,"
            " interrupted, audio_played_ms, generated_text FROM legacy_turns ORDER BY id"
        )
    if "tool_calls" in legacy:
        op.execute(
            "INSERT INTO tool_calls (call_sid, name, arguments, result, error, duration_ms,"
            " started_at) SELECT call_sid, name, arguments, result, error, duration_ms, started_at"
            " FROM legacy_tool_calls ORDER BY id"
        )
    if "call_status_events" in legacy:
        op.execute(
            "INSERT OR IGNORE INTO calls (call_sid, created_at) SELECT call_sid, MIN(received_at)"
            " FROM legacy_call_status_events GROUP BY call_sid"
        )
        op.execute(
            "INSERT INTO call_status_events (call_sid, status, sequence_number, duration_s,"
            " twilio_timestamp, received_at) SELECT call_sid, status, sequence_number, duration_s,"
            " twilio_timestamp, received_at FROM legacy_call_status_events ORDER BY id"
        )


def downgrade() -> None:
    """Drop the four tables (legacy_* tables, if any, are left as they are)."""
    for table in ("call_status_events", "tool_calls", "turns", "calls"):
        op.drop_table(table)
