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
"""

from __future__ import annotations

import asyncio

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

    def __init__(self, *, playout: PlayoutTracker, **kwargs):
        super().__init__(**kwargs)
        self._playout = playout
        self._unplayed_response = None  # the last audio response until it finished playing

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
