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

And the caller's audio goes to the model as it came from the phone: G.711 mu-law at
8 kHz (``audio/pcmu``), when the session's input format says so (``pipelines.services``
sets it). Pipecat's service only sends 16-bit PCM at 24 kHz, which means lifting
Twilio's 8 kHz to 24 kHz on every 20 ms frame and sending 6 times the bytes (a 20 ms
frame's 216 base64 characters become 1,280) for no new information. Source for the
formats: platform.openai.com/docs/api-reference/realtime-client-events
(``session.update``: ``audio.input.format``: ``audio/pcm`` at 24000 Hz, ``audio/pcmu``,
``audio/pcma``).

And no audio of a cancelled response after the barge-in. The service sends
``response.cancel`` when the caller interrupts, but what the model sent before the
cancel reached it is still on its way. Pipecat treats a delta arriving after the
interruption as the first of a new reply (``TTSStartedFrame``), so a piece of the reply
the caller has just cut off went to Twilio after its ``clear``. Here every delta of a
response that was running at the interruption is dropped, up to its ``response.done``.
Each server event names its ``response_id``; source:
platform.openai.com/docs/api-reference/realtime-server-events
(``response.output_audio.delta``, ``response.output_audio_transcript.delta``,
``response.done`` with ``status`` ``cancelled``).

And a stall watchdog: a model whose socket stays open but which says nothing while a
response is owed (``response.create`` sent, no ``response.done`` yet) for
``stall_secs`` is reported as an error, which the call treats like a dropped socket
(reconnect, else apology). A WebSocket ping would not notice: the peer's network
stack answers pings even when the model behind it is hung.
"""

from __future__ import annotations

import asyncio
import base64
import time

from loguru import logger

from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

from diagnostics import ProbedRealtimeMixin
from processors.barge_in import PlayoutTracker, log_late_drop
from processors.g711 import ulaw_encode

__all__ = ["G711CallerAudioMixin", "PlayoutAwareOpenAIRealtimeLLMService"]

#: G.711's sample rate, in Hz; one mu-law byte per sample.
G711_RATE = 8000


class G711CallerAudioMixin:
    """Send caller audio to OpenAI Realtime as mu-law when the session's input is ``audio/pcmu``.

    Goes after :class:`~diagnostics.ProbedRealtimeMixin` and before Pipecat's
    :class:`OpenAIRealtimeLLMService` in the bases. With any other input format,
    Pipecat's own sending (16-bit PCM at 24 kHz) runs unchanged.
    """

    @property
    def input_audio_bytes_per_s(self) -> int:
        """Bytes per second of the caller audio sent: 8000 (mu-law) or 48000 (PCM16, 24 kHz)."""
        return G711_RATE if self._caller_audio_is_pcmu() else 24000 * 2

    def _caller_audio_is_pcmu(self) -> bool:
        audio = getattr(self._settings.session_properties, "audio", None)
        return isinstance(getattr(getattr(audio, "input", None), "format", None), events.PCMUAudioFormat)

    async def _send_user_audio(self, frame):
        """Append one frame of caller audio to the model's input buffer.

        Args:
            frame: ``InputAudioRawFrame`` of 16-bit PCM; 8000 Hz when sent as mu-law.

        Raises:
            ValueError: If the session takes mu-law and the frame is not at 8000 Hz
                (a graph that forgot to keep the caller's rate).
        """
        if not self._caller_audio_is_pcmu():
            return await super()._send_user_audio(frame)
        if frame.sample_rate != G711_RATE:
            raise ValueError(f"audio/pcmu input needs 8000 Hz caller audio, got {frame.sample_rate} Hz")
        audio = ulaw_encode(frame.audio)
        if not audio:
            return
        await self.send_client_event(events.InputAudioBufferAppendEvent(audio=base64.b64encode(audio).decode()))
        if self._is_turn_detection_disabled():
            # Pipecat replays this pre-roll after clearing the input buffer at a barge-in.
            self._user_audio_preroll_buffer.extend(audio)
            keep = int(G711_RATE * self._user_audio_preroll_secs)
            self._user_audio_preroll_buffer = self._user_audio_preroll_buffer[-keep:]


class PlayoutAwareOpenAIRealtimeLLMService(ProbedRealtimeMixin, G711CallerAudioMixin, OpenAIRealtimeLLMService):
    """OpenAI Realtime service whose truncation follows what the caller heard.

    It also reconnects on demand, reports a stalled model, and sends the caller's
    audio as mu-law when the session takes ``audio/pcmu`` (see the module docstring).

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
        self._running_response: str | None = None  # id of the response being generated
        self._cancel_next_response = False  # interrupted between response.create and .created
        self._cancelled_responses: set[str] = set()  # cut off by a barge-in, not yet done
        self._late_deltas_dropped = 0  # for the log

    async def _connect(self):
        await super()._connect()
        self._owed_since = None
        self._running_response = None  # a new session: nothing of the old one will arrive
        self._cancel_next_response = False
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

    async def _handle_evt_response_created(self, evt):
        self._running_response = evt.response.id
        if self._cancel_next_response:
            self._cancel_next_response = False
            self._cancelled_responses.add(evt.response.id)
        await super()._handle_evt_response_created(evt)

    async def _handle_evt_response_done(self, evt):
        self._owed_since = None
        self._cancelled_responses.discard(evt.response.id)
        if self._running_response == evt.response.id:
            self._running_response = None
        await super()._handle_evt_response_done(evt)

    async def _handle_interruption(self):
        """The caller barged in: whatever response is running is cancelled, its late deltas too."""
        if self._running_response is not None:
            self._cancelled_responses.add(self._running_response)
        elif self._response_active and self._is_turn_detection_disabled():
            # response.create sent, response.created not yet here: our response.cancel
            # follows the create, so the server cancels the response it creates.
            self._cancel_next_response = True
        await super()._handle_interruption()

    def _is_late(self, evt) -> bool:
        if evt.response_id not in self._cancelled_responses:
            return False
        self._late_deltas_dropped += 1
        log_late_drop(self, self._late_deltas_dropped)
        return True

    async def _handle_evt_audio_transcript_delta(self, evt):
        if not self._is_late(evt):
            await super()._handle_evt_audio_transcript_delta(evt)

    async def _handle_evt_text_delta(self, evt):
        if not self._is_late(evt):
            await super()._handle_evt_text_delta(evt)

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
        if self._is_late(evt):
            return
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
