"""The booking tools against a real, migrated SQLite database (demo data loaded)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from google.genai import types as genai_types
from pipecat.adapters.llm.services.gemini_adapter import GeminiLLMAdapter
from sqlalchemy import func, select

from booking.db import database_url, migrate, migrate_async
from booking.demo import DEMO_BOOKING_REFERENCE, DEMO_CALLER, load_demo
from booking.models import Base, Booking, Customer, Hotel
from booking.store import BookingStore, normalize_phone, normalize_reference
from tools.booking_tools import booking_registry, idempotency_key
from tools.registry import ToolContext

OTHER_CALLER = "+15551230002"
NEW_CALLER = "+15559990000"
TODAY = date.today()


def day(offset: int) -> str:
    """An ISO date ``offset`` days from today."""
    return (TODAY + timedelta(days=offset)).isoformat()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A migrated booking database: every test here runs on SQLite and on a real PostgreSQL."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'booking.db'}"
    migrate(url)
    return url


@pytest_asyncio.fixture
async def store(db_url):
    store = BookingStore.from_url(db_url)
    await load_demo(store)
    yield store
    await store.close()


@pytest.fixture
def tools():
    return booking_registry()


def ctx_for(store, caller: str | None, call_sid: str = "CA-first", **kwargs) -> ToolContext:
    return ToolContext(call_sid=call_sid, caller_number=caller, store=store, **kwargs)


async def count_bookings(store) -> int:
    async with store.session() as session:
        return await session.scalar(select(func.count()).select_from(Booking))


async def hotel_id(store, name: str) -> int:
    async with store.session() as session:
        return await session.scalar(select(Hotel.id).where(Hotel.name == name))


# -- schema, migrations, demo data -----------------------------------------------------


def test_registry_has_the_booking_tools_and_gemini_accepts_them(tools):
    assert tools.names == [
        "get_caller_context",
        "search_hotels",
        "check_availability",
        "create_booking",
        "modify_booking",
        "cancel_booking",
        "end_call",
        "transfer_call",
    ]
    create = tools.spec("create_booking").function_schema()
    assert create.required == ["guest_name", "check_in"]
    assert create.properties["kind"]["enum"] == ["hotel", "car", "flight"]
    assert create.properties["guests"]["maximum"] == 10
    gemini = GeminiLLMAdapter().to_provider_tools_format(tools.tools_schema())
    genai_types.LiveConnectConfig(tools=gemini)


@pytest.mark.asyncio
async def test_migrations_match_the_models(store):
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    assert diff == []


@pytest.mark.asyncio
async def test_migrate_from_inside_an_event_loop_is_idempotent(db_url):
    migrate(db_url)  # a running loop: runs in a worker thread
    await migrate_async(db_url)


def test_database_urls(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert database_url() == "sqlite+aiosqlite:///booking.db"
    assert database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert database_url("postgresql://u:p@db/app") == "postgresql+asyncpg://u:p@db/app"
    assert database_url("postgres://u@db/app") == "postgresql+asyncpg://u@db/app"
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db/app")
    assert database_url() == "postgresql+asyncpg://u@db/app"


def test_normalizers():
    assert normalize_phone("+1 (555) 123-0001") == "+15551230001"
    assert normalize_phone("anonymous") is None
    assert normalize_phone(None) is None
    assert normalize_reference("gh 7k2q9p") == "GH-7K2Q9P"
    assert normalize_reference("7K2Q9P") == "GH-7K2Q9P"


@pytest.mark.asyncio
async def test_demo_loader_is_idempotent(store):
    before = await count_bookings(store)
    added = await load_demo(store)  # the fixture already loaded it once
    assert added == {"hotels": 0, "room_types": 0, "customers": 0, "bookings": 0}
    assert await count_bookings(store) == before == 1
    async with store.session() as session:
        assert await session.scalar(select(func.count()).select_from(Hotel)) == 5
        assert await session.scalar(select(func.count()).select_from(Customer)) == 3
        cities = set(await session.scalars(select(Hotel.city)))
    assert cities == {"Lisbon", "Porto", "Madrid"}


# -- caller context --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_caller_context_known_unknown_and_withheld(store, tools):
    known = await tools.call("get_caller_context", {}, ctx_for(store, DEMO_CALLER))
    assert known.result["known_caller"] is True
    assert known.result["customer"]["name"] == "Alex Morgan"
    assert known.result["customer"]["loyalty_tier"] == "gold"
    assert [b["reference"] for b in known.result["active_bookings"]] == [DEMO_BOOKING_REFERENCE]
    assert known.result["active_bookings"][0]["hotel_name"] == "Grand Harbour Lisbon"
    assert known.result["today"] == TODAY.isoformat()

    unknown = await tools.call("get_caller_context", {}, ctx_for(store, NEW_CALLER))
    assert unknown.result["known_caller"] is False and unknown.result["message"] == "unknown caller"

    withheld = await tools.call("get_caller_context", {"phone": DEMO_CALLER}, ctx_for(store, None))
    assert withheld.result["known_caller"] is False  # a number from the model is ignored


# -- the booking flow --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_full_hotel_booking_flow(store, tools):
    ctx = ctx_for(store, NEW_CALLER, call_sid="CA-flow")

    found = await tools.call(
        "search_hotels", {"city": "lisbon", "check_in": day(30), "check_out": day(33), "guests": 2}, ctx
    )
    hotels = found.result["hotels"]
    assert [h["name"] for h in hotels] == ["Alfama Courtyard Hotel", "Grand Harbour Lisbon"]  # cheapest first
    alfama = hotels[0]
    assert alfama["nights"] == 3
    assert alfama["room_options"][0] == {
        "room_type": "standard",
        "max_guests_per_room": 2,
        "rooms": 1,
        "rooms_free": 6,
        "available": True,
        "price_per_night": 95.0,
        "total_price": 285.0,
    }

    availability = await tools.call(
        "check_availability",
        {"hotel_id": alfama["hotel_id"], "check_in": day(30), "check_out": day(33), "rooms": 1, "guests": 2},
        ctx,
    )
    assert availability.result["available"] is True

    booking_args = {
        "kind": "hotel",
        "hotel_id": alfama["hotel_id"],
        "check_in": day(30),
        "check_out": day(33),
        "guests": 2,
        "rooms": 1,
        "guest_name": "Dana Lee",
    }
    created = await tools.call("create_booking", booking_args, ctx)
    assert created.ok, created.error
    booking = created.result["booking"]
    assert created.result["created"] is True
    assert booking["reference"].startswith("GH-") and len(booking["reference"]) == 9
    assert booking | {"reference": "x"} == {
        "reference": "x",
        "kind": "hotel",
        "status": "confirmed",
        "guest_name": "Dana Lee",
        "guests": 2,
        "hotel_id": alfama["hotel_id"],
        "hotel_name": "Alfama Courtyard Hotel",
        "city": "Lisbon",
        "room_type": "standard",
        "rooms": 1,
        "check_in": day(30),
        "check_out": day(33),
    }
    reference = booking["reference"]
    rows = await count_bookings(store)

    # The model retries (same call, same request, sloppier spelling): same booking, no new row.
    retry = await tools.call("create_booking", {**booking_args, "guest_name": "  dana   LEE "}, ctx)
    assert retry.result["created"] is False
    assert retry.result["booking"]["reference"] == reference
    assert await count_bookings(store) == rows

    # The new caller is now a customer and sees the booking.
    context = await tools.call("get_caller_context", {}, ctx_for(store, NEW_CALLER, call_sid="CA-later"))
    assert context.result["known_caller"] is True
    assert context.result["customer"]["name"] == "Dana Lee"
    assert [b["reference"] for b in context.result["active_bookings"]] == [reference]

    # Modify on a later call: one more night and a third guest -> a room type that fits.
    later = ctx_for(store, NEW_CALLER, call_sid="CA-later")
    modified = await tools.call(
        "modify_booking",
        {"reference": reference.lower().replace("-", " "), "check_out": day(34), "guests": 3},
        later,
    )
    assert modified.ok, modified.error
    assert modified.result["booking"]["status"] == "modified"
    assert modified.result["booking"]["check_out"] == day(34)
    assert modified.result["booking"]["guests"] == 3
    assert modified.result["booking"]["room_type"] == "family"

    cancelled = await tools.call("cancel_booking", {"reference": reference}, later)
    assert cancelled.result["booking"]["status"] == "cancelled"
    assert cancelled.result["already_cancelled"] is False
    again = await tools.call("cancel_booking", {"reference": reference}, later)
    assert again.ok and again.result["already_cancelled"] is True

    refused = await tools.call("modify_booking", {"reference": reference, "guests": 2}, later)
    assert refused.error["error"]["type"] == "booking_cancelled"

    context = await tools.call("get_caller_context", {}, later)
    assert context.result["active_bookings"] == []
    assert await count_bookings(store) == rows


@pytest.mark.asyncio
async def test_another_callers_booking_is_refused(store, tools):
    intruder = ctx_for(store, OTHER_CALLER, call_sid="CA-intruder")
    for name, args in [
        ("modify_booking", {"reference": DEMO_BOOKING_REFERENCE, "guests": 1}),
        ("cancel_booking", {"reference": DEMO_BOOKING_REFERENCE}),
    ]:
        outcome = await tools.call(name, args, intruder)
        assert outcome.error["error"]["type"] == "booking_not_found"
    missing = await tools.call("cancel_booking", {"reference": "GH-ZZZZZZ"}, intruder)
    assert missing.error["error"] == {**missing.error["error"], "type": "booking_not_found"}
    # The same answer whether the booking exists or not, and nothing changed.
    booking = await store.get_booking(DEMO_BOOKING_REFERENCE)
    assert booking.status == "confirmed" and booking.guests == 2

    owner = await tools.call(
        "cancel_booking", {"reference": DEMO_BOOKING_REFERENCE}, ctx_for(store, DEMO_CALLER)
    )
    assert owner.result["booking"]["status"] == "cancelled"


@pytest.mark.asyncio
async def test_withheld_caller_can_manage_a_booking_only_on_the_same_call(store, tools):
    ctx = ctx_for(store, None, call_sid="CA-withheld")
    porto = await hotel_id(store, "Ribeira Riverside")
    created = await tools.call(
        "create_booking",
        {"hotel_id": porto, "check_in": day(5), "check_out": day(6), "guest_name": "Kim"},
        ctx,
    )
    reference = created.result["booking"]["reference"]
    other_call = await tools.call(
        "cancel_booking", {"reference": reference}, ctx_for(store, None, call_sid="CA-x")
    )
    assert other_call.error["error"]["type"] == "booking_not_found"
    same_call = await tools.call("cancel_booking", {"reference": reference}, ctx)
    assert same_call.ok


@pytest.mark.asyncio
async def test_the_same_request_on_another_call_is_a_new_booking(store, tools):
    porto = await hotel_id(store, "Ribeira Riverside")
    args = {"hotel_id": porto, "check_in": day(10), "check_out": day(12), "guest_name": "Ana Silva"}
    first = await tools.call("create_booking", args, ctx_for(store, NEW_CALLER, call_sid="CA-1"))
    second = await tools.call("create_booking", args, ctx_for(store, NEW_CALLER, call_sid="CA-2"))
    assert first.result["booking"]["reference"] != second.result["booking"]["reference"]
    assert second.result["created"] is True


@pytest.mark.asyncio
async def test_rooms_run_out(store, tools):
    ctx = ctx_for(store, NEW_CALLER, call_sid="CA-family")
    alfama = await hotel_id(store, "Alfama Courtyard Hotel")
    stay = {"hotel_id": alfama, "check_in": day(40), "check_out": day(42)}
    both = await tools.call(
        "create_booking",
        {**stay, "rooms": 2, "guests": 8, "room_type": "Family", "guest_name": "Big Family"},
        ctx,
    )
    assert both.ok, both.error
    assert both.result["booking"]["room_type"] == "family"

    availability = await tools.call("check_availability", {**stay, "rooms": 1, "guests": 4}, ctx)
    assert availability.result["available"] is False
    assert availability.result["room_options"][0]["rooms_free"] == 0

    # Overlapping one night is enough to clash; the night after is free again.
    clash = {
        "hotel_id": alfama,
        "check_in": day(41),
        "check_out": day(43),
        "guests": 4,
        "guest_name": "Other",
    }
    full = await tools.call("create_booking", clash, ctx)
    assert full.error["error"]["type"] == "not_available"
    after = await tools.call(
        "check_availability", {**stay, "check_in": day(42), "check_out": day(43), "guests": 4}, ctx
    )
    assert after.result["available"] is True

    unknown_type = await tools.call("create_booking", {**clash, "room_type": "penthouse"}, ctx)
    assert unknown_type.error["error"]["type"] == "unknown_room_type"
    unknown_hotel = await tools.call("check_availability", {**stay, "hotel_id": 999}, ctx)
    assert unknown_hotel.error["error"]["type"] == "unknown_hotel"


@pytest.mark.asyncio
async def test_car_and_flight_bookings_are_stored(store, tools):
    ctx = ctx_for(store, DEMO_CALLER, call_sid="CA-travel")
    car = await tools.call(
        "create_booking",
        {
            "kind": "car",
            "check_in": day(14),
            "check_out": day(17),
            "pickup_location": "Lisbon Airport",
            "car_class": "compact",
            "guest_name": "Alex Morgan",
        },
        ctx,
    )
    flight = await tools.call(
        "create_booking",
        {
            "kind": "flight",
            "check_in": day(14),
            "origin": "New York",
            "destination": "Lisbon",
            "guests": 2,
            "guest_name": "Alex Morgan",
        },
        ctx,
    )
    assert car.ok and flight.ok, (car.error, flight.error)
    assert car.result["booking"]["details"] == {"pickup_location": "Lisbon Airport", "car_class": "compact"}
    assert flight.result["booking"]["end_date"] is None  # one way

    row = await store.get_booking(flight.result["booking"]["reference"])
    assert (row.kind, row.hotel_id, row.guests, row.call_sid) == ("flight", None, 2, "CA-travel")
    assert row.details == {"guest_name": "Alex Morgan", "origin": "New York", "destination": "Lisbon"}
    assert row.customer.phone_number == DEMO_CALLER

    context = await tools.call("get_caller_context", {}, ctx)
    assert len(context.result["active_bookings"]) == 3

    no_rooms = await tools.call(
        "modify_booking", {"reference": car.result["booking"]["reference"], "rooms": 2}, ctx
    )
    assert no_rooms.error["error"]["type"] == "invalid_request"


@pytest.mark.asyncio
async def test_invalid_requests_are_structured(store, tools):
    ctx = ctx_for(store, NEW_CALLER)
    outcome = await tools.call(
        "create_booking",
        {
            "hotel_id": 1,
            "check_in": day(-1),
            "check_out": day(-3),
            "guests": 11,
            "rooms": 0,
            "guest_name": "X",
        },
        ctx,
    )
    error = outcome.error["error"]
    assert error["type"] == "invalid_arguments"
    fields = {d["field"] for d in error["details"]}
    assert {"check_in", "guests", "rooms"} <= fields
    assert any("in the past" in d["problem"] for d in error["details"])

    backwards = await tools.call(
        "search_hotels", {"city": "Porto", "check_in": day(5), "check_out": day(3)}, ctx
    )
    assert backwards.error["error"]["details"] == [
        {"field": "check_out", "problem": f"must be after check_in ({day(5)})"}
    ]
    too_long = await tools.call(
        "search_hotels", {"city": "Porto", "check_in": day(5), "check_out": day(50)}, ctx
    )
    assert "30 nights" in too_long.error["error"]["details"][0]["problem"]

    no_hotel = await tools.call(
        "create_booking", {"check_in": day(5), "check_out": day(6), "guest_name": "X"}, ctx
    )
    assert "hotel_id" in no_hotel.error["error"]["details"][0]["problem"]
    nothing = await tools.call("modify_booking", {"reference": DEMO_BOOKING_REFERENCE}, ctx)
    assert nothing.error["error"]["type"] == "invalid_arguments"
    assert await count_bookings(store) == 1


def test_idempotency_key_normalizes_arguments():
    from tools.booking_tools import CreateBookingArgs

    a = CreateBookingArgs(hotel_id=1, check_in=day(3), check_out=day(4), guest_name="Ana Silva")
    b = CreateBookingArgs(hotel_id=1, check_in=day(3), check_out=day(4), guest_name=" ana  SILVA", guests=1)
    c = CreateBookingArgs(hotel_id=1, check_in=day(3), check_out=day(4), guest_name="Ana Silva", guests=2)
    assert idempotency_key("CA1", a) == idempotency_key("CA1", b)
    assert idempotency_key("CA1", a) != idempotency_key("CA1", c)
    assert idempotency_key("CA1", a) != idempotency_key("CA2", a)


# -- call control ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_call_control_tools(store, tools):
    without = ctx_for(store, DEMO_CALLER)
    for name, args in [("end_call", {"reason": "bye"}), ("transfer_call", {})]:
        outcome = await tools.call(name, args, without)
        assert outcome.error["error"]["type"] == "call_control_unavailable"

    actions = []

    async def end_call(reason: str) -> None:
        actions.append(("end", reason))

    async def transfer_call(to_number: str) -> None:
        actions.append(("transfer", to_number))

    with_control = ctx_for(
        store, DEMO_CALLER, end_call=end_call, transfer_call=transfer_call, transfer_to="+15550001111"
    )
    assert (await tools.call("end_call", {"reason": "caller said goodbye"}, with_control)).result == {
        "ending_call": True
    }
    assert (await tools.call("transfer_call", {"reason": "wants a person"}, with_control)).result == {
        "transferring": True
    }
    assert actions == [("end", "caller said goodbye"), ("transfer", "+15550001111")]
