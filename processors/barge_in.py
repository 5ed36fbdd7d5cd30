"""Barge-in: know exactly what the caller heard, stop at once, drop what is stale.

:class:`PlayoutTracker` sits just before the output transport. For each reply of the
agent (the audio between ``TTSStartedFrame`` and ``TTSStoppedFrame``) it:

- cuts the audio into 20 ms frames (Twilio's own frame size) and sends a named Twilio
  ``mark`` after every third one (:data:`MARK_MS`) and after the reply's last one,
  remembering how far into the reply (ms) each mark sits. Twilio echoes a mark when the
  audio before it has played, so the newest echo of the current reply is the played
  position, to 60 ms; the echo canceller interpolates between echoes. A mark per 20 ms
  frame would double the messages each way while the agent speaks (media + mark out,
  mark echo in), and measured 15% of the server's CPU at 10 calls (``make bench``).
  Source: https://www.twilio.com/docs/voice/media-streams/websocket-messages
  ("mark": echoed when the audio before it is played, and at once for pending marks
  when a ``clear`` empties the buffer);
- on an ``InterruptionFrame`` (the caller's turn started) while the reply is still
  playing or queued at Twilio: freezes the played position at the last echo received
  before the ``clear`` (the echoes a ``clear`` releases are of audio that was dropped,
  so they are ignored), marks the reply interrupted, and drops any audio of that
  reply that still arrives from the model (no stale media after the ``clear``);
- reports each reply once it has finished playing, been interrupted, or the call
  ended, through the ``on_reply_finished(tracker, reply)`` event, which the transcript
  logger records. A reply fully sent but still playing when the next one begins (e.g.
  the spoken "one moment" while a slow tool's answer is already coming) keeps being
  tracked by its own marks until Twilio has played it; Twilio plays the two in order.

It also keeps each reply's audio as the echo reference for :class:`EchoCanceller`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputTransportMessageFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from records import utc_now

__all__ = ["FRAME_MS", "MARK_MS", "PlayoutTracker", "Reply", "heard_text", "log_late_drop"]

#: Twilio's media frame: the size of each audio frame we send, in milliseconds.
FRAME_MS = 20
#: Our mark spacing, in milliseconds (a whole number of frames); a reply's last frame
#: is always marked too.
MARK_MS = 3 * FRAME_MS
_MARK_NAME = re.compile(r"^r(\d+):(\d+)$")


@dataclass
class Reply:
    """One reply of the agent, as sent and as heard.

    Parameters:
        reply_id: Counts replies within the call, from 1.
        sample_rate: Rate of ``audio``, in Hz (8000 after our resampler).
        audio: The reply's 16-bit PCM as sent, kept as the echo reference.
        generated_text: Everything the model said for this reply.
        sent_ms: Audio sent to Twilio so far, in ms (20 ms steps).
        marked_ms: Position of the newest mark sent, in ms.
        played_ms: Audio Twilio reported played (newest mark echo), in ms.
            While the reply plays it lags the caller's ear by up to :data:`MARK_MS`;
            it is what the caller surely heard.
        done: The model has finished the reply (``TTSStoppedFrame``).
        interrupted: The caller cut the reply off.
        started_at: ISO 8601 UTC time the first frame was sent.
        ended_at: ISO 8601 UTC time it finished playing or was cut off.
        last_echo_at: ``time.monotonic()`` of the newest mark echo, in s.
    """

    reply_id: int
    sample_rate: int = 8000
    audio: bytearray = field(default_factory=bytearray)
    generated_text: str = ""
    sent_ms: int = 0
    marked_ms: int = 0
    played_ms: int = 0
    done: bool = False
    interrupted: bool = False
    started_at: str | None = None
    ended_at: str | None = None
    last_echo_at: float | None = None

    @property
    def generated_ms(self) -> int:
        """Length of the reply's audio, in ms."""
        return len(self.audio) * 1000 // (2 * self.sample_rate)

    @property
    def playing(self) -> bool:
        """Whether audio of this reply is still to come, queued, or playing at Twilio."""
        return not self.done or self.played_ms < self.sent_ms

    def play_position_ms(self, now: float | None = None) -> float:
        """Estimated position of Twilio's playout now, in ms into the reply.

        The newest echo plus the time since it, capped at one mark spacing (the next
        mark would have been echoed otherwise) and at what was sent.
        """
        if self.last_echo_at is None:
            return 0.0
        elapsed_ms = ((now or time.monotonic()) - self.last_echo_at) * 1000
        return min(self.played_ms + min(elapsed_ms, MARK_MS), self.sent_ms)

    @property
    def heard_text(self) -> str:
        """The part of ``generated_text`` the caller heard (see :func:`heard_text`)."""
        if not self.interrupted:
            return self.generated_text
        return heard_text(self.generated_text, self.played_ms, self.generated_ms)


def heard_text(text: str, played_ms: float, total_ms: float) -> str:
    """Cut a reply's text in proportion to the audio played, at a word boundary.

    Speech-to-speech providers give no word timings for their own speech, so the
    share of the text heard is taken to be the share of the audio played.

    Args:
        text: The full text of the reply.
        played_ms: Audio played, in ms.
        total_ms: Audio generated, in ms.

    Returns:
        The words wholly within the played share (possibly empty); Japanese, written
        without spaces, is cut at the character.
    """
    if total_ms <= 0 or played_ms >= total_ms:
        return text.strip()
    cut = int(len(text) * max(played_ms, 0) / total_ms)
    if cut < len(text) and not text[cut].isspace() and not _unspaced(text[:cut]):
        cut = text.rfind(" ", 0, cut) + 1 if " " in text[:cut] else 0
    return text[:cut].strip()


def log_late_drop(service: object, dropped: int) -> None:
    """Log that a model service dropped audio or text of a reply a barge-in cut off.

    Logs the first and every 50th, so a long tail costs no log line per message.

    Args:
        service: The service that dropped it (named in the line).
        dropped: How many it has dropped in the call so far, this one included.
    """
    if dropped == 1 or dropped % 50 == 0:
        logger.debug(f"{service}: dropped the rest of a cut-off reply ({dropped} so far)")


def _unspaced(text: str) -> bool:
    """Whether text ends in Japanese (kana, kanji, or its full stop): the next sentence
    follows without a space, as Japanese is written."""
    return bool(text) and ("\u3000" <= text[-1] <= "\u30ff" or "\u4e00" <= text[-1] <= "\u9fff")


class PlayoutTracker(FrameProcessor):
    """Sends Twilio marks after the agent's audio and tracks what the caller heard.

    Place it just before the output transport; its audio must already be at the
    transport's rate (8000 Hz).

    Event handlers:
        on_reply_finished(tracker, reply): a reply finished playing, was interrupted,
            or the call ended with it unfinished.

    Args:
        stream_sid: Twilio's stream SID, for the mark messages.
        **kwargs: Passed to :class:`FrameProcessor`.
    """

    def __init__(self, stream_sid: str, **kwargs):
        super().__init__(**kwargs)
        self._stream_sid = stream_sid
        self._reply: Reply | None = None
        # Replies fully sent, superseded by a newer one, still playing at Twilio: id -> reply.
        self._finishing: dict[int, Reply] = {}
        self._replies = 0
        self._pending = bytearray()  # audio short of a whole 20 ms frame
        self._dropping = False  # an interrupted reply's audio may still be arriving
        self._register_event_handler("on_reply_finished")

    @property
    def reply(self) -> Reply | None:
        """The current (or last) reply, or None before the first one."""
        return self._reply

    def playing(self) -> bool:
        """Whether agent audio is being generated, queued, or played at Twilio."""
        if self._finishing:
            return True
        return self._reply is not None and self._reply.playing and not self._reply.interrupted

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Mark outgoing audio, read mark echoes, handle interruptions.

        Args:
            frame: The frame to process.
            direction: The direction of frame flow.
        """
        await super().process_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, (TTSStartedFrame, LLMFullResponseStartFrame)):
            # A new response: whatever of the interrupted one was still arriving is over.
            self._dropping = False
            if isinstance(frame, TTSStartedFrame):
                await self._supersede()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame):
            if not self._dropping:
                await self._send_marked(frame)
        elif isinstance(frame, TTSTextFrame):
            if not self._dropping:
                reply = self._current(frame)
                spacer = "" if frame.includes_inter_frame_spaces or _unspaced(reply.generated_text) else " "
                reply.generated_text += (spacer if reply.generated_text else "") + frame.text
                await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            if self._reply and not self._dropping:
                await self._flush_pending(frame)
                self._reply.done = True
                await self._maybe_finished()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InputTransportMessageFrame):
            await self._on_transport_message(frame.message)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            cut_off = self._interrupt()
            await self.push_frame(frame, direction)  # the clear goes out first
            for reply in cut_off:
                await self._call_event_handler("on_reply_finished", reply)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._finish_unheard(hung_up=isinstance(frame, CancelFrame))
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _current(self, frame: Frame) -> Reply:
        if self._reply is None or self._reply.done or self._reply.interrupted:
            self._keep_tracking(self._reply)
            self._replies += 1
            rate = getattr(frame, "sample_rate", 8000)
            self._reply = Reply(reply_id=self._replies, sample_rate=rate)
        return self._reply

    async def _send_marked(self, frame: TTSAudioRawFrame) -> None:
        reply = self._current(frame)
        reply.audio += frame.audio
        self._pending += frame.audio
        size = 2 * reply.sample_rate * FRAME_MS // 1000
        while len(self._pending) >= size:
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            await self._push_chunk(reply, chunk, frame)

    async def _flush_pending(self, template: Frame) -> None:
        """End the reply's audio: the part short of a whole frame, padded with silence
        to 20 ms, then a mark after its last frame."""
        reply = self._reply
        if reply and self._pending:
            size = 2 * reply.sample_rate * FRAME_MS // 1000
            chunk = bytes(self._pending).ljust(size, b"\x00")
            self._pending.clear()
            await self._push_chunk(reply, chunk, template)
        if reply and reply.marked_ms < reply.sent_ms:
            await self._mark(reply)

    async def _push_chunk(self, reply: Reply, chunk: bytes, template: Frame) -> None:
        out = TTSAudioRawFrame(chunk, reply.sample_rate, 1)
        out.context_id = getattr(template, "context_id", None)
        if reply.started_at is None:
            reply.started_at = utc_now()
        await self.push_frame(out)
        reply.sent_ms += FRAME_MS
        if reply.sent_ms - reply.marked_ms >= MARK_MS:
            await self._mark(reply)

    async def _mark(self, reply: Reply) -> None:
        """Send a mark at the reply's audio sent so far, named ``r<reply>:<ms>``."""
        reply.marked_ms = reply.sent_ms
        mark = {
            "event": "mark",
            "streamSid": self._stream_sid,
            "mark": {"name": f"r{reply.reply_id}:{reply.sent_ms}"},
        }
        await self.push_frame(OutputTransportMessageFrame(message=mark))

    async def _on_transport_message(self, message) -> None:
        if not isinstance(message, dict) or message.get("event") != "mark":
            return
        match = _MARK_NAME.match(str((message.get("mark") or {}).get("name", "")))
        if not match:
            return  # not ours
        reply_id = int(match.group(1))
        current = self._reply
        reply = current if current and current.reply_id == reply_id else self._finishing.get(reply_id)
        if reply is None or reply.interrupted:
            return  # a stale echo, or released by a clear: that audio was dropped, not heard
        reply.played_ms = max(reply.played_ms, int(match.group(2)))
        reply.last_echo_at = time.monotonic()
        await self._maybe_finished(reply)

    def _interrupt(self) -> list[Reply]:
        """The caller's turn started: cut off every reply still to play, oldest first.

        Returns:
            The replies cut off (empty if nothing was playing).
        """
        self._pending.clear()
        cut_off = [r for r in self._finishing.values() if r.playing]
        self._finishing.clear()
        reply = self._reply
        if reply is not None and not reply.interrupted and reply.ended_at is None and reply.playing:
            self._dropping = not reply.done  # the model may still be sending this reply
            cut_off.append(reply)
        now = utc_now()
        for r in cut_off:
            r.interrupted = True
            r.ended_at = now
        return cut_off

    def _keep_tracking(self, reply: Reply | None) -> None:
        """A newer reply begins: a fully sent one still playing keeps its marks' tracking."""
        if reply is not None and reply.done and not reply.interrupted and reply.ended_at is None:
            self._finishing[reply.reply_id] = reply

    async def _maybe_finished(self, reply: Reply | None = None) -> None:
        reply = reply or self._reply
        if reply and reply.done and reply.ended_at is None and reply.played_ms >= reply.sent_ms:
            reply.ended_at = utc_now()
            self._finishing.pop(reply.reply_id, None)
            await self._call_event_handler("on_reply_finished", reply)

    async def _supersede(self) -> None:
        """A new reply begins (``TTSStartedFrame``).

        The current reply, if fully sent, plays on at Twilio before the new one and is
        reported when its last mark comes back; one the model abandoned half sent is
        reported now, with what played of it.
        """
        reply = self._reply
        if reply is None or reply.ended_at is not None or not reply.sent_ms:
            return
        if reply.done and not reply.interrupted:
            self._keep_tracking(reply)
        else:
            reply.ended_at = utc_now()
            await self._call_event_handler("on_reply_finished", reply)

    async def _finish_unheard(self, *, hung_up: bool = False) -> None:
        """Report the replies that will never finish playing: the call ended.

        Args:
            hung_up: The call was cancelled (the caller hung up): a reply still playing
                was cut off, and only what played of it was heard.
        """
        replies = list(self._finishing.values())
        self._finishing.clear()
        if self._reply is not None and self._reply not in replies:
            replies.append(self._reply)
        for reply in replies:
            if reply.ended_at is None and reply.sent_ms:
                if hung_up and reply.playing:
                    reply.interrupted = True
                reply.ended_at = utc_now()
                await self._call_event_handler("on_reply_finished", reply)
