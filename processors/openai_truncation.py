"""OpenAI Realtime told the truth after a barge-in: truncation from Twilio's marks.

When the caller interrupts, the model must forget the part of its reply the caller
never heard, or it will later act as if they had. Pipecat's
:class:`~pipecat.services.openai.realtime.llm.OpenAIRealtimeLLMService` sends
``conversation.item.truncate`` with ``audio_end_ms`` estimated from the wall clock
since the first audio delta, which is wrong whenever Twilio's buffer holds audio (the
transport sends ahead of playout), and sends nothing at all once the transport has
finished *sending* a reply that Twilio is still *playing*.

This subclass changes only that estimate: ``audio_end_ms`` is the played position
from :class:`~processors.barge_in.PlayoutTracker` (the newest Twilio mark echo of the
reply), and the reply stays truncatable until it has finished playing, not sending.
Source for the event: platform.openai.com/docs/api-reference/realtime-client-events
(``conversation.item.truncate``: ``item_id``, ``content_index``, ``audio_end_ms``).

It also adds :meth:`reconnect`: Pipecat's service does not reconnect when its socket
drops, so the call's error handler asks it to, within a deadline; the conversation so
far is replayed from the context on the new session.

And a stall watchdog: a model whose socket stays open but which says nothing while a
response is owed (``response.create`` sent, no ``response.done`` yet) for
``stall_secs`` is reported as an error, which the call treats like a dropped socket
(reconnect, else apology). A WebSocket ping would not notice: the peer's network
stack answers pings even when the model behind it is hung.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger

from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

from diagnostics import ProbedRealtimeMixin
from processors.barge_in import PlayoutTracker

__all__ = ["PlayoutAwareOpenAIRealtimeLLMService"]


class PlayoutAwareOpenAIRealtimeLLMService(ProbedRealtimeMixin, OpenAIRealtimeLLMService):
    """OpenAI Realtime service whose truncation follows what the caller heard.

    Args:
        playout: The call's playout tracker.
        **kwargs: Passed to :class:`OpenAIRealtimeLLMService`.
    """

    def __init__(self, *, playout: PlayoutTracker, stall_secs: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self._playout = playout
        self._unplayed_response = None  # the last audio response until it finished playing
        self._stall_secs = stall_secs
        self._owed_since: float | None = None  # a response is owed; last sign of life, monotonic s
        self._watchdog: asyncio.Task | None = None

    async def _connect(self):
        await super()._connect()
        self._owed_since = None
        if self._websocket is not None:
            self._websocket = _Heartbeat(self._websocket, self._alive)
            if self._stall_secs and self._watchdog is None:
                self._watchdog = self.create_task(self._watch_for_stalls(self._stall_secs))

    async def cleanup(self):
        """Stop the stall watchdog, then clean up as Pipecat does."""
        if self._watchdog is not None:
            await self.cancel_task(self._watchdog)
            self._watchdog = None
        await super().cleanup()

    def _alive(self) -> None:
        if self._owed_since is not None:
            self._owed_since = time.monotonic()

    async def send_client_event(self, event):
        """Send a client event; a ``response.create`` starts the stall clock."""
        if getattr(event, "type", None) == "response.create" and self._owed_since is None:
            self._owed_since = time.monotonic()
        await super().send_client_event(event)

    async def _handle_evt_response_done(self, evt):
        self._owed_since = None
        await super()._handle_evt_response_done(evt)

    async def _watch_for_stalls(self, stall_secs: float) -> None:
        while True:
            await asyncio.sleep(min(0.5, stall_secs / 4))
            since = self._owed_since
            if since is not None and time.monotonic() - since >= stall_secs:
                self._owed_since = None
                await self.push_error(error_msg=f"model stalled: no event for {stall_secs:g} s")

    async def reconnect(self, timeout_s: float = 2.0) -> bool:
        """Open a new session and replay the conversation so far (from the context).

        Args:
            timeout_s: Deadline for the new connection, in seconds.

        Returns:
            True if a new session is connected.
        """
        try:
            async with asyncio.timeout(timeout_s):
                if self._context is None:  # the call has not started talking yet
                    await self._disconnect()
                    await self._connect()
                else:
                    await self.reset_conversation()
        except TimeoutError:
            logger.warning(f"{self}: no new session within {timeout_s:.1f} s")
            return False
        except Exception as e:
            logger.warning(f"{self}: reconnecting failed: {e}")
            return False
        return self._websocket is not None

    async def _handle_evt_audio_delta(self, evt):
        await super()._handle_evt_audio_delta(evt)
        self._unplayed_response = self._current_audio_response

    async def _truncate_current_audio_response(self):
        current = self._current_audio_response or self._unplayed_response
        self._current_audio_response = None
        self._unplayed_response = None
        reply = self._playout.reply
        if current is None or reply is None or not reply.playing or reply.interrupted:
            return  # nothing of it is unheard
        played_ms = int(reply.played_ms)
        logger.debug(f"{self}: truncating {current.item_id} at {played_ms} ms (from marks)")
        await self.send_client_event(
            events.ConversationItemTruncateEvent(
                item_id=current.item_id,
                content_index=current.content_index,
                audio_end_ms=played_ms,
            )
        )


class _Heartbeat:
    """The model's WebSocket, calling ``alive()`` for every message received."""

    def __init__(self, websocket, alive):
        self._websocket = websocket
        self._alive_callback = alive

    def __getattr__(self, name):
        return getattr(self._websocket, name)

    def __aiter__(self):
        return self._messages()

    async def _messages(self):
        async for message in self._websocket:
            self._alive_callback()
            yield message
