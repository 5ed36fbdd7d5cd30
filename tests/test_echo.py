"""The echo canceller over a simulated phone line: the agent's voice leaking back.

The agent's reply (real speech) goes through the real playout tracker; the caller's
line carries it back 100 ms later, 20 dB down and through G.711 mu-law as the phone
network would. What the canceller passes on, and how far it lets the VAD raise a
quiet caller while the agent plays (its headroom), is what a caller would notice:
too little and a quiet caller cannot interrupt, too much and the agent's own echo
interrupts it.
"""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.tests.utils import SleepFrame, run_test

from offline.caller import frame_dbfs, load_wav_8k
from processors.barge_in import PlayoutTracker
from processors.echo import RESIDUE_CEILING_DBFS, EchoCanceller
from processors.g711 import ulaw_decode, ulaw_encode
from tests.support import AUDIO

FRAME = 160  # samples: 20 ms at 8000 Hz
DELAY = 800  # samples: the echo path's 100 ms


def _dbfs(pcm: bytes) -> float:
    return frame_dbfs(np.frombuffer(pcm, np.int16))


def _mu_law(pcm: np.ndarray) -> np.ndarray:
    return np.frombuffer(ulaw_decode(ulaw_encode(pcm.astype(np.int16).tobytes())), np.int16)


async def _line(
    echo_of: np.ndarray, caller: np.ndarray | None = None, **kwargs
) -> tuple[EchoCanceller, list[bytes]]:
    """The agent says 3 s of jfk_8k.wav; the caller's line carries ``echo_of`` back.

    Args:
        echo_of: What the line's echo is of (the reply, or something else).
        caller: The caller's own voice on the line (mixed with the echo), if any.
        **kwargs: Passed to :class:`EchoCanceller`.

    Returns:
        The canceller and the audio of each caller frame it passed on.
    """
    speech = load_wav_8k(AUDIO / "jfk_8k.wav")[: 8000 * 3]
    tracker = PlayoutTracker("MZ1")
    canceller = EchoCanceller(tracker, **kwargs)
    delayed = np.concatenate([np.zeros(DELAY, np.int16), echo_of])[: len(speech)]
    line = np.rint(delayed.astype(np.float64) * 0.1)  # -20 dB
    if caller is not None:
        line += caller
    heard = _mu_law(np.clip(line, -32768, 32767))
    mark = {"event": "mark", "streamSid": "MZ1", "mark": {"name": "r1:0"}}
    frames = [TTSStartedFrame(), TTSAudioRawFrame(speech.tobytes(), 8000, 1), SleepFrame(sleep=0.05),
              InputTransportMessageFrame(message=mark), SleepFrame(sleep=0.05)]
    frames += [InputAudioRawFrame(heard[i : i + FRAME].tobytes(), 8000, 1) for i in range(0, len(heard), FRAME)]
    down, _ = await run_test(Pipeline([canceller, tracker]), frames_to_send=frames)
    return canceller, [f.audio for f in down if isinstance(f, InputAudioRawFrame)]


@pytest.mark.asyncio
async def test_the_agents_own_echo_is_cancelled_and_only_its_residue_may_be_raised():
    speech = load_wav_8k(AUDIO / "jfk_8k.wav")[: 8000 * 3]
    canceller, passed = await _line(speech)
    # After the first second the echo is cancelled: what is left of it is mu-law's grain.
    after_first_second = b"".join(passed[50:])
    echo = np.rint(speech[8000 - DELAY : -DELAY] * 0.1).astype(np.int16).tobytes()
    assert _dbfs(after_first_second) < _dbfs(echo) - 25
    # So a quiet caller talking over the agent may be raised for the VAD, but only as
    # far as keeps that residue under the ceiling.
    headroom = canceller.headroom_db(passed[-1])
    assert 0 < headroom <= RESIDUE_CEILING_DBFS - _dbfs(passed[-1]) + 6
    # Audio the canceller did not pass on is never raised.
    assert canceller.headroom_db(bytes(bytearray(passed[-1]))) == 0.0  # an equal copy


@pytest.mark.asyncio
async def test_echo_it_cannot_match_is_never_raised():
    # The line carries back other speech than the reply (a path no one-tap canceller
    # models): nothing is cancelled, and the VAD may not raise any of it.
    other = load_wav_8k(AUDIO / "silero_test_8k.wav")[8000 * 5 : 8000 * 8]
    canceller, passed = await _line(other)
    assert canceller.frames_cancelled == 0
    assert all(canceller.headroom_db(audio) == 0.0 for audio in passed[-50:])


