"""Initial tables: customers, hotels, room_types, bookings.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = sa.Numeric(precision=10, scale=2, asdecimal=False)


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_number", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("loyalty_tier", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("phone_number", name=op.f("uq_customers_phone_number")),
    )
    op.create_table(
        "hotels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("city", sa.String(length=80), nullable=False),
        sa.Column("address", sa.String(length=200), nullable=False),
        sa.Column("amenities", sa.JSON(), nullable=False),
        sa.Column("price_per_night", _MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hotels")),
        sa.UniqueConstraint("name", "city", name=op.f("uq_hotels_name_city")),
    )
    op.create_index(op.f("ix_hotels_city"), "hotels", ["city"])
    op.create_table(
        "room_types",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hotel_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("max_guests", sa.Integer(), nullable=False),
        sa.Column("room_count", sa.Integer(), nullable=False),
        sa.Column("price_per_night", _MONEY, nullable=False),
        sa.CheckConstraint("max_guests >= 1", name=op.f("ck_room_types_max_guests_positive")),
        sa.CheckConstraint("room_count >= 0", name=op.f("ck_room_types_room_count_not_negative")),
        sa.ForeignKeyConstraint(
            ["hotel_id"], ["hotels.id"], name=op.f("fk_room_types_hotel_id_hotels"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_room_types")),
        sa.UniqueConstraint("hotel_id", "name", name=op.f("uq_room_types_hotel_id_name")),
    )
    op.create_table(
        "bookings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=12), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("hotel_id", sa.Integer(), nullable=True),
        sa.Column("room_type_id", sa.Integer(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("guests", sa.Integer(), nullable=False),
        sa.Column("rooms", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=64), nullable=True),
        sa.CheckConstraint("kind IN ('hotel', 'car', 'flight')", name=op.f("ck_bookings_kind")),
        sa.CheckConstraint(
            "status IN ('confirmed', 'modified', 'cancelled')", name=op.f("ck_bookings_status")
        ),
        sa.CheckConstraint("guests BETWEEN 1 AND 10", name=op.f("ck_bookings_guests_range")),
        sa.CheckConstraint("rooms BETWEEN 1 AND 5", name=op.f("ck_bookings_rooms_range")),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_bookings_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(["hotel_id"], ["hotels.id"], name=op.f("fk_bookings_hotel_id_hotels")),
        sa.ForeignKeyConstraint(
            ["room_type_id"], ["room_types.id"], name=op.f("fk_bookings_room_type_id_room_types")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bookings")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_bookings_idempotency_key")),
        sa.UniqueConstraint("reference", name=op.f("uq_bookings_reference")),
    )
    op.create_index(op.f("ix_bookings_customer_id"), "bookings", ["customer_id"])
    op.create_index(
        op.f("ix_bookings_hotel_id_start_date_end_date"), "bookings", ["hotel_id", "start_date", "end_date"]
    )


def downgrade() -> None:
    """Drop the four tables."""
    op.drop_table("bookings")
    op.drop_table("room_types")
    op.drop_table("hotels")
    op.drop_table("customers")
