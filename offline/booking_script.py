"""The offline agent's booking scenario: what it says and which tools it calls, turn by turn.

Used when the session declares the booking tools (``get_caller_context``,
``search_hotels``, ``create_booking``, ``end_call``). The offline agent cannot
understand the caller, so the scenario is fixed: whatever the caller says, turn 1
looks the caller up, turn 2 searches Lisbon for three nights a month from now for two
guests, turn 3 books the first hotel found, turn 4 says goodbye and ends the call.
Each tool's result is read back in the next spoken line, so a call's audio and its
database agree. When the session also declares ``loyalty_points`` (the offline MCP
server's tool, :mod:`offline.mcp_server`), a known caller's points are looked up right
after turn 1's lookup and read out in the same reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

__all__ = ["BOOKING_TOOLS", "BookingScript", "SayLine", "ToolCall"]

#: The tools a session must declare for the scenario to run.
BOOKING_TOOLS = frozenset({"get_caller_context", "search_hotels", "create_booking", "end_call"})

GOODBYE = "Thank you for calling the Grand Harbor Hotel. Have a wonderful stay, goodbye!"


@dataclass
class ToolCall:
    """The agent calls a tool. ``arguments`` is what the model would send."""

    name: str
    arguments: dict[str, Any]


@dataclass
class SayLine:
    """The agent speaks a line."""

    text: str


class BookingScript:
    """Decides the next action of one call from the caller's turns and tool results."""

    def __init__(self, today: date | None = None, tools: frozenset[str] | set[str] = frozenset()):
        """Start a call's scenario.

        Args:
            today: The date the scenario's bookings count from (default: today).
            tools: Names of the tools the session declares.
        """
        self._today = today or date.today()
        self._tools = frozenset(tools)
        self._loyalty: dict[str, Any] | None = None
        self._steps_done = 0
        self._pending_result: tuple[str, dict[str, Any]] | None = None
        self._customer_name = "Guest"
        self._hotel: dict[str, Any] | None = None
        self._caller_context: dict[str, Any] = {}

    @property
    def check_in(self) -> date:
        """The scenario's check-in date: 30 days from today."""
        return self._today + timedelta(days=30)

    def tool_result(self, name: str, output: str | None) -> None:
        """Take in a tool's output (a ``function_call_output`` item).

        Args:
            name: The tool that produced it.
            output: Its JSON text, as the client sent it.
        """
        try:
            result = json.loads(output or "{}")
        except ValueError:
            result = {"error": {"type": "unreadable", "message": str(output)[:100]}}
        self._pending_result = (name, result if isinstance(result, dict) else {"value": result})

    def skip_to(self, user_turns: int) -> None:
        """Resume a replayed conversation: the steps of its caller turns are done.

        Args:
            user_turns: Caller turns in the replayed conversation.
        """
        self._steps_done = max(self._steps_done, min(user_turns, 4))

    def next_action(self, user_turns: int) -> ToolCall | SayLine | None:
        """What the agent does on ``response.create``.

        Args:
            user_turns: Caller turns committed so far.

        Returns:
            A tool call, a line to say, or None to fall back to the plain script.
        """
        if self._pending_result is not None:
            name, result = self._pending_result
            self._pending_result = None
            phone = ((result.get("customer") or {}).get("phone_number")
                     if name == "get_caller_context" else None)
            if phone and "loyalty_points" in self._tools:
                self._caller_context = result
                return ToolCall("loyalty_points", {"phone": phone})
            if name == "loyalty_points":
                self._loyalty = result if "error" not in result else None
                name, result = "get_caller_context", self._caller_context
            return SayLine(self._after(name, result))
        if user_turns == 0 or self._steps_done >= 4 or user_turns <= self._steps_done:
            return None
        self._steps_done += 1
        return self._step(self._steps_done)

    def _step(self, step: int) -> ToolCall:
        nights = (self.check_in.isoformat(), (self.check_in + timedelta(days=3)).isoformat())
        if step == 1:
            return ToolCall("get_caller_context", {})
        if step == 2:
            return ToolCall(
                "search_hotels",
                {"city": "Lisbon", "check_in": nights[0], "check_out": nights[1], "guests": 2},
            )
        if step == 3:
            hotel_id = (self._hotel or {}).get("hotel_id") or (self._hotel or {}).get("id") or 1
            return ToolCall(
                "create_booking",
                {"kind": "hotel", "guest_name": self._customer_name, "hotel_id": hotel_id,
                 "check_in": nights[0], "check_out": nights[1], "guests": 2, "rooms": 1},
            )
        return ToolCall("end_call", {"reason": "the caller has what they needed"})

    def _after(self, name: str, result: dict[str, Any]) -> str:
        if "error" in result:
            return "I'm sorry, something went wrong on my side with that request. Could you say it once more?"
        if name == "get_caller_context":
            customer = result.get("customer") or {}
            if customer.get("name"):
                self._customer_name = customer["name"]
                points = (f" You have {self._loyalty['points']} loyalty points."
                          if self._loyalty and "points" in self._loyalty else "")
                return (f"Welcome back, {customer['name']}.{points} I can help you book another "
                        "stay. Which city would you like, and for which dates?")
            return "Welcome to the Grand Harbor Hotel. Which city would you like to stay in, and when?"
        if name == "search_hotels":
            hotels = result.get("hotels") or []
            if not hotels:
                return "I'm sorry, I found no rooms in Lisbon for those dates. Shall I try other dates?"
            self._hotel = hotels[0]
            return (f"I found {len(hotels)} hotels in Lisbon with rooms for three nights. "
                    f"The {hotels[0].get('name', 'first one')} has a room for you. Shall I book it?")
        if name == "create_booking":
            booking = result.get("booking") or {}
            reference = " ".join("dash" if c == "-" else c for c in str(booking.get("reference", "")))
            return f"Your stay is booked. Your booking reference is {reference}. Is there anything else?"
        if name == "end_call":
            return GOODBYE
        return "Done. Is there anything else I can help you with?"
