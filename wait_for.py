"""``asyncio.wait_for`` in the caller's own task on Python 3.11, as Python 3.12 does it.

Pipecat's transports wrap every audio frame in ``asyncio.wait_for``: the input's audio
task per caller frame (``BaseInputTransport._audio_task_handler``), the output's media
sender per chunk taken from its queue and per chunk written (``MediaSender._next_frame``,
``_internal_write_audio_frame``). For a phone call that is one call per 20 ms caller
frame coming in, and two per 20 ms chunk of the agent's audio going out.

On Python 3.11 ``asyncio.wait_for`` runs its awaitable in a new task, and so does
``wait_for2``, which Pipecat puts in its place on Python < 3.12 (``pipecat/__init__.py``).
A new task starts in the event loop's next turn and its waiter wakes in the turn after,
so each call costs the frame two loop turns besides the task itself. With many calls
on one loop a turn lasts milliseconds, and the agent's first audio of a reply waited
for several of them. Python 3.12 rewrote ``wait_for`` on ``asyncio.timeout()``, which
runs the awaitable in the caller's task (https://docs.python.org/3.12/library/asyncio-task.html#asyncio.wait_for,
"Changed in version 3.12"; CPython issue gh-96764). ``asyncio.timeout()`` itself came
in 3.11, so :func:`install` gives 3.11 the same behaviour.

Measured with the processors of the caller's audio in direct mode (``pipelines.realtime``),
at 20 calls on one server process, in ``make bench``'s conditions: see the README's
"Audio path and delay". Alone, it took egress (first model audio -> first Twilio
``media`` sent) p50 from about 10 ms to about 6.5 ms (three runs each).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

import pipecat  # noqa: F401  (its import installs wait_for2; install() must come after it)

__all__ = ["install", "wait_for"]

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Wait for ``aw`` in the calling task, at most ``timeout`` seconds.

    The same contract as ``asyncio.wait_for``: on timeout ``aw`` is cancelled, awaited
    to its end, and ``TimeoutError`` raised; cancelling the caller cancels ``aw``.

    Args:
        aw: A coroutine, task or future.
        timeout: Seconds; None waits for ever; 0 or less gives a done ``aw`` its
            result and times out any other at once.

    Returns:
        What ``aw`` returns.

    Raises:
        TimeoutError: If ``aw`` did not finish in time.
    """
    if timeout is not None and timeout <= 0:
        # No time at all: a done task or future gives its result, anything else is
        # cancelled and waited for (as asyncio's own).
        future = asyncio.ensure_future(aw)
        if not future.done():
            future.cancel()
            await asyncio.wait([future])
        try:
            return future.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await aw


def install() -> bool:
    """Make ``asyncio.wait_for`` :func:`wait_for`, for every module, on Python < 3.12.

    Pipecat modules call ``asyncio.wait_for`` through the ``asyncio`` module, so they
    use this one from then on. Call it once at start-up, after Pipecat is imported
    (this module imports it).

    Returns:
        Whether it was installed (False on Python 3.12+, whose own is the same).
    """
    if sys.version_info >= (3, 12):
        return False
    asyncio.wait_for = wait_for
    return True
