"""Transcript logger: writes each user and assistant turn into the call record.

Two processors share one logger, because a turn's facts pass different points of
the pipeline:

- :meth:`TranscriptLogger.user`, placed just before the speech-to-speech service,
  sees ``UserStartedSpeakingFrame`` / ``UserStoppedSpeakingFrame`` going downstream
  (from the user aggregator's VAD) and the ``TranscriptionFrame`` that the service
  pushes upstream once it has transcribed the turn;
- :meth:`TranscriptLogger.assistant`, placed just after the output transport, sees
  ``BotStartedSpeakingFrame`` / ``BotStoppedSpeakingFrame`` and the ``TTSTextFrame``s
  that the transport releases in step with the audio it sends, and
  ``InterruptionFrame`` when the caller cuts the agent off.

A turn is committed to the store as soon as it completes (the assistant's when the
bot stops speaking, the caller's when its transcript arrives), so a crash loses at
most the turn in progress. At the end of the call, turns still open are written too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from loguru import logger

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from records import CallStore, utc_now

__all__ = ["TranscriptLogger"]


@dataclass
class _Turn:
    started_at: str
    ended_at: str | None = None
    parts: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()


class TranscriptLogger:
    """Records one call's turns into a :class:`~records.CallStore`.

    Args:
        store: Where the call record lives.
        call_sid: The call whose turns these are.
    """

    def __init__(self, store: CallStore, call_sid: str):
        self._store = store
        self._call_sid = call_sid
        self._user_turn: _Turn | None = None
        self._awaiting_transcript: deque[_Turn] = deque()
        self._assistant_turn: _Turn | None = None
        self._assistant_text: list[str] = []
        self._user = _UserTurnTap(self, name="TranscriptLogger.user")
        self._assistant = _AssistantTurnTap(self, name="TranscriptLogger.assistant")
        self.turns_written = 0

    def user(self) -> FrameProcessor:
        """The processor to place just before the speech-to-speech service."""
        return self._user

    def assistant(self) -> FrameProcessor:
        """The processor to place just after the output transport."""
        return self._assistant

    async def _write(self, role: str, turn: _Turn, text: str) -> None:
        await self._store.add_turn(
            self._call_sid,
            role=role,
            text=text,
            started_at=turn.started_at,
            ended_at=turn.ended_at or utc_now(),
            interrupted=turn.interrupted,
        )
        self.turns_written += 1
        logger.info(f"[{self._call_sid}] {role}: {text}")

    # caller side

    async def _on_user_frame(self, frame: Frame) -> None:
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_turn = _Turn(started_at=utc_now())
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._user_turn:
            self._user_turn.ended_at = utc_now()
            self._awaiting_transcript.append(self._user_turn)
            self._user_turn = None
        elif isinstance(frame, TranscriptionFrame) and frame.text.strip():
            if self._awaiting_transcript:
                turn = self._awaiting_transcript.popleft()
            else:  # transcribed before the turn closed, or with no VAD turn around it
                turn = self._user_turn or _Turn(started_at=utc_now())
                turn.ended_at = turn.ended_at or utc_now()
                self._user_turn = None
            await self._write("user", turn, frame.text.strip())

    # agent side

    async def _on_assistant_frame(self, frame: Frame) -> None:
        if isinstance(frame, BotStartedSpeakingFrame):
            self._assistant_turn = _Turn(started_at=utc_now(), parts=self._assistant_text)
            self._assistant_text = []
        elif isinstance(frame, TTSTextFrame):
            text = frame.text if frame.includes_inter_frame_spaces else f"{frame.text} "
            if self._assistant_turn:
                self._assistant_turn.parts.append(text)
            else:
                self._assistant_text.append(text)
        elif isinstance(frame, InterruptionFrame) and self._assistant_turn:
            self._assistant_turn.interrupted = True
        elif isinstance(frame, BotStoppedSpeakingFrame) and self._assistant_turn:
            turn, self._assistant_turn = self._assistant_turn, None
            turn.ended_at = utc_now()
            await self._write("assistant", turn, turn.text)

    async def flush(self) -> None:
        """Write the turns still open (the call is ending)."""
        if self._assistant_turn:
            turn, self._assistant_turn = self._assistant_turn, None
            turn.interrupted = True
            await self._write("assistant", turn, turn.text)
        pending = list(self._awaiting_transcript) + ([self._user_turn] if self._user_turn else [])
        self._awaiting_transcript.clear()
        self._user_turn = None
        for turn in pending:
            await self._write("user", turn, "[caller spoke, no transcript]")


class _UserTurnTap(FrameProcessor):
    """Forwards every frame; reports caller-turn frames to the logger."""

    def __init__(self, owner: TranscriptLogger, **kwargs):
        super().__init__(**kwargs)
        self._owner = owner

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(
            frame, (UserStartedSpeakingFrame, UserStoppedSpeakingFrame, TranscriptionFrame)
        ):
            await self._owner._on_user_frame(frame)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._owner.flush()
        await self.push_frame(frame, direction)


class _AssistantTurnTap(FrameProcessor):
    """Forwards every frame; reports agent-turn frames to the logger."""

    def __init__(self, owner: TranscriptLogger, **kwargs):
        super().__init__(**kwargs)
        self._owner = owner

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(
            frame,
            (BotStartedSpeakingFrame, BotStoppedSpeakingFrame, TTSTextFrame, InterruptionFrame),
        ):
            await self._owner._on_assistant_frame(frame)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._owner.flush()
        await self.push_frame(frame, direction)
