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
"""

from __future__ import annotations

from google.genai.types import ActivityStart
from loguru import logger

from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService

__all__ = ["ResumingGeminiLiveLLMService"]


class ResumingGeminiLiveLLMService(GeminiLiveLLMService):
    """GeminiLiveLLMService whose caller turn survives a session change."""

    async def _handle_session_ready(self, session):
        await super()._handle_session_ready(session)
        if self._user_is_speaking and self._vad_disabled and self._ready_for_realtime_input:
            logger.info(f"{self}: new session mid-turn: re-opening the caller's activity window")
            try:
                await self._session.send_realtime_input(activity_start=ActivityStart())
                await self._flush_user_audio_preroll()
            except Exception as e:
                await self._handle_send_error(e)
