"""Who decides the caller's turns: Silero VAD on the user aggregator, shared by every graph."""

from __future__ import annotations

from collections.abc import Callable

from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
from pipecat.turns.user_start.vad_user_turn_start_strategy import VADUserTurnStartStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_stop.turn_analyzer_user_turn_stop_strategy import (
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from config import Settings
from processors.vad import PhoneSileroVADAnalyzer

__all__ = ["turn_taking"]


def turn_taking(
    settings: Settings,
    mode: str,
    *,
    wait_for_transcript: bool = False,
    agent_playing: Callable[[], bool] | None = None,
    echo_headroom_db: Callable[[bytes], float] | None = None,
) -> LLMUserAggregatorParams:
    """The user aggregator's parameters for a turn-detection mode (``TURN_DETECTION``).

    - ``local``: Silero VAD; the turn ends after ``USER_TURN_TIMEOUT_SECS`` of silence.
    - ``smart``: Silero VAD; the turn ends when Pipecat's smart-turn model (its ONNX
      ships in the pipecat wheel) judges the caller finished.
    - ``server``: the provider's VAD; the service reports the turns.

    Args:
        settings: Gives the VAD's thresholds (``VAD_*``, ``BARGE_IN_MIN_SECS``) and
            ``USER_TURN_TIMEOUT_SECS``.
        mode: ``local``, ``smart`` or ``server``.
        wait_for_transcript: Whether a turn ends only once its transcript has come
            (a speech-to-text service in the graph: the LLM needs the words);
            speech-to-speech models hear the audio and need not wait.
        agent_playing: Whether the agent's audio is playing (the call's
            ``PlayoutTracker.playing``): Silero's input is raised for a quiet
            caller (``VAD_MAX_GAIN_DB``) then only as far as ``echo_headroom_db``
            allows, so the agent's echo stays low.
        echo_headroom_db: The call's ``EchoCanceller.headroom_db``: how far each
            frame may be raised while the agent plays (None: not at all).

    Returns:
        The parameters of :class:`LLMContextAggregatorPair`'s user aggregator.
    """
    if mode == "server":
        return LLMUserAggregatorParams()
    vad = PhoneSileroVADAnalyzer(
        params=VADParams(
            confidence=settings.VAD_CONFIDENCE,
            start_secs=settings.BARGE_IN_MIN_SECS,
            stop_secs=settings.VAD_STOP_SECS,
            min_volume=settings.VAD_MIN_VOLUME,
        ),
        max_gain_db=settings.VAD_MAX_GAIN_DB,
        agent_playing=agent_playing,
        echo_headroom_db=echo_headroom_db,
    )
    if mode == "smart":
        stop = TurnAnalyzerUserTurnStopStrategy(
            turn_analyzer=LocalSmartTurnAnalyzerV3(), wait_for_transcript=wait_for_transcript
        )
    else:
        stop = SpeechTimeoutUserTurnStopStrategy(
            user_speech_timeout=settings.USER_TURN_TIMEOUT_SECS, wait_for_transcript=wait_for_transcript
        )
    turns = UserTurnStrategies(start=[VADUserTurnStartStrategy()], stop=[stop])
    return LLMUserAggregatorParams(vad_analyzer=vad, user_turn_strategies=turns)
