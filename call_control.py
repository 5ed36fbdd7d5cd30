"""What the agent can do to its own call: speak canned audio, hang up, transfer.

- :meth:`CallControl.say` plays pre-rendered speech (an apology, "one moment") through
  the pipeline like any reply, so it is marked, tracked and recorded.
- :meth:`CallControl.end_after_playout` ends the call once the caller has heard
  everything: a named Twilio ``mark`` goes after the last audio and the pipeline ends
  when Twilio echoes it (Twilio echoes a mark when the audio before it has played:
  https://www.twilio.com/docs/voice/media-streams/websocket-messages#mark-message),
  with a bounded fallback if the echo never comes.
- :meth:`CallControl.end_after_reply` is what the ``end_call`` tool asks for: the
  model is about to say goodbye, so the call ends once that reply has played out.
- :meth:`CallControl.transfer` moves the call to a person: Twilio's REST API updates
  the call with ``<Dial>`` TwiML, which ends our media stream
  (https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource).
"""

from __future__ import annotations

import asyncio

from loguru import logger
from twilio.twiml.voice_response import VoiceResponse

from pipecat.frames.frames import (
    InputTransportMessageFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.worker import PipelineWorker
from pipecat.utils.text.base_text_aggregator import TextType

from processors.barge_in import PlayoutTracker, Reply
from processors.twilio_serializer import TWILIO_SAMPLE_RATE
from resources import Resources
from twilio_rest import rest_client

__all__ = ["AGENT_ENDED", "END_OF_CALL_MARK", "MODEL_ERROR", "TRANSFERRED", "CallControl"]

#: End reason when the agent ended the call.
AGENT_ENDED = "agent_ended"
#: End reason when the model failed and the caller heard the apology.
MODEL_ERROR = "model_error"
#: End reason when the call was handed to a person.
TRANSFERRED = "transferred"
#: Name of the Twilio mark sent after the agent's last words; its echo ends the call.
END_OF_CALL_MARK = "end-of-call"
#: How long to wait for that echo beyond the audio's own length, in seconds.
END_OF_CALL_GRACE_SECS = 5.0


class CallControl:
    """One call's own controls. Bind it to the call's worker before the call runs.

    Args:
        call_sid: The call's SID.
        stream_sid: The media stream's SID (for marks).
        resources: The server's shared resources (settings, Twilio credentials).
    """

    def __init__(self, call_sid: str, stream_sid: str, resources: Resources):
        self._call_sid = call_sid
        self._stream_sid = stream_sid
        self._resources = resources
        self._worker: PipelineWorker | None = None
        self._playout: PlayoutTracker | None = None
        self._timers: list[asyncio.Task] = []
        self._end_after_reply: tuple[str, int] | None = None  # (reason, last reply id before it)
        self.reason: str | None = None

    def bind(self, worker: PipelineWorker) -> None:
        """Attach to the call's worker, to queue frames and see mark echoes."""
        self._worker = worker
        worker.add_reached_upstream_filter((InputTransportMessageFrame,))
        worker.add_event_handler("on_frame_reached_upstream", self._on_upstream_frame)

    def watch(self, playout: PlayoutTracker) -> None:
        """Follow the call's replies (for :meth:`end_after_reply`)."""
        self._playout = playout
        playout.add_event_handler("on_reply_finished", self._on_reply_finished)

    def end_reason(self, reason: str) -> None:
        """Record why the call ends; the first reason given stays."""
        if self.reason is None:
            self.reason = reason

    async def say(self, pcm: bytes | None, text: str) -> None:
        """Play pre-rendered speech to the caller, as a reply of its own.

        Args:
            pcm: 16-bit PCM at 8000 Hz (nothing is played if None).
            text: Its words, for the call record.
        """
        if pcm and self._worker:
            # The words pass any text-to-speech service untouched (skip_tts): they are
            # already spoken.
            words = TTSTextFrame(text, text_type=TextType.SENTENCE)
            words.skip_tts = True
            await self._worker.queue_frames(
                [TTSStartedFrame(), words, TTSAudioRawFrame(pcm, TWILIO_SAMPLE_RATE, 1), TTSStoppedFrame()]
            )

    async def end_after_playout(self, reason: str, pcm: bytes | None = None, text: str = "") -> None:
        """Say ``pcm`` (if any), then end the call once Twilio has played everything.

        Args:
            reason: The end reason to record.
            pcm: Last words, 16-bit PCM at 8000 Hz.
            text: Their text, for the call record.
        """
        self.end_reason(reason)
        await self.say(pcm, text)
        mark = {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": END_OF_CALL_MARK}}
        if self._worker:
            await self._worker.queue_frame(OutputTransportMessageFrame(message=mark))
        wait = len(pcm or b"") / (2 * TWILIO_SAMPLE_RATE) + END_OF_CALL_GRACE_SECS
        self._timers.append(asyncio.create_task(self._end_later(wait, reason)))

    async def end_after_reply(self, reason: str) -> None:
        """End the call once the agent's next reply (its goodbye) has played out.

        Args:
            reason: Why, as the model put it (logged); the end reason is ``agent_ended``.
        """
        logger.info(f"[{self._call_sid}] the agent ends the call ({reason}) after its goodbye")
        last = self._playout.reply.reply_id if self._playout and self._playout.reply else 0
        self._end_after_reply = (AGENT_ENDED, last)
        wait = self._resources.agent.END_CALL_WAIT_SECS if self._resources.agent else 15.0
        self._timers.append(asyncio.create_task(self._end_later(wait, AGENT_ENDED)))

    async def transfer(self, to_number: str) -> None:
        """Hand the call to a person at ``to_number`` through Twilio's REST API.

        Args:
            to_number: E.164 number to dial (from configuration, never the model).

        Raises:
            RuntimeError: Without Twilio credentials, or if Twilio refuses.
        """
        client = rest_client(self._resources.settings)
        if client is None:
            raise RuntimeError("no Twilio credentials to transfer the call with")
        twiml = VoiceResponse()
        twiml.dial(to_number)
        try:
            await client.calls(self._call_sid).update_async(twiml=str(twiml))
        finally:
            await client.http_client.close()
        self.end_reason(TRANSFERRED)
        logger.info(f"[{self._call_sid}] transferred to a person")

    def cancel(self) -> None:
        """Stop pending timers (the call is over)."""
        for timer in self._timers:
            timer.cancel()

    async def _on_reply_finished(self, _tracker: PlayoutTracker, reply: Reply) -> None:
        pending = self._end_after_reply
        if pending and reply.reply_id > pending[1] and not reply.interrupted:
            self._end_after_reply = None
            await self.end_after_playout(pending[0])

    async def _on_upstream_frame(self, _worker: PipelineWorker, frame) -> None:
        message = frame.message if isinstance(frame, InputTransportMessageFrame) else None
        if isinstance(message, dict) and message.get("event") == "mark":
            if (message.get("mark") or {}).get("name") == END_OF_CALL_MARK and self._worker:
                logger.info(f"[{self._call_sid}] the caller heard the last words: ending the call")
                await self._worker.end(reason=self.reason)

    async def _end_later(self, delay_secs: float, reason: str) -> None:
        await asyncio.sleep(delay_secs)
        logger.warning(f"[{self._call_sid}] no end-of-call echo within {delay_secs:.1f} s; ending")
        self.end_reason(reason)
        if self._worker:
            await self._worker.end(reason=reason)
