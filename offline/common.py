"""Pieces the offline protocol servers (OpenAI Realtime, Gemini Live) share."""

from __future__ import annotations

import asyncio
import json
from typing import TextIO

__all__ = ["MAX_RECEIVED", "ReceivedLog", "wait_unless_cancelled"]

#: Client messages a server remembers (older ones are dropped).
MAX_RECEIVED = 10_000


async def wait_unless_cancelled(cancelled: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` (at least one turn of the event loop) unless cancelled first.

    Args:
        cancelled: Set when the reply being paced is cancelled.
        seconds: How long to wait, in s (0 or less: just yield to the loop).

    Returns:
        True if ``cancelled`` is set.
    """
    if seconds <= 0:
        await asyncio.sleep(0)
    else:
        try:
            await asyncio.wait_for(cancelled.wait(), seconds)
        except TimeoutError:
            pass
    return cancelled.is_set()


class ReceivedLog:
    """What clients sent a server: the last :data:`MAX_RECEIVED` messages, in memory,
    and every one as a JSON line in ``path`` when given (for tests in another process).

    Args:
        events: The list the server exposes as ``received`` (kept and trimmed in place).
    """

    def __init__(self, events: list[dict]):
        self.events = events
        self._file: TextIO | None = None

    def open(self, path: str | None) -> None:
        """Start appending to ``path`` (nothing when None)."""
        if path:
            self._file = open(path, "a", encoding="utf-8")

    def close(self) -> None:
        """Stop writing the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, message: dict) -> None:
        """Remember one (already summarised) client message."""
        self.events.append(message)
        if len(self.events) > MAX_RECEIVED:
            del self.events[: len(self.events) - MAX_RECEIVED]
        if self._file is not None:
            self._file.write(json.dumps(message) + "\n")
            self._file.flush()
