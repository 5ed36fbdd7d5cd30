"""Transcript logger: writes each user and assistant turn into the call record.

- Caller turns: :meth:`TranscriptLogger.user` is a processor placed just before the
  speech-to-speech service. It sees ``UserStartedSpeakingFrame`` /
  ``UserStoppedSpeakingFrame`` going downstream (from the user aggregator's VAD) and
  the ``TranscriptionFrame`` that the service pushes upstream once it has
  transcribed the turn. In the cascade it sits between the speech-to-text service and
  the user aggregator: the turn frames come upstream (the aggregator broadcasts them)
  and the transcripts downstream; :meth:`TranscriptLogger.keys` records the keys the
  caller presses there (``DTMFToAgent`` comes after the aggregator).
- Agent turns: :meth:`TranscriptLogger.record_reply` is the handler of the playout
  tracker's ``on_reply_finished`` event, so an agent turn is recorded as the caller
  heard it: when it finished playing at Twilio or was cut off, with the audio played
  (from mark echoes), the text heard and the text generated, and its latency.

Reply latency, from our own clocks: from the moment the caller stopped speaking to the
reply's first audio frame sent to Twilio (``Reply.started_at``). The caller stopped at
the last ``VADUserStoppedSpeakingFrame`` of their turn, back-dated by its ``stop_secs``
(the silence Silero needed to be sure; the frame's ``timestamp`` is when it was sure);
without local VAD frames (``TURN_DETECTION=server``), at the turn's
``UserStoppedSpeakingFrame``. So the latency includes the VAD's and the turn
detector's waits and the model's time, as the caller lives them (less the network
legs to and from the phone). A reply that started before any caller turn ended since
the last reply (the greeting, or a reply to something earlier) has no latency.

A turn is committed to the store as soon as it completes, so a crash loses at most
the turn in progress. At the end of the call, caller turns still open are written too.

The caller's audio passes :meth:`TranscriptLogger.user` on its way to the model 50
times a second, so that processor runs in direct mode (in the pusher's task: no queue
and no task switch per frame, which cost the caller's audio a loop turn each). It
must then never wait on the store: the frame that completes a caller turn is pushed
by the model service's receive task, which would wait with it. Caller turns are
written by a task of their own, one after another in the order they completed, and
the end of the call waits for them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import datetime, timezone
from dataclasses import dataclass

from loguru import logger

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from processors.barge_in import PlayoutTracker, Reply
from records import CallStore, parse_time, utc_now

__all__ = ["TranscriptLogger"]


@dataclass
class _Turn:
    started_at: str
    ended_at: str | None = None


class TranscriptLogger:
    """Records one call's turns into a :class:`~records.CallStore`.

    Args:
        store: Where the call record lives.
        call_sid: The call whose turns these are.
        playout: The call's playout tracker, whose finished replies are the agent's turns.
    """

    def __init__(self, store: CallStore, call_sid: str, playout: PlayoutTracker):
        self._store = store
        self._call_sid = call_sid
        self._user_turn: _Turn | None = None
        self._awaiting_transcript: deque[_Turn] = deque()
        self._caller_stopped_at: str | None = None  # the newest caller turn end not yet answered
        self._vad_stopped_at: str | None = None  # when the caller's speech last stopped, if since resumed: None
        self._user_writes: asyncio.Task | None = None  # the newest caller-turn write
        self._user = _UserTurnTap(self, name="TranscriptLogger.user", enable_direct_mode=True)
        playout.add_event_handler("on_reply_finished", self.record_reply)

    def user(self) -> FrameProcessor:
        """The processor that sees the caller's turns and their transcripts.

        Speech-to-speech graph: just before the service (which pushes its transcripts
        upstream). Cascade: between the speech-to-text service and the user aggregator
        (which consumes the transcripts).
        """
        return self._user

    def keys(self) -> FrameProcessor:
        """A processor recording only the transcripts that pass it going downstream.

        For a graph whose ``DTMFToAgent`` comes after the caller-turn processor (the
        cascade: the user aggregator between them consumes transcripts), placed right
        after ``DTMFToAgent`` so the keys pressed reach the call record too.
        """
        return _TranscriptTap(self, name="TranscriptLogger.keys")

    async def _write_user(self, turn: _Turn, text: str) -> None:
        await self._store.add_turn(
            self._call_sid,
            role="user",
            text=text,
            started_at=turn.started_at,
            ended_at=turn.ended_at or utc_now(),
        )
        logger.info(f"[{self._call_sid}] user: {text}")

    def _write_user_soon(self, turn: _Turn, text: str) -> None:
        """Write a caller turn from a task of its own, after the ones before it.

        A failed write is logged; the turns after it are still written.
        """
        previous = self._user_writes

        async def write() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await self._write_user(turn, text)
            except Exception as exc:
                logger.opt(exception=exc).error(f"[{self._call_sid}] the caller's turn was not recorded: {text}")

        self._user_writes = asyncio.create_task(write())

    async def record_reply(self, _tracker: PlayoutTracker, reply: Reply) -> None:
        """Record one agent turn as heard (the ``on_reply_finished`` handler).

        Args:
            _tracker: The playout tracker that reports it.
            reply: The finished reply.
        """
        text = reply.heard_text
        latency_ms = None
        stopped = self._caller_stopped_at
        if stopped and reply.started_at and stopped <= reply.started_at:
            latency_ms = round((parse_time(reply.started_at) - parse_time(stopped)).total_seconds() * 1000)
            self._caller_stopped_at = None
        await self._store.add_turn(
            self._call_sid,
            role="assistant",
            text=text,
            started_at=reply.started_at or utc_now(),
            ended_at=reply.ended_at or utc_now(),
            interrupted=reply.interrupted,
            audio_played_ms=reply.played_ms,
            generated_text=reply.generated_text,
            latency_ms=latency_ms,
        )
        cut = f" (interrupted at {reply.played_ms} of {reply.generated_ms} ms)" if reply.interrupted else ""
        logger.info(f"[{self._call_sid}] assistant{cut}: {text}")

    # caller side

    async def _on_user_frame(self, frame: Frame) -> None:
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._vad_stopped_at = None
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            stopped = datetime.fromtimestamp(frame.timestamp - frame.stop_secs, timezone.utc)
            self._vad_stopped_at = stopped.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._user_turn = _Turn(started_at=utc_now())
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._user_turn:
            self._user_turn.ended_at = utc_now()
            self._caller_stopped_at = self._vad_stopped_at or self._user_turn.ended_at
            self._awaiting_transcript.append(self._user_turn)
            self._user_turn = None
        elif isinstance(frame, TranscriptionFrame) and frame.text.strip():
            if self._awaiting_transcript:
                turn = self._awaiting_transcript.popleft()
            else:  # transcribed before the turn closed, or with no VAD turn around it
                turn = self._user_turn or _Turn(started_at=utc_now())
                turn.ended_at = turn.ended_at or utc_now()
                self._user_turn = None
            self._write_user_soon(turn, frame.text.strip())

    async def flush(self) -> None:
        """Wait for the caller turns being written, then write those still open (the call is ending)."""
        if self._user_writes is not None:
            await asyncio.wait([self._user_writes])
        pending = list(self._awaiting_transcript) + ([self._user_turn] if self._user_turn else [])
        self._awaiting_transcript.clear()
        self._user_turn = None
        for turn in pending:
            await self._write_user(turn, "[caller spoke, no transcript]")


class _TranscriptTap(FrameProcessor):
    """Forwards every frame; reports transcripts going downstream to the logger."""

    def __init__(self, owner: TranscriptLogger, **kwargs):
        super().__init__(**kwargs)
        self._owner = owner

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._owner._on_user_frame(frame)
        await self.push_frame(frame, direction)


class _UserTurnTap(FrameProcessor):
    """Forwards every frame; reports caller-turn frames to the logger (direct mode: never waits on the store)."""

    def __init__(self, owner: TranscriptLogger, **kwargs):
        super().__init__(**kwargs)
        self._owner = owner

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(
            frame,
            (UserStartedSpeakingFrame, UserStoppedSpeakingFrame, TranscriptionFrame,
             VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame),
        ):
            await self._owner._on_user_frame(frame)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._owner.flush()
        await self.push_frame(frame, direction)
