"""The booking store: the operations the agent's tools perform, on SQLAlchemy async sessions.

Each public method is one transaction. Expected failures raise :class:`BookingError`
subclasses carrying a machine-readable ``code`` and a sentence, which the tools pass on
to the model. Results are ORM objects loaded with what their ``to_dict()`` needs (the
session does not expire them on commit).

Availability: a hotel has ``room_count`` rooms of each room type; a room type is free for
a stay when, on every night of it, its confirmed or modified bookings leave enough rooms.
On PostgreSQL the room type row is locked (``SELECT ... FOR UPDATE``) while a booking is
checked and written, so two calls cannot take the last room; SQLite serialises writers.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from booking.db import create_engine
from booking.models import Booking, Customer, Hotel, RoomType, utcnow

__all__ = [
    "BookingError",
    "BookingNotFound",
    "BookingStore",
    "MAX_NIGHTS",
    "InvalidBooking",
    "NewBooking",
    "NotAvailable",
    "Owner",
    "new_reference",
    "normalize_phone",
    "normalize_reference",
]

MAX_NIGHTS = 30
REFERENCE_PREFIX = "GH-"
# No 0/O or 1/I: references are read out and typed back over the phone.
_REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class BookingError(Exception):
    """An expected booking failure, reported to the caller.

    Args:
        code: Machine-readable error type.
        message: A sentence explaining it.
        **extra: More JSON-ready fields (e.g. ``details``).
    """

    code = "booking_error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra


class BookingNotFound(BookingError):
    """No booking with that reference belongs to the caller (or it does not exist)."""

    code = "booking_not_found"


class NotAvailable(BookingError):
    """The hotel has no room that fits for those dates."""

    code = "not_available"


class InvalidBooking(BookingError):
    """The request cannot be honoured as asked (unknown hotel, bad dates, ...)."""

    code = "invalid_request"


@dataclass(frozen=True)
class NewBooking:
    """A booking to create.

    Parameters:
        kind: ``hotel``, ``car`` or ``flight``.
        customer_phone: The caller's E.164 number (None if withheld).
        guest_name: Name the booking is under.
        start_date: Check-in, pick-up or departure date.
        end_date: Check-out, return or return-flight date (None for a one-way flight).
        guests: Number of guests or passengers, 1-10.
        rooms: Rooms (hotels), 1-5.
        hotel_id: The hotel (hotel bookings).
        room_type: Preferred room type name; None picks the cheapest that fits.
        details: Kind-specific details (pick-up location, origin, ...).
        call_sid: The call the booking was made on.
        idempotency_key: Makes a repeated create return the first booking.
    """

    kind: str
    customer_phone: str | None
    guest_name: str
    start_date: date
    end_date: date | None
    guests: int = 1
    rooms: int = 1
    hotel_id: int | None = None
    room_type: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    call_sid: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Owner:
    """Who is asking to change a booking: its customer's number, or the call that made it.

    Parameters:
        phone_number: The caller's E.164 number, or None.
        call_sid: The current call's SID, or None.
    """

    phone_number: str | None
    call_sid: str | None

    def owns(self, booking: Booking) -> bool:
        """Whether this caller may see and change ``booking``."""
        by_phone = self.phone_number is not None and booking.customer.phone_number == self.phone_number
        by_call = self.call_sid is not None and booking.call_sid == self.call_sid
        return by_phone or by_call


def normalize_phone(raw: str | None) -> str | None:
    """An E.164 number from what Twilio (or a person) wrote, else None.

    Args:
        raw: e.g. ``"+1 (555) 123-0001"``; ``"anonymous"`` and the like give None.

    Returns:
        e.g. ``"+15551230001"``, or None when it is not a plausible E.164 number.
    """
    if not raw:
        return None
    cleaned = re.sub(r"[\s().-]", "", raw)
    return cleaned if _E164.match(cleaned) else None


def normalize_reference(raw: str) -> str:
    """A booking reference as stored, from how it was read out.

    Args:
        raw: e.g. ``"gh 7k2q9p"``, ``"GH-7K2Q9P"`` or ``"7K2Q9P"``.

    Returns:
        e.g. ``"GH-7K2Q9P"``.
    """
    compact = re.sub(r"[^A-Z0-9]", "", raw.upper())
    compact = compact.removeprefix(REFERENCE_PREFIX.rstrip("-"))
    return REFERENCE_PREFIX + compact


def new_reference() -> str:
    """A fresh random reference such as ``GH-7K2Q9P`` (about 10^9 possibilities)."""
    return REFERENCE_PREFIX + "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(6))


class BookingStore:
    """Customers, hotels, availability and bookings, over an async SQLAlchemy engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Use an engine whose database is migrated (see :func:`booking.db.migrate`).

        Args:
            engine: The async engine; :meth:`close` disposes it.
        """
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str | None = None) -> BookingStore:
        """A store on a new engine for ``url`` (see :func:`booking.db.database_url`)."""
        return cls(create_engine(url))

    def session(self) -> AsyncSession:
        """A new session (``async with store.session() as s: ...``)."""
        return self._sessions()

    async def close(self) -> None:
        """Dispose of the engine's connections."""
        await self.engine.dispose()

    # -- customers ------------------------------------------------------------------

    async def find_customer(self, phone_number: str | None) -> Customer | None:
        """The customer with this number, or None (also for a None number).

        Args:
            phone_number: An E.164 number.
        """
        if not phone_number:
            return None
        async with self.session() as session:
            return await _customer_by_phone(session, phone_number)

    async def customer_bookings(
        self, customer_id: int, *, active_only: bool = True, today: date | None = None
    ) -> list[Booking]:
        """A customer's bookings, soonest first.

        Args:
            customer_id: The customer.
            active_only: Only bookings not cancelled and not yet over.
            today: The current date (default: the server's).

        Returns:
            The bookings.
        """
        today = today or date.today()
        query = select(Booking).where(Booking.customer_id == customer_id).order_by(Booking.start_date)
        if active_only:
            last_day = func.coalesce(Booking.end_date, Booking.start_date)
            query = query.where(Booking.status != "cancelled", last_day >= today)
        async with self.session() as session:
            return list((await session.scalars(query)).all())

    # -- hotels and availability -------------------------------------------------------

    async def search_hotels(
        self, city: str, check_in: date, check_out: date, guests: int
    ) -> list[dict[str, Any]]:
        """Hotels in a city with rooms free for a stay, cheapest first.

        Each room type is offered with as many rooms as the guests need
        (``ceil(guests / max_guests)``, at most 5).

        Args:
            city: City name, case-insensitive.
            check_in: Arrival date.
            check_out: Departure date, after ``check_in``.
            guests: Number of guests.

        Returns:
            One dict per hotel that has a fitting free room type: the hotel's data,
            ``nights`` and ``room_options`` (room type, rooms, prices).
        """
        nights = (check_out - check_in).days
        async with self.session() as session:
            hotels = (
                await session.scalars(select(Hotel).where(func.lower(Hotel.city) == city.strip().lower()))
            ).all()
            found = []
            for hotel in hotels:
                free = await _free_rooms(session, hotel, check_in, check_out)
                options = []
                for room_type in hotel.room_types:
                    rooms = math.ceil(guests / room_type.max_guests)
                    if rooms <= 5 and free[room_type.id] >= rooms:
                        options.append(_option(room_type, rooms, nights, free[room_type.id]))
                if options:
                    found.append({**hotel.to_dict(), "nights": nights, "room_options": options})
        return sorted(found, key=lambda h: h["room_options"][0]["total_price"])

    async def availability(
        self, hotel_id: int, check_in: date, check_out: date, rooms: int, guests: int
    ) -> dict[str, Any]:
        """Whether a hotel has ``rooms`` rooms for ``guests`` guests for a stay.

        Args:
            hotel_id: The hotel.
            check_in: Arrival date.
            check_out: Departure date, after ``check_in``.
            rooms: Rooms wanted.
            guests: Guests in total.

        Returns:
            ``available`` and the ``room_options`` whose capacity fits (each with its
            own ``available`` flag and prices).

        Raises:
            InvalidBooking: If there is no such hotel.
        """
        nights = (check_out - check_in).days
        async with self.session() as session:
            hotel = await _hotel(session, hotel_id)
            free = await _free_rooms(session, hotel, check_in, check_out)
            options = [
                _option(rt, rooms, nights, free[rt.id])
                for rt in hotel.room_types
                if rt.max_guests * rooms >= guests
            ]
        return {
            "hotel_id": hotel.id,
            "hotel_name": hotel.name,
            "check_in": check_in.isoformat(),
            "check_out": check_out.isoformat(),
            "nights": nights,
            "rooms": rooms,
            "guests": guests,
            "available": any(o["available"] for o in options),
            "room_options": options,
        }

    # -- bookings ---------------------------------------------------------------------

    async def get_booking(self, reference: str) -> Booking | None:
        """The booking with this reference (normalised), whoever owns it, or None."""
        async with self.session() as session:
            return await _booking_by_reference(session, normalize_reference(reference))

    async def create_booking(self, new: NewBooking) -> tuple[Booking, bool]:
        """Create a booking, or return the one already made with the same idempotency key.

        Args:
            new: What to book.

        Returns:
            ``(booking, created)``; ``created`` is False when the key had been used.

        Raises:
            InvalidBooking: Unknown hotel or room type, or bad dates.
            NotAvailable: No fitting room is free.
        """
        if new.end_date is not None and new.end_date <= new.start_date:
            raise InvalidBooking("The end date must be after the start date.")
        if new.idempotency_key:
            existing = await self._by_idempotency_key(new.idempotency_key)
            if existing is not None:
                return existing, False
        try:
            async with self.session() as session, session.begin():
                booking = await self._insert_booking(session, new)
        except IntegrityError:
            # A concurrent create with the same key won, or (rarely) the reference clashed.
            existing = await self._by_idempotency_key(new.idempotency_key) if new.idempotency_key else None
            if existing is None:
                raise
            return existing, False
        logger.info(f"booking {booking.reference} created ({booking.kind}, call {new.call_sid})")
        async with self.session() as session:
            return await _booking_by_reference(session, booking.reference), True

    async def modify_booking(
        self,
        reference: str,
        owner: Owner,
        *,
        start_date: date | None = None,
        end_date: date | None = None,
        guests: int | None = None,
        rooms: int | None = None,
        room_type: str | None = None,
        guest_name: str | None = None,
    ) -> Booking:
        """Change a booking the caller owns; its status becomes ``modified``.

        Args:
            reference: The booking reference (normalised).
            owner: Who is asking.
            start_date: New check-in / pick-up / departure date.
            end_date: New check-out / return date.
            guests: New number of guests.
            rooms: New number of rooms (hotels).
            room_type: New room type (hotels).
            guest_name: New name on the booking.

        Returns:
            The booking after the change.

        Raises:
            BookingNotFound: No such booking belongs to the caller.
            InvalidBooking: The booking is cancelled, or the change does not apply.
            NotAvailable: The hotel cannot take the changed stay.
        """
        ref = normalize_reference(reference)
        async with self.session() as session, session.begin():
            booking = await _owned_booking(session, ref, owner)
            if booking.status == "cancelled":
                raise InvalidBooking(
                    "That booking is cancelled; make a new booking instead.", code="booking_cancelled"
                )
            new_start = start_date or booking.start_date
            new_end = end_date or booking.end_date
            if new_end is not None and new_end <= new_start:
                raise InvalidBooking("The end date must be after the start date.")
            if new_end is not None and (new_end - new_start).days > MAX_NIGHTS:
                raise InvalidBooking(f"At most {MAX_NIGHTS} nights can be booked at once.")
            if booking.kind == "hotel":
                new_rooms = rooms or booking.rooms
                new_guests = guests or booking.guests
                wanted = room_type
                current = booking.room_type
                if wanted is None and current is not None and current.max_guests * new_rooms >= new_guests:
                    wanted = current.name  # keep the room type while it still fits
                hotel = await _hotel(session, booking.hotel_id)
                chosen = await _pick_room_type(
                    session,
                    hotel,
                    new_start,
                    new_end,
                    new_rooms,
                    new_guests,
                    wanted,
                    exclude_booking_id=booking.id,
                )
                booking.room_type_id, booking.rooms = chosen.id, new_rooms
            elif rooms is not None or room_type is not None:
                raise InvalidBooking("Rooms and room types only apply to hotel bookings.")
            booking.start_date, booking.end_date = new_start, new_end
            booking.guests = guests or booking.guests
            if guest_name:
                booking.details = {**booking.details, "guest_name": guest_name}
            booking.status = "modified"
            booking.updated_at = utcnow()
        logger.info(f"booking {ref} modified")
        async with self.session() as session:
            return await _booking_by_reference(session, ref)

    async def cancel_booking(self, reference: str, owner: Owner) -> tuple[Booking, bool]:
        """Cancel a booking the caller owns. Cancelling twice is harmless.

        Args:
            reference: The booking reference (normalised).
            owner: Who is asking.

        Returns:
            ``(booking, changed)``; ``changed`` is False if it was already cancelled.

        Raises:
            BookingNotFound: No such booking belongs to the caller.
        """
        ref = normalize_reference(reference)
        async with self.session() as session, session.begin():
            booking = await _owned_booking(session, ref, owner)
            changed = booking.status != "cancelled"
            if changed:
                booking.status = "cancelled"
                booking.updated_at = utcnow()
        if changed:
            logger.info(f"booking {ref} cancelled")
        return booking, changed

    # -- internals ---------------------------------------------------------------------

    async def _by_idempotency_key(self, key: str) -> Booking | None:
        async with self.session() as session:
            return await session.scalar(select(Booking).where(Booking.idempotency_key == key))

    async def _insert_booking(self, session: AsyncSession, new: NewBooking) -> Booking:
        room_type_id = None
        if new.kind == "hotel":
            if new.hotel_id is None or new.end_date is None:
                raise InvalidBooking("A hotel booking needs a hotel and a check-out date.")
            hotel = await _hotel(session, new.hotel_id)
            chosen = await _pick_room_type(
                session, hotel, new.start_date, new.end_date, new.rooms, new.guests, new.room_type
            )
            room_type_id = chosen.id
        customer = await _customer_for(session, new.customer_phone, new.guest_name)
        booking = Booking(
            reference=await _unused_reference(session),
            customer_id=customer.id,
            kind=new.kind,
            hotel_id=new.hotel_id if new.kind == "hotel" else None,
            room_type_id=room_type_id,
            details={"guest_name": new.guest_name, **new.details},
            start_date=new.start_date,
            end_date=new.end_date,
            guests=new.guests,
            rooms=new.rooms if new.kind == "hotel" else 1,
            status="confirmed",
            call_sid=new.call_sid,
            idempotency_key=new.idempotency_key,
        )
        session.add(booking)
        await session.flush()
        return booking


async def _customer_by_phone(session: AsyncSession, phone_number: str) -> Customer | None:
    return await session.scalar(select(Customer).where(Customer.phone_number == phone_number))


async def _customer_for(session: AsyncSession, phone_number: str | None, name: str) -> Customer:
    """The caller's customer record, created on their first booking."""
    customer = await _customer_by_phone(session, phone_number) if phone_number else None
    if customer is None:
        customer = Customer(phone_number=phone_number, name=name)
        session.add(customer)
        await session.flush()
    return customer


async def _hotel(session: AsyncSession, hotel_id: int | None) -> Hotel:
    hotel = await session.get(Hotel, hotel_id) if hotel_id is not None else None
    if hotel is None:
        raise InvalidBooking(
            f"There is no hotel with id {hotel_id}; search for hotels first.", code="unknown_hotel"
        )
    return hotel


async def _booking_by_reference(session: AsyncSession, reference: str) -> Booking | None:
    return await session.scalar(select(Booking).where(Booking.reference == reference))


async def _owned_booking(session: AsyncSession, reference: str, owner: Owner) -> Booking:
    """The booking, if the caller owns it; another caller's booking looks like no booking."""
    booking = await _booking_by_reference(session, reference)
    if booking is None or not owner.owns(booking):
        if booking is not None:
            logger.warning(f"booking {reference}: refused to a caller who does not own it")
        raise BookingNotFound(f"No booking {reference} was found for this caller.")
    return booking


async def _unused_reference(session: AsyncSession) -> str:
    while True:
        reference = new_reference()
        if await _booking_by_reference(session, reference) is None:
            return reference


async def _free_rooms(
    session: AsyncSession,
    hotel: Hotel,
    check_in: date,
    check_out: date,
    exclude_booking_id: int | None = None,
) -> dict[int, int]:
    """Rooms of each type free on every night from ``check_in`` to ``check_out``."""
    query = select(Booking.room_type_id, Booking.start_date, Booking.end_date, Booking.rooms).where(
        Booking.hotel_id == hotel.id,
        Booking.status != "cancelled",
        Booking.start_date < check_out,
        Booking.end_date > check_in,
    )
    if exclude_booking_id is not None:
        query = query.where(Booking.id != exclude_booking_id)
    taken = (await session.execute(query)).all()
    nights = [check_in + timedelta(days=i) for i in range((check_out - check_in).days)]
    free = {}
    for room_type in hotel.room_types:
        ours = [b for b in taken if b.room_type_id == room_type.id]
        peak = max(
            (sum(b.rooms for b in ours if b.start_date <= night < b.end_date) for night in nights), default=0
        )
        free[room_type.id] = max(room_type.room_count - peak, 0)
    return free


async def _pick_room_type(
    session: AsyncSession,
    hotel: Hotel,
    check_in: date,
    check_out: date,
    rooms: int,
    guests: int,
    wanted: str | None,
    exclude_booking_id: int | None = None,
) -> RoomType:
    """The wanted room type, or the cheapest that fits, if enough of it is free."""
    candidates = [rt for rt in hotel.room_types if rt.max_guests * rooms >= guests]
    if wanted is not None:
        named = [rt for rt in hotel.room_types if rt.name.lower() == wanted.strip().lower()]
        if not named:
            known = ", ".join(rt.name for rt in hotel.room_types)
            raise InvalidBooking(
                f"{hotel.name} has no room type {wanted!r} (it has: {known}).", code="unknown_room_type"
            )
        candidates = [rt for rt in named if rt in candidates]
        if not candidates:
            raise NotAvailable(
                f"{rooms} {wanted} room(s) cannot hold {guests} guests; add rooms or pick another type."
            )
    for room_type in candidates:  # cheapest first (relationship order)
        # Lock the room type row while we count and book (a no-op on SQLite).
        await session.execute(select(RoomType.id).where(RoomType.id == room_type.id).with_for_update())
        free = await _free_rooms(session, hotel, check_in, check_out, exclude_booking_id)
        if free[room_type.id] >= rooms:
            return room_type
    raise NotAvailable(f"{hotel.name} has no {rooms} room(s) for {guests} guests free for those dates.")


def _option(room_type: RoomType, rooms: int, nights: int, free: int) -> dict[str, Any]:
    return {
        "room_type": room_type.name,
        "max_guests_per_room": room_type.max_guests,
        "rooms": rooms,
        "rooms_free": free,
        "available": free >= rooms,
        "price_per_night": room_type.price_per_night,
        "total_price": round(room_type.price_per_night * rooms * nights, 2),
    }
