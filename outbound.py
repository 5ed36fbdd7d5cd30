"""Outbound calls: what the API accepts, the presets, and who answered.

``POST /twilio/outbound-call`` (``server.py``) and ``python -m cli call`` place a call
through Twilio's REST API (``twilio_rest.create_call``) whose TwiML connects our media
stream once the call is answered, with asynchronous answering machine detection
(AMD, ``MachineDetection=DetectMessageEnd``). The stream is held silent, with no
model session, until AMD's verdict arrives (:class:`AnsweringMachineGate`):

- ``human`` (or ``unknown``: AMD could not tell): the call runs the agent with the
  task in its ``CallContext.parameters`` (:meth:`OutboundPlan.agent_parameters`);
- a machine (``machine_end_beep``, ``machine_end_silence``, ``machine_end_other``;
  with ``DetectMessageEnd`` the verdict comes at the end of the greeting, i.e. after
  the beep): the call is given ``<Say>`` the preset's short voicemail ``</Say><Hangup/>``;
- ``fax``: the call is hung up.

Source: https://www.twilio.com/docs/voice/answering-machine-detection (``AnsweredBy``
values, ``MachineDetectionDuration``, why ``DetectMessageEnd`` suits voicemail).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config import E164

__all__ = [
    "AMD_FAX",
    "AMD_MACHINE",
    "AnsweringMachineGate",
    "OutboundCallRequest",
    "OutboundPlan",
    "OutboundTask",
    "PRESETS",
    "Preset",
    "plan_call",
]

#: ``AnsweredBy`` values meaning an answering machine (``machine_start`` only comes with
#: ``MachineDetection=Enable``; we ask for ``DetectMessageEnd``).
AMD_MACHINE = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"})
AMD_FAX = "fax"

PresetName = Literal["transit_booking", "appointment_reminder", "survey"]
ContextValue = str | int | float | bool | None


def _org(context: dict[str, Any], default: str) -> str:
    return str(context.get("organisation") or context.get("organization") or default)


@dataclass(frozen=True)
class Preset:
    """A kind of outbound call.

    Parameters:
        name: What the API calls it.
        instructions: How the agent runs the call, from the task's context.
        greeting: What the agent's first words must do.
        voicemail: The short message left on an answering machine, from the context.
    """

    name: str
    instructions: Callable[[dict[str, Any]], str]
    greeting: Callable[[dict[str, Any]], str]
    voicemail: Callable[[dict[str, Any]], str]


PRESETS: dict[str, Preset] = {
    "transit_booking": Preset(
        "transit_booking",
        instructions=lambda c: (
            f"You are the booking assistant of {_org(c, 'Harbor City Transit')}, on an outbound "
            "phone call to book a ride for the person you called. Collect or confirm the pickup "
            "address, the destination, the date and time, the number of passengers and any "
            "accessibility needs. Read the booking back and get a clear yes before you say "
            "goodbye. If they do not want a ride, thank them and end politely."
        ),
        greeting=lambda c: (
            f"The person has answered. Say you are calling from {_org(c, 'Harbor City Transit')} "
            "about booking their ride, and ask whether now is a good time."
        ),
        voicemail=lambda c: (
            f"Hello, this is {_org(c, 'Harbor City Transit')} calling about booking your ride. "
            "Please call us back when it suits you. Goodbye."
        ),
    ),
    "appointment_reminder": Preset(
        "appointment_reminder",
        instructions=lambda c: (
            f"You are calling on behalf of {_org(c, 'the clinic')} to remind the person you called "
            "of their appointment (the details are in the task context). Confirm the date and "
            "time, ask whether they can attend, and if not, note that they want to reschedule. "
            "Do not give advice on anything else."
        ),
        greeting=lambda c: (
            f"The person has answered. Say you are calling from {_org(c, 'the clinic')} with a "
            "reminder of their appointment, and give its date and time."
        ),
        voicemail=lambda c: (
            f"Hello, this is {_org(c, 'the clinic')} with a reminder of your appointment"
            + (f" on {c['when']}" if c.get("when") else "")
            + ". If you need to reschedule, please call us back. Goodbye."
        ),
    ),
    "survey": Preset(
        "survey",
        instructions=lambda c: (
            f"You are calling on behalf of {_org(c, 'our company')} to ask a short satisfaction "
            "survey: how satisfied they were overall from one to five, what went well, and "
            "what could be better. Ask one question at a time, accept any answer, never argue, "
            "and thank them at the end. If they do not want to take part, thank them and end."
        ),
        greeting=lambda c: (
            f"The person has answered. Say you are calling from {_org(c, 'our company')} for a "
            "one-minute survey about their recent experience, and ask whether they have a minute."
        ),
        voicemail=lambda c: (
            f"Hello, this is {_org(c, 'our company')}. We were calling to ask about your recent "
            "experience. There is no need to call back. Thank you, goodbye."
        ),
    ),
}

_DEFAULT = Preset(
    "custom",
    instructions=lambda c: "You are on an outbound phone call you placed, for the task below.",
    greeting=lambda c: "The person has answered. Greet them, say who you are and why you are calling.",
    voicemail=lambda c: (
        f"Hello, this is {_org(c, 'an automated assistant')} calling you. "
        "Please call us back when it suits you. Goodbye."
    ),
)


class OutboundTask(BaseModel):
    """What the agent is to do on the call."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(default="", max_length=4000, description="Instructions for the agent")
    context: dict[str, ContextValue] = Field(
        default_factory=dict, max_length=50,
        description="Facts for the call, e.g. {'name': 'Ana', 'when': 'Tuesday at 10'}",
    )


class OutboundCallRequest(BaseModel):
    """The body of ``POST /twilio/outbound-call``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(pattern=E164.pattern, description="Number to call, E.164 (+15551234567)")
    task: OutboundTask = Field(default_factory=OutboundTask)
    preset: PresetName | None = None
    voicemail_message: str | None = Field(
        default=None, min_length=1, max_length=500,
        description="Message left on an answering machine (default: the preset's)",
    )
    from_: str | None = Field(
        default=None, alias="from", pattern=E164.pattern,
        description="Caller ID (default TWILIO_FROM_NUMBER)",
    )

    @model_validator(mode="after")
    def _has_a_task(self) -> "OutboundCallRequest":
        if not self.preset and not self.task.prompt.strip():
            raise ValueError("give task.prompt, a preset, or both")
        return self


@dataclass
class OutboundPlan:
    """One outbound call, as placed and as the agent will run it.

    Parameters:
        to: The number called (E.164).
        from_: Our caller ID (E.164).
        preset: The preset's name, or None.
        prompt: The task's own prompt ("" with a preset alone).
        context: The task's context.
        instructions: The agent's full instructions: the preset's, the prompt, the
            context's facts (one ``- key: value`` line each).
        greeting_prompt: What the agent's first words must do.
        voicemail: The message for an answering machine.
    """

    to: str
    from_: str
    preset: str | None
    prompt: str
    context: dict[str, Any]
    instructions: str
    greeting_prompt: str
    voicemail: str
    call_sid: str | None = field(default=None)

    def twiml_parameters(self) -> dict[str, str]:
        """The ``<Parameter>``s of the call's TwiML besides its token (short, public facts)."""
        return {"direction": "outbound-api", "from": self.from_, "to": self.to,
                "preset": self.preset or ""}

    def agent_parameters(self, answered_by: str) -> dict[str, str]:
        """What the pipeline gets in ``CallContext.parameters`` for this call.

        Args:
            answered_by: AMD's verdict (``human`` or ``unknown``).

        Returns:
            ``direction`` (``outbound-api``), ``from`` (our number), ``to`` (the person
            called), ``preset``, ``answered_by``, ``task_prompt`` (full instructions),
            ``task_context`` (JSON object), ``greeting_prompt``.
        """
        return {
            **self.twiml_parameters(),
            "answered_by": answered_by,
            "task_prompt": self.instructions,
            "task_context": json.dumps(self.context),
            "greeting_prompt": self.greeting_prompt,
        }

    def task_record(self) -> dict[str, Any]:
        """The task as stored with the call: ``{prompt, context, voicemail}``."""
        return {"prompt": self.prompt, "context": self.context, "voicemail": self.voicemail}


def plan_call(request: OutboundCallRequest, default_from: str) -> OutboundPlan:
    """Turn an API request into the call to place.

    Args:
        request: The validated request.
        default_from: ``TWILIO_FROM_NUMBER``, used when the request names no ``from``.

    Returns:
        The plan.
    """
    preset = PRESETS[request.preset] if request.preset else _DEFAULT
    context = dict(request.task.context)
    prompt = request.task.prompt.strip()
    instructions = preset.instructions(context)
    if prompt:
        instructions += f"\n\nTask: {prompt}"
    if context:
        facts = "\n".join(f"- {key}: {value}" for key, value in context.items())
        instructions += f"\n\nFacts for this call:\n{facts}"
    instructions += "\n\nKeep every answer short and spoken: one or two sentences, no lists or markup."
    return OutboundPlan(
        to=request.to,
        from_=request.from_ or default_from,
        preset=request.preset,
        prompt=prompt,
        context=context,
        instructions=instructions,
        greeting_prompt=preset.greeting(context),
        voicemail=request.voicemail_message or preset.voicemail(context),
    )


class AnsweringMachineGate:
    """AMD verdicts by call, for streams waiting to learn who answered.

    The verdict may come before the stream connects or after; either way
    :meth:`wait` returns it. At most ``max_calls`` verdicts are kept (oldest dropped).
    """

    def __init__(self, max_calls: int = 1000):
        self._verdicts: OrderedDict[str, str] = OrderedDict()
        self._events: dict[str, asyncio.Event] = {}
        self._max = max_calls

    def set(self, call_sid: str, answered_by: str) -> None:
        """Record AMD's verdict for a call and wake its stream."""
        self._verdicts[call_sid] = answered_by
        self._verdicts.move_to_end(call_sid)
        while len(self._verdicts) > self._max:
            self._verdicts.popitem(last=False)
        self._events.setdefault(call_sid, asyncio.Event()).set()

    def get(self, call_sid: str) -> str | None:
        """The verdict, if it came."""
        return self._verdicts.get(call_sid)

    async def wait(self, call_sid: str) -> str:
        """Wait for a call's verdict (bound it with a timeout)."""
        event = self._events.setdefault(call_sid, asyncio.Event())
        await event.wait()
        return self._verdicts.get(call_sid, "unknown")

    def forget(self, call_sid: str) -> None:
        """Drop a call's verdict (it ended)."""
        self._verdicts.pop(call_sid, None)
        self._events.pop(call_sid, None)
