"""The booking tools the voice agent calls, on a :class:`tools.registry.ToolRegistry`.

Tools: ``get_caller_context``, ``search_hotels``, ``check_availability``,
``create_booking``, ``modify_booking``, ``cancel_booking``, ``end_call`` and
``transfer_call``. Each argument model below is the single source of the schema the
model sees and of the validation its arguments get (dates not in the past, check-out
after check-in, at most 30 nights, guests 1-10, rooms 1-5).

Who the caller is comes from the call (``ctx.caller_number``), never from the model:
a caller can only see, change or cancel their own bookings (matched on their number,
or made earlier on this same call); another caller's reference is answered as if it
did not exist.

``create_booking`` is idempotent per call: its idempotency key is a hash of the call
SID and the normalised arguments, so a model that retries (or a retry after a timeout
whose write did land) gets the same reference back, and one row. A second, identical
booking on the same call is therefore impossible by design; a caller wanting two
identical rooms books them with ``rooms=2``.

Usage::

    registry = booking_registry()
    context = LLMContext(messages, tools=registry.tools_schema())
    registry.register_with(llm, lambda params: ToolContext(call_sid, caller, store))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator, model_validator

from booking.store import MAX_NIGHTS, BookingError, NewBooking, Owner, normalize_phone
from tools.registry import ToolContext, ToolError, ToolRegistry

__all__ = ["booking_registry", "idempotency_key", "registry"]


def _not_in_past(value: date) -> date:
    today = date.today()
    if value < today:
        raise ValueError(f"{value.isoformat()} is in the past (today is {today.isoformat()})")
    return value


def _after(start_field: str, value: date | None, info: ValidationInfo) -> date | None:
    """Check an end date against the start date validated before it."""
    start = info.data.get(start_field)
    if value is None or start is None:
        return value
    if value <= start:
        raise ValueError(f"must be after {start_field} ({start.isoformat()})")
    if (value - start).days > MAX_NIGHTS:
        raise ValueError(f"at most {MAX_NIGHTS} nights can be booked at once")
    return value


FutureDate = Annotated[date, AfterValidator(_not_in_past)]
Guests = Annotated[int, Field(ge=1, le=10, description="Number of guests (or passengers), 1 to 10.")]
Rooms = Annotated[int, Field(ge=1, le=5, description="Number of rooms, 1 to 5.")]
Reference = Annotated[
    str,
    Field(
        min_length=6, max_length=20, description="Booking reference as the caller gave it, e.g. GH-7K2Q9P."
    ),
]


class SearchHotelsArgs(BaseModel):
    """Arguments of ``search_hotels``."""

    city: str = Field(min_length=1, max_length=80, description="City to stay in, e.g. Lisbon.")
    check_in: FutureDate = Field(description="Check-in date, YYYY-MM-DD.")
    check_out: date = Field(description="Check-out date, YYYY-MM-DD, after check_in.")
    guests: Guests = 1

    @field_validator("check_out")
    @classmethod
    def _check_out_after_check_in(cls, value: date, info: ValidationInfo) -> date:
        return _after("check_in", value, info)


class CheckAvailabilityArgs(BaseModel):
    """Arguments of ``check_availability``."""

    hotel_id: int = Field(ge=1, description="hotel_id from search_hotels.")
    check_in: FutureDate = Field(description="Check-in date, YYYY-MM-DD.")
    check_out: date = Field(description="Check-out date, YYYY-MM-DD, after check_in.")
    rooms: Rooms = 1
    guests: Guests = 1

    @field_validator("check_out")
    @classmethod
    def _check_out_after_check_in(cls, value: date, info: ValidationInfo) -> date:
        return _after("check_in", value, info)


class CreateBookingArgs(BaseModel):
    """Arguments of ``create_booking``."""

    kind: Literal["hotel", "car", "flight"] = Field(default="hotel", description="What to book.")
    guest_name: str = Field(min_length=1, max_length=120, description="Full name the booking is under.")
    check_in: FutureDate = Field(
        description="Hotel check-in, car pick-up or flight departure date, YYYY-MM-DD."
    )
    check_out: date | None = Field(
        default=None,
        description="Hotel check-out, car return or return-flight date, YYYY-MM-DD. "
        "Required for hotels and cars; omit for a one-way flight.",
    )
    guests: Guests = 1
    rooms: Rooms = 1
    hotel_id: int | None = Field(default=None, ge=1, description="Hotels: hotel_id from search_hotels.")
    room_type: str | None = Field(
        default=None,
        max_length=40,
        description="Hotels: room type from check_availability; omit for the cheapest.",
    )
    pickup_location: str | None = Field(
        default=None, max_length=120, description="Cars: where to pick the car up."
    )
    car_class: Literal["economy", "compact", "midsize", "suv", "premium"] | None = Field(
        default=None, description="Cars: size class."
    )
    origin: str | None = Field(default=None, max_length=80, description="Flights: departure city or airport.")
    destination: str | None = Field(
        default=None, max_length=80, description="Flights: arrival city or airport."
    )
    special_requests: str | None = Field(
        default=None, max_length=300, description="Anything else the caller asked for."
    )

    @field_validator("check_out")
    @classmethod
    def _check_out_after_check_in(cls, value: date | None, info: ValidationInfo) -> date | None:
        return _after("check_in", value, info)

    @model_validator(mode="after")
    def _kind_needs(self) -> CreateBookingArgs:
        needed = {
            "hotel": ["hotel_id", "check_out"],
            "car": ["pickup_location", "check_out"],
            "flight": ["origin", "destination"],
        }[self.kind]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} booking needs {' and '.join(missing)}")
        return self

    def details(self) -> dict[str, Any]:
        """The kind-specific details stored with the booking."""
        fields = {
            "hotel": ["special_requests"],
            "car": ["pickup_location", "car_class", "special_requests"],
            "flight": ["origin", "destination", "special_requests"],
        }[self.kind]
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class ModifyBookingArgs(BaseModel):
    """Arguments of ``modify_booking``: the reference and only what changes."""

    reference: Reference
    check_in: FutureDate | None = Field(
        default=None, description="New check-in / pick-up / departure date, YYYY-MM-DD."
    )
    check_out: FutureDate | None = Field(default=None, description="New check-out / return date, YYYY-MM-DD.")
    guests: Guests | None = None
    rooms: Rooms | None = None
    room_type: str | None = Field(default=None, max_length=40, description="Hotels: new room type.")
    guest_name: str | None = Field(
        default=None, min_length=1, max_length=120, description="New name on the booking."
    )

    @field_validator("check_out")
    @classmethod
    def _check_out_after_check_in(cls, value: date | None, info: ValidationInfo) -> date | None:
        return _after("check_in", value, info)

    @model_validator(mode="after")
    def _something_changes(self) -> ModifyBookingArgs:
        if not self.model_dump(exclude={"reference"}, exclude_none=True):
            raise ValueError("give at least one thing to change")
        return self


class CancelBookingArgs(BaseModel):
    """Arguments of ``cancel_booking``."""

    reference: Reference


class EndCallArgs(BaseModel):
    """Arguments of ``end_call``."""

    reason: str = Field(max_length=200, description="Why the call ends, e.g. 'caller said goodbye'.")


class TransferCallArgs(BaseModel):
    """Arguments of ``transfer_call``."""

    reason: str | None = Field(default=None, max_length=200, description="Why the caller wants a person.")


registry = ToolRegistry()


@registry.tool(
    description="Look up who is calling (from their phone number) and their upcoming bookings. "
    "Call this once at the start of the call.",
    timeout_s=4.0,
)
async def get_caller_context(ctx: ToolContext) -> dict[str, Any]:
    """The caller's customer record and active bookings, or that they are unknown.

    Also gives today's date (the server's), so the model can resolve "next Friday".
    """
    phone = normalize_phone(ctx.caller_number)
    customer = await ctx.store.find_customer(phone) if phone else None
    today = date.today().isoformat()
    if customer is None:
        why = "unknown caller" if phone else "unknown caller (number withheld)"
        return {"known_caller": False, "message": why, "today": today}
    bookings = await ctx.store.customer_bookings(customer.id)
    return {
        "known_caller": True,
        "today": today,
        "customer": customer.to_dict(),
        "active_bookings": [b.to_dict() for b in bookings],
    }


@registry.tool(
    description="Find hotels in a city with rooms free for the dates and party size.", timeout_s=5.0
)
async def search_hotels(ctx: ToolContext, args: SearchHotelsArgs) -> dict[str, Any]:
    """Hotels in the city with room options, cheapest first."""
    with _booking_errors():
        hotels = await ctx.store.search_hotels(args.city, args.check_in, args.check_out, args.guests)
    result: dict[str, Any] = {"city": args.city, "hotels": hotels}
    if not hotels:
        result["message"] = f"No hotel in {args.city} has rooms free for those dates and guests."
    return result


@registry.tool(
    description="Check whether a hotel has the rooms for the dates and guests, with room types and prices.",
    timeout_s=5.0,
)
async def check_availability(ctx: ToolContext, args: CheckAvailabilityArgs) -> dict[str, Any]:
    """Availability and prices at one hotel."""
    with _booking_errors():
        return await ctx.store.availability(
            args.hotel_id, args.check_in, args.check_out, args.rooms, args.guests
        )


@registry.tool(
    description="Book a hotel stay, a car or a flight once the caller has confirmed the details. "
    "Returns the booking reference; read it back to the caller.",
    timeout_s=8.0,
)
async def create_booking(ctx: ToolContext, args: CreateBookingArgs) -> dict[str, Any]:
    """Create the booking (or return the one this call already made with these arguments)."""
    new = NewBooking(
        kind=args.kind,
        customer_phone=normalize_phone(ctx.caller_number),
        guest_name=args.guest_name.strip(),
        start_date=args.check_in,
        end_date=args.check_out,
        guests=args.guests,
        rooms=args.rooms,
        hotel_id=args.hotel_id,
        room_type=args.room_type,
        details=args.details(),
        call_sid=ctx.call_sid,
        idempotency_key=idempotency_key(ctx.call_sid, args),
    )
    with _booking_errors():
        booking, created = await ctx.store.create_booking(new)
    return {
        "booking": booking.to_dict(),
        "created": created,
        "message": "Booked." if created else "Already booked earlier on this call; this is the same booking.",
    }


@registry.tool(
    description="Change the caller's own booking: dates, guests, rooms, room type or name. "
    "Give only what changes.",
    timeout_s=8.0,
)
async def modify_booking(ctx: ToolContext, args: ModifyBookingArgs) -> dict[str, Any]:
    """Modify one of the caller's bookings."""
    with _booking_errors():
        booking = await ctx.store.modify_booking(
            args.reference,
            _owner(ctx),
            start_date=args.check_in,
            end_date=args.check_out,
            guests=args.guests,
            rooms=args.rooms,
            room_type=args.room_type,
            guest_name=args.guest_name,
        )
    return {"booking": booking.to_dict(), "message": "Booking changed."}


@registry.tool(description="Cancel the caller's own booking, after they have confirmed.", timeout_s=6.0)
async def cancel_booking(ctx: ToolContext, args: CancelBookingArgs) -> dict[str, Any]:
    """Cancel one of the caller's bookings (cancelling twice is harmless)."""
    with _booking_errors():
        booking, changed = await ctx.store.cancel_booking(args.reference, _owner(ctx))
    return {
        "booking": booking.to_dict(),
        "already_cancelled": not changed,
        "message": "Booking cancelled." if changed else "That booking was already cancelled.",
    }


@registry.tool(
    description="Hang up, after saying goodbye, when the caller is done or asks to end the call.",
    timeout_s=3.0,
    slow_after_s=None,
)
async def end_call(ctx: ToolContext, args: EndCallArgs) -> dict[str, Any]:
    """End the call through the call's own control."""
    if ctx.end_call is None:
        raise ToolError("call_control_unavailable", "Ending the call is not available; say goodbye instead.")
    await ctx.end_call(args.reason)
    return {"ending_call": True}


@registry.tool(
    description="Transfer the caller to a person at the front desk when they ask for one or you cannot help.",
    timeout_s=5.0,
    slow_after_s=None,
)
async def transfer_call(ctx: ToolContext, args: TransferCallArgs) -> dict[str, Any]:
    """Transfer the call to the configured front-desk number."""
    if ctx.transfer_call is None or not ctx.transfer_to:
        raise ToolError(
            "call_control_unavailable", "Transferring is not available; offer to help or take a message."
        )
    await ctx.transfer_call(ctx.transfer_to)
    return {"transferring": True}


def booking_registry() -> ToolRegistry:
    """A fresh registry holding the booking tools, free to extend (e.g. with HTTP tools)."""
    return registry.copy()


def idempotency_key(call_sid: str, args: BaseModel) -> str:
    """The idempotency key of a write: SHA-256 of the call SID and the normalised arguments.

    Normalised: every field present (defaults filled in), dates in ISO form, text
    trimmed, whitespace collapsed and case-folded, so ``"Ana  Silva"`` and
    ``"ana silva"`` are the same request.

    Args:
        call_sid: The call's SID.
        args: The validated arguments.

    Returns:
        64 hex characters.
    """
    blob = json.dumps(
        {
            "call_sid": call_sid,
            "tool": type(args).__name__,
            "args": _normalized(args.model_dump(mode="json")),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _normalized(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _owner(ctx: ToolContext) -> Owner:
    return Owner(phone_number=normalize_phone(ctx.caller_number), call_sid=ctx.call_sid)


@contextmanager
def _booking_errors() -> Iterator[None]:
    """Report the store's expected failures to the model as tool errors."""
    try:
        yield
    except BookingError as e:
        raise ToolError(e.code, e.message, **e.extra) from e
