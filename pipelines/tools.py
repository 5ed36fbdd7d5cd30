"""Tools in a call: the registry's tools on the call's speech-to-speech service.

For each call, every tool of the shared :class:`~tools.registry.ToolRegistry` is
registered on the service (Pipecat's ``register_function``), with a context built
from the call, never from the model: the caller's number, the booking store, and the
call's own controls (``end_call`` ends after the goodbye; ``transfer_call`` dials the
configured number). Every tool call is recorded in the call record with its
arguments, result or error and duration. A tool that runs past its ``slow_after_s``
(0.7 s by default) makes the agent say "one moment" first, so the line is never silent.
"""

from __future__ import annotations

from loguru import logger

from pipecat.services.llm_service import LLMService

from pipelines.base import CallContext
from records import utc_now
from tools.registry import ToolContext, ToolOutcome

__all__ = ["attach_tools"]


def attach_tools(call: CallContext, service: LLMService) -> None:
    """Register the shared tools on one call's service.

    Args:
        call: The call (its resources hold the registry and the booking store).
        service: The call's speech-to-speech service.
    """
    resources, control = call.resources, call.control
    if resources is None or resources.tools is None or control is None:
        return
    agent = resources.agent

    def context(_params) -> ToolContext:
        return ToolContext(
            call_sid=call.call_sid,
            caller_number=call.from_number,
            store=resources.booking,
            end_call=control.end_after_reply,
            transfer_call=control.transfer,
            transfer_to=agent.TRANSFER_NUMBER if agent else None,
        )

    async def record(name: str, args: dict, outcome: ToolOutcome) -> None:
        await call.store.add_tool_call(
            call.call_sid,
            name=name,
            arguments=args,
            result=outcome.result,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
            started_at=utc_now(ago_ms=outcome.duration_ms),
        )

    async def acknowledge(name: str, _args: dict) -> None:
        logger.info(f"[{call.call_sid}] {name} is slow: saying one moment")
        await control.say(resources.ack_pcm, agent.TOOL_ACK_TEXT if agent else "One moment.")

    resources.tools.register_with(service, context, on_outcome=record, on_slow=acknowledge)
