"""Demo data for the booking store: ``python -m booking.demo [--database-url URL]``.

Migrates the database, then loads five hotels in Lisbon, Porto and Madrid with their
room types, three customers, and one upcoming hotel booking (``GH-7K2Q9P``) for the
customer calling from ``+15551230001``. Loading is idempotent: rows are matched on
their natural keys (hotel name and city, room type name, phone number, booking
reference) and only missing ones are added, so running it again changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import date, timedelta

from loguru import logger
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from booking.db import database_url, migrate
from booking.models import Booking, Customer, Hotel, RoomType
from booking.store import BookingStore

__all__ = ["DEMO_BOOKING_REFERENCE", "DEMO_CALLER", "load_demo", "main"]

DEMO_CALLER = "+15551230001"
DEMO_BOOKING_REFERENCE = "GH-7K2Q9P"

# name, city, address, amenities, [(room type, max guests, rooms, price per night)]
HOTELS = [
    (
        "Grand Harbour Lisbon",
        "Lisbon",
        "Avenida Ribeira das Naus 12, 1100-038 Lisbon",
        ["wifi", "breakfast", "river view", "gym"],
        [("standard", 2, 10, 140.0), ("deluxe", 3, 4, 210.0), ("suite", 4, 2, 360.0)],
    ),
    (
        "Alfama Courtyard Hotel",
        "Lisbon",
        "Rua de São Miguel 5, 1100-544 Lisbon",
        ["wifi", "breakfast", "courtyard"],
        [("standard", 2, 6, 95.0), ("family", 4, 2, 150.0)],
    ),
    (
        "Ribeira Riverside",
        "Porto",
        "Cais da Ribeira 30, 4050-510 Porto",
        ["wifi", "river view", "bar"],
        [("standard", 2, 8, 110.0), ("deluxe", 3, 3, 170.0)],
    ),
    (
        "Gran Via Plaza",
        "Madrid",
        "Calle Gran Vía 40, 28013 Madrid",
        ["wifi", "breakfast", "pool", "gym", "parking"],
        [("standard", 2, 12, 130.0), ("suite", 4, 3, 320.0)],
    ),
    (
        "Retiro Garden Suites",
        "Madrid",
        "Calle de Alcalá 95, 28009 Madrid",
        ["wifi", "garden", "spa"],
        [("junior suite", 3, 5, 190.0), ("suite", 4, 2, 280.0)],
    ),
]

# phone, name, email, loyalty tier
CUSTOMERS = [
    (DEMO_CALLER, "Alex Morgan", "alex.morgan@example.com", "gold"),
    ("+15551230002", "Sam Rivera", "sam.rivera@example.com", "standard"),
    ("+447700900123", "Priya Shah", None, "silver"),
]


async def load_demo(store: BookingStore, *, today: date | None = None) -> dict[str, int]:
    """Add whatever demo rows are missing.

    Args:
        store: A store on a migrated database.
        today: Reference date for the demo booking's stay (default: the server's date);
            only used when the booking is first created.

    Returns:
        How many rows of each kind were added (all zero on a second run).
    """
    today = today or date.today()
    added = {"hotels": 0, "room_types": 0, "customers": 0, "bookings": 0}
    async with store.session() as session, session.begin():
        hotels: dict[str, Hotel] = {}
        for name, city, address, amenities, rooms in HOTELS:
            hotel = await session.scalar(select(Hotel).where(Hotel.name == name, Hotel.city == city))
            if hotel is None:
                cheapest = min(price for *_, price in rooms)
                hotel = Hotel(
                    name=name, city=city, address=address, amenities=amenities, price_per_night=cheapest
                )
                session.add(hotel)
                await session.flush()
                added["hotels"] += 1
            hotels[name] = hotel
            added["room_types"] += await _add_room_types(session, hotel, rooms)
        customers: dict[str, Customer] = {}
        for phone, name, email, tier in CUSTOMERS:
            customer = await session.scalar(select(Customer).where(Customer.phone_number == phone))
            if customer is None:
                customer = Customer(phone_number=phone, name=name, email=email, loyalty_tier=tier)
                session.add(customer)
                await session.flush()
                added["customers"] += 1
            customers[phone] = customer
        if (
            await session.scalar(select(Booking.id).where(Booking.reference == DEMO_BOOKING_REFERENCE))
            is None
        ):
            hotel = hotels["Grand Harbour Lisbon"]
            standard = await session.scalar(
                select(RoomType).where(RoomType.hotel_id == hotel.id, RoomType.name == "standard")
            )
            session.add(
                Booking(
                    reference=DEMO_BOOKING_REFERENCE,
                    customer_id=customers[DEMO_CALLER].id,
                    kind="hotel",
                    hotel_id=hotel.id,
                    room_type_id=standard.id,
                    details={"guest_name": "Alex Morgan"},
                    start_date=today + timedelta(days=14),
                    end_date=today + timedelta(days=17),
                    guests=2,
                    rooms=1,
                    status="confirmed",
                    idempotency_key=f"demo:{DEMO_BOOKING_REFERENCE}",
                )
            )
            added["bookings"] += 1
    return added


async def _add_room_types(session: AsyncSession, hotel: Hotel, rooms: list[tuple]) -> int:
    existing = set(await session.scalars(select(RoomType.name).where(RoomType.hotel_id == hotel.id)))
    missing = [r for r in rooms if r[0] not in existing]
    for name, max_guests, count, price in missing:
        session.add(
            RoomType(
                hotel_id=hotel.id, name=name, max_guests=max_guests, room_count=count, price_per_night=price
            )
        )
    await session.flush()
    return len(missing)


async def _load(url: str) -> dict[str, int]:
    store = BookingStore.from_url(url)
    try:
        return await load_demo(store)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    """Migrate the database and load the demo data.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m booking.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: DATABASE_URL, else sqlite+aiosqlite:///booking.db")
    args = parser.parse_args(argv)
    url = database_url(args.database_url)
    shown = make_url(url).render_as_string(hide_password=True)
    migrate(url)
    added = asyncio.run(_load(url))
    logger.info(f"demo data loaded into {shown}: added {added}")
    print(f"demo data in {shown}: added " + ", ".join(f"{n} {kind}" for kind, n in added.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
