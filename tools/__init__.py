"""Tools the voice agent can call: a typed registry and the tools registered on it.

See :mod:`tools.registry` for the registry, :mod:`tools.booking_tools` for the booking
tools and :mod:`tools.http_tool` for webhook-backed integration tools.
"""

from tools.registry import ToolContext, ToolError, ToolOutcome, ToolRegistry

__all__ = ["ToolContext", "ToolError", "ToolOutcome", "ToolRegistry"]
