"""SQLAlchemy 2.x models of the booking store.

Tables: ``customers`` (keyed by their E.164 phone number), ``hotels``, ``room_types``
(how many rooms of each kind a hotel has, which is what availability is computed
from) and ``bookings`` (hotel, car and flight bookings). Kinds and statuses are plain
strings guarded by CHECK constraints, so the schema is the same on SQLite and
PostgreSQL. The schema is created by the Alembic migrations in ``booking/migrations``;
``tests/test_booking_tools.py`` checks the two never drift apart.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "BOOKING_KINDS",
    "BOOKING_STATUSES",
    "Base",
    "Booking",
    "Customer",
    "Hotel",
    "RoomType",
]

BOOKING_KINDS = ("hotel", "car", "flight")
BOOKING_STATUSES = ("confirmed", "modified", "cancelled")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the booking tables, with fixed constraint names."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Customer(Base):
    """A customer, recognised by the number they call from."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phone_number: Mapped[str | None] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    email: Mapped[str | None] = mapped_column(String(254))
    loyalty_tier: Mapped[str] = mapped_column(String(20), default="standard")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """The customer as JSON-ready data."""
        return {
            "customer_id": self.id,
            "name": self.name,
            "phone_number": self.phone_number,
            "email": self.email,
            "loyalty_tier": self.loyalty_tier,
        }


class Hotel(Base):
    """A hotel that can be booked."""

    __tablename__ = "hotels"
    __table_args__ = (UniqueConstraint("name", "city"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    city: Mapped[str] = mapped_column(String(80), index=True)
    address: Mapped[str] = mapped_column(String(200))
    amenities: Mapped[list[str]] = mapped_column(JSON, default=list)
    price_per_night: Mapped[float] = mapped_column(Numeric(10, 2, asdecimal=False))
    currency: Mapped[str] = mapped_column(String(3), default="USD")

    room_types: Mapped[list[RoomType]] = relationship(
        back_populates="hotel", lazy="selectin", order_by="RoomType.price_per_night"
    )

    def to_dict(self) -> dict[str, Any]:
        """The hotel as JSON-ready data (without its rooms)."""
        return {
            "hotel_id": self.id,
            "name": self.name,
            "city": self.city,
            "address": self.address,
            "amenities": list(self.amenities or []),
            "price_per_night_from": self.price_per_night,
            "currency": self.currency,
        }


class RoomType(Base):
    """A kind of room in a hotel and how many of them there are."""

    __tablename__ = "room_types"
    __table_args__ = (
        UniqueConstraint("hotel_id", "name"),
        CheckConstraint("room_count >= 0", name="room_count_not_negative"),
        CheckConstraint("max_guests >= 1", name="max_guests_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hotel_id: Mapped[int] = mapped_column(ForeignKey("hotels.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    max_guests: Mapped[int] = mapped_column(Integer)
    room_count: Mapped[int] = mapped_column(Integer)
    price_per_night: Mapped[float] = mapped_column(Numeric(10, 2, asdecimal=False))

    hotel: Mapped[Hotel] = relationship(back_populates="room_types")


class Booking(Base):
    """A hotel, car or flight booking.

    ``start_date``/``end_date`` are check-in/check-out for hotels, pick-up/return for
    cars and departure/return for flights (``end_date`` is None for a one-way flight).
    ``idempotency_key`` makes a retried create return the booking already made.
    """

    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint("kind IN ('hotel', 'car', 'flight')", name="kind"),
        CheckConstraint("status IN ('confirmed', 'modified', 'cancelled')", name="status"),
        CheckConstraint("guests BETWEEN 1 AND 10", name="guests_range"),
        CheckConstraint("rooms BETWEEN 1 AND 5", name="rooms_range"),
        Index(None, "hotel_id", "start_date", "end_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(12), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    hotel_id: Mapped[int | None] = mapped_column(ForeignKey("hotels.id"))
    room_type_id: Mapped[int | None] = mapped_column(ForeignKey("room_types.id"))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    start_date: Mapped[date] = mapped_column(Date)
    end_date: Mapped[date | None] = mapped_column(Date)
    guests: Mapped[int] = mapped_column(Integer, default=1)
    rooms: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(10), default="confirmed")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    call_sid: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True)

    customer: Mapped[Customer] = relationship(lazy="selectin")
    hotel: Mapped[Hotel | None] = relationship(lazy="selectin")
    room_type: Mapped[RoomType | None] = relationship(lazy="selectin")

    def to_dict(self) -> dict[str, Any]:
        """The booking as JSON-ready data, dates as ISO strings."""
        data: dict[str, Any] = {
            "reference": self.reference,
            "kind": self.kind,
            "status": self.status,
            "guest_name": self.details.get("guest_name"),
            "guests": self.guests,
        }
        if self.kind == "hotel":
            data.update(
                hotel_id=self.hotel_id,
                hotel_name=self.hotel.name if self.hotel else None,
                city=self.hotel.city if self.hotel else None,
                room_type=self.room_type.name if self.room_type else None,
                rooms=self.rooms,
                check_in=self.start_date.isoformat(),
                check_out=self.end_date.isoformat() if self.end_date else None,
            )
        else:
            data.update(
                start_date=self.start_date.isoformat(),
                end_date=self.end_date.isoformat() if self.end_date else None,
            )
        extra = {k: v for k, v in self.details.items() if k != "guest_name"}
        if extra:
            data["details"] = extra
        return data
