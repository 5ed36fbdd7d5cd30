"""Gemini Live that keeps the caller's turn across a session resumption.

Gemini Live sessions are time-limited: the server sends ``goAway`` and closes, and
Pipecat's :class:`~pipecat.services.google.gemini_live.llm.GeminiLiveLLMService`
reconnects with its session resumption handle (ai.google.dev/api/live, "session
resumption"). With local VAD driving turns (automatic activity detection disabled),
the caller's turn is delimited by ``activityStart`` / ``activityEnd``; if the session
changes while the caller is talking, the new session never saw the ``activityStart``,
so the rest of the turn and its ``activityEnd`` fall outside any activity window and
the turn goes unanswered. This subclass re-opens the window on the new session
(``activityStart`` plus the recent audio Pipecat keeps as pre-roll) when the caller is
mid-turn, so a session limit costs the caller nothing.

It also drops what is left of a reply the caller cut off. At a barge-in Pipecat stops
the reply locally and sends ``activityStart``; the model stops when that reaches it,
and says so with ``serverContent.interrupted``. The reply's audio sent before then is
still on its way, and Pipecat took its first chunk for the start of a new reply: a
piece of what the caller had just interrupted reached Twilio after its ``clear``, and
the server's ``interrupted`` then interrupted the caller's own turn, which went
unanswered. Here the cut-off reply's ``modelTurn`` and output transcription are
dropped until the server's ``interrupted`` or ``turnComplete`` closes it, or the
caller's turn ends.
Source: ai.google.dev/api/live (``BidiGenerateContentServerContent``: ``interrupted``,
``turnComplete``; ``ActivityHandling.START_OF_ACTIVITY_INTERRUPTS``, the default).
"""

from __future__ import annotations

from google.genai.types import ActivityStart
from loguru import logger

from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService

from processors.barge_in import log_late_drop

__all__ = ["ResumingGeminiLiveLLMService"]


class ResumingGeminiLiveLLMService(GeminiLiveLLMService):
    """GeminiLiveLLMService whose caller turn survives a session change.

    And which drops the rest of a reply a barge-in cut off (see the module docstring).
    """

    def __init__(self, *args, **kwargs):
        """Same arguments as ``GeminiLiveLLMService``."""
        super().__init__(*args, **kwargs)
        self._turn_open = False  # this session's model turn has begun and not closed
        self._cut_off_turn = False  # the model's turn was interrupted here, not yet there
        self._late_parts_dropped = 0  # for the log

    def _forget_turn(self) -> None:
        """No model turn is open any more: the server closed it, the caller's turn is
        over, or a new session began."""
        self._turn_open = self._cut_off_turn = False

    async def _handle_interruption(self):
        if self._turn_open:
            self._cut_off_turn = True
        await super()._handle_interruption()

    async def _handle_user_stopped_speaking(self, frame):
        # The caller's turn is over (activityEnd): what comes next answers it. What was in
        # flight at the barge-in has long arrived (a turn lasts BARGE_IN_MIN_SECS and more).
        self._forget_turn()
        await super()._handle_user_stopped_speaking(frame)

    async def _handle_server_message(self, message):
        content = message.server_content
        closes_turn = bool(content and (content.interrupted or content.turn_complete))
        await super()._handle_server_message(message)
        if closes_turn:
            self._forget_turn()

    def _is_late(self) -> bool:
        if not self._cut_off_turn:
            return False
        self._late_parts_dropped += 1
        log_late_drop(self, self._late_parts_dropped)
        return True

    async def _handle_msg_model_turn(self, message):
        if not self._is_late():
            self._turn_open = True
            await super()._handle_msg_model_turn(message)

    async def _handle_msg_output_transcription(self, message):
        if not self._is_late():
            await super()._handle_msg_output_transcription(message)

    async def _handle_session_ready(self, session):
        self._forget_turn()  # a new session: nothing of the old one will arrive
        await super()._handle_session_ready(session)
        if self._user_is_speaking and self._vad_disabled and self._ready_for_realtime_input:
            logger.info(f"{self}: new session mid-turn: re-opening the caller's activity window")
            try:
                await self._session.send_realtime_input(activity_start=ActivityStart())
                await self._flush_user_audio_preroll()
            except Exception as e:
                await self._handle_send_error(e)
