"""Phone VAD: Silero's 16 kHz model on upsampled 8 kHz audio starts turns sooner."""

import asyncio

import numpy as np
import pytest

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from offline.caller import _scale_speech, load_wav_8k, split_utterances
from processors.g711 import ulaw_decode, ulaw_encode
from processors.vad import NOISE_CEILING_DBFS, PhoneSileroVADAnalyzer, SileroBatcher, shared_silero_session
from tests.support import AUDIO

PARAMS = dict(confidence=0.5, start_secs=0.3, stop_secs=0.2, min_volume=0.5)


def _phone_line(pcm: np.ndarray, lead_s: float = 0.5, noise_dbfs: float | None = None) -> bytes:
    """``lead_s`` of silence, then ``pcm``, through mu-law as Twilio carries it.

    Args:
        pcm: int16 samples at 8 kHz.
        lead_s: Silence before them, in s.
        noise_dbfs: Line noise (white, RMS in dBFS) over all of it; None: none.
    """
    line = np.concatenate([np.zeros(int(8000 * lead_s), dtype=np.int16), pcm]).astype(np.float64)
    if noise_dbfs is not None:
        line += np.random.default_rng(5).standard_normal(len(line)) * 32768 * 10 ** (noise_dbfs / 20)
    return ulaw_decode(ulaw_encode(np.clip(np.rint(line), -32768, 32767).astype("<i2").tobytes()))


def _speech_starts(analyzer, audio: bytes) -> list[float]:
    """Audio times (s) at which the analyzer's state becomes SPEAKING, fed 20 ms frames."""
    analyzer.set_sample_rate(8000)

    async def run():
        starts, before = [], VADState.QUIET
        for i in range(0, len(audio), 320):
            state = await analyzer.analyze_audio(audio[i : i + 320])
            if state == VADState.SPEAKING and before != VADState.SPEAKING:
                starts.append(i / 16000)
            before = state
        return starts

    return asyncio.run(run())


def _speaking_at(analyzer, audio: bytes) -> float | None:
    """Audio time (s) at which the analyzer first reports SPEAKING, fed 20 ms frames."""
    starts = _speech_starts(analyzer, audio)
    return starts[0] if starts else None


@pytest.fixture(scope="module")
def utterances():
    pcm = load_wav_8k(AUDIO / "jfk_8k.wav")
    return [pcm[s:e] for s, e in split_utterances(pcm)]


def test_every_jfk_utterance_starts_within_the_start_time_and_two_windows(utterances):
    for pcm in utterances:
        line = _phone_line(pcm)
        onset = 0.5 + 0.1  # the silence, then the utterance's 100 ms pad
        started = _speaking_at(PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)), line)
        assert started is not None
        assert started - onset <= 0.3 + 0.1


def test_the_16khz_model_beats_the_8khz_one_on_a_drawn_out_word(utterances):
    line = _phone_line(utterances[1])  # "ask not", with its long "aaask"
    phone = _speaking_at(PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)), line)
    stock = _speaking_at(SileroVADAnalyzer(params=VADParams(**PARAMS)), line)
    assert phone is not None
    assert stock is None or stock - phone >= 0.1


def test_noise_and_silence_are_not_speech():
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(8000 * 3) * 32768 * 10 ** (-40 / 20)).astype(np.int16)
    for pcm in (noise, np.zeros(8000 * 3, dtype=np.int16)):
        assert _speaking_at(PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)), _phone_line(pcm)) is None


def test_calls_share_the_model_but_not_its_state_nor_a_thread_each(utterances):
    """Twenty calls scored interleaved hear exactly what each would alone, on few threads."""
    import threading

    speech, silence = _phone_line(utterances[1]), _phone_line(np.zeros(8000 * 2, dtype=np.int16))
    alone = _speaking_at(PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)), speech)
    assert alone is not None
    calls = [PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)) for _ in range(20)]
    lines = [speech if i % 2 == 0 else silence for i in range(20)]
    threads_before = threading.active_count()

    async def interleaved():
        started: list[float | None] = [None] * len(calls)
        for call in calls:
            call.set_sample_rate(8000)
        for i in range(0, len(speech), 320):
            states = await asyncio.gather(
                *(call.analyze_audio(line[i : i + 320]) for call, line in zip(calls, lines))
            )
            for n, state in enumerate(states):
                if state == VADState.SPEAKING and started[n] is None:
                    started[n] = i / 16000
        return started

    started = asyncio.run(interleaved())
    assert started[0::2] == [alone] * 10  # each speaking call, as if it were alone
    assert started[1::2] == [None] * 10  # and the silent ones never speak
    assert threading.active_count() - threads_before <= 2  # no thread per call


def test_calls_scored_together_share_one_model_run(utterances):
    """Windows of several calls, handed in at different moments, go in one ONNX run."""
    lines = [_phone_line(utterances[1]), _phone_line(utterances[2])]
    alone = [_speaking_at(PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)), line) for line in lines]

    async def staggered():
        # A wait long enough that only "every call is in" can start a run early.
        batcher = SileroBatcher(shared_silero_session(), max_wait_s=30)
        SileroBatcher._by_loop[asyncio.get_running_loop()] = batcher
        calls = [PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)) for _ in lines]
        started: list[float | None] = [None, None]

        async def one(n: int, i: int):
            if i >= 3200:  # once the batcher has seen both calls (their first windows, together)
                await asyncio.sleep(0.001 * n)  # the second call's frames come a little later
            if await calls[n].analyze_audio(lines[n][i : i + 320]) == VADState.SPEAKING and started[n] is None:
                started[n] = i / 16000

        for call in calls:
            call.set_sample_rate(8000)
        begun = asyncio.get_running_loop().time()
        for i in range(0, min(map(len, lines)), 320):
            await asyncio.gather(one(0, i), one(1, i))
        return started, batcher, asyncio.get_running_loop().time() - begun

    started, batcher, took = asyncio.run(staggered())
    assert started == alone  # each call decides as if it were alone
    assert batcher.windows == 2 * batcher.runs  # every run held both calls' windows
    assert took < 30  # and none waited for the timer


def test_a_lone_call_is_not_held_for_company(utterances):
    """With one call, a window is scored at the end of the loop turn, not after the wait."""
    line = _phone_line(utterances[1])

    async def turns_per_frame() -> int:
        batcher = SileroBatcher(shared_silero_session(), max_wait_s=1)
        SileroBatcher._by_loop[asyncio.get_running_loop()] = batcher
        call = PhoneSileroVADAnalyzer(params=VADParams(**PARAMS))
        call.set_sample_rate(8000)
        worst = 0
        for i in range(0, 3200, 320):  # 200 ms: six windows
            task = asyncio.ensure_future(call.analyze_audio(line[i : i + 320]))
            turns = 0
            while not task.done():
                await asyncio.sleep(0)
                turns += 1
            worst = max(worst, turns)
        assert batcher.windows > 0
        return worst

    assert asyncio.run(turns_per_frame()) <= 4


def test_a_shared_run_scores_each_window_as_it_would_alone(utterances):
    """The batched scores equal, to the bit, those of the model run on one window at a time."""
    line = _phone_line(utterances[1])
    window = 512  # bytes: 32 ms at 8 kHz
    alone = PhoneSileroVADAnalyzer(params=VADParams(**PARAMS))
    alone.set_sample_rate(8000)
    expected = [alone.voice_confidence(line[i : i + window]) for i in range(0, len(line) - window, window)]

    async def batched() -> list[list[float]]:
        calls = [PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)) for _ in range(3)]
        scores: list[list[float]] = [[] for _ in calls]
        for n, call in enumerate(calls):
            call.set_sample_rate(8000)
            confidence = call.voice_confidence  # record what the state machine is given
            call.voice_confidence = lambda buffer, c=confidence, s=scores[n]: s.append(c(buffer)) or s[-1]
        for i in range(0, len(line) - window, window):
            await asyncio.gather(*(call.analyze_audio(line[i : i + window]) for call in calls))
        assert SileroBatcher.for_running_loop().runs == len(expected)  # three windows per run
        return scores

    assert all(scores == expected for scores in asyncio.run(batched()))


def _quiet_line(seconds_before: float = 4.0) -> tuple[bytes, list[float]]:
    """``jfk_8k.wav`` at -35 dBFS (a quiet handset) on a line with -65 dBFS noise,
    after ``seconds_before`` of that noise alone (the greeting), through mu-law.

    Returns:
        The line's audio and each utterance's start (s, its 100 ms pad included).
    """
    pcm = load_wav_8k(AUDIO / "jfk_8k.wav")
    spans = split_utterances(pcm)
    line = _phone_line(_scale_speech(pcm, spans, -35), lead_s=seconds_before, noise_dbfs=-65)
    return line, [seconds_before + s / 8000 for s, _ in spans]


def test_a_quiet_caller_is_heard():
    """Every utterance of a -35 dBFS caller starts a turn; without the gain one never does."""
    line, onsets = _quiet_line()

    def heard(starts: list[float]) -> list[bool]:
        return [any(onset <= t <= onset + 1.2 for t in starts) for onset in onsets]

    assert all(heard(_speech_starts(PhoneSileroVADAnalyzer(params=VADParams(**PARAMS)), line)))
    unraised = PhoneSileroVADAnalyzer(params=VADParams(**PARAMS), max_gain_db=0)
    assert not all(heard(_speech_starts(unraised, line)))  # "ask not what your country..."


def test_while_the_agent_plays_the_gain_is_what_the_echo_canceller_allows():
    """While the agent's audio plays, each frame is raised at most as far as the echo
    canceller's headroom for it allows: none without a canceller or with no headroom."""
    line, _ = _quiet_line()
    frame = 320  # bytes: 20 ms at 8 kHz, as the transport delivers them

    def gains(analyzer) -> list[float]:
        """The gain of the latest window after each frame, in dB."""
        analyzer.set_sample_rate(8000)

        async def run() -> list[float]:
            seen = []
            for i in range(0, len(line) - frame, frame):
                await analyzer.analyze_audio(line[i : i + frame])
                seen.append(analyzer._levels.gain_db)
            return seen

        return asyncio.run(run())

    def playing(headroom=None) -> PhoneSileroVADAnalyzer:
        """An analyzer while the agent plays; ``headroom(audio)``: the canceller's."""
        return PhoneSileroVADAnalyzer(params=VADParams(**PARAMS), agent_playing=lambda: True,
                                      echo_headroom_db=headroom)

    silent = PhoneSileroVADAnalyzer(params=VADParams(**PARAMS), agent_playing=lambda: False)
    raised = gains(silent)
    assert max(raised) > 12  # a quiet caller, raised when the agent is silent
    assert max(gains(playing())) == 0.0
    assert max(gains(playing(lambda audio: 0.0))) == 0.0
    assert gains(playing(lambda audio: 60.0)) == raised
    capped = gains(playing(lambda audio: 6.0))
    assert max(capped) == 6.0 and capped == [min(g, 6.0) for g in raised]
    # A frame without headroom (echo may have passed uncancelled) alone does not
    # drop the gain; two within five frames hold the windows they touch at 0 dB.
    k = next(i for i, gain in enumerate(raised) if i > 300 and gain > 12)
    first, second = line[k * frame : (k + 1) * frame], line[(k + 1) * frame : (k + 2) * frame]
    assert gains(playing(lambda audio: 0.0 if audio == first else 60.0)) == raised
    two = gains(playing(lambda audio: 0.0 if audio in (first, second) else 60.0))
    assert 0.0 in two[k : k + 3]
    assert two[: k + 1] == raised[: k + 1] and two[k + 7 :] == raised[k + 7 :]


def test_line_noise_is_not_raised_into_speech():
    """A quiet line's noise gets gain only up to the noise ceiling, and is never speech."""
    for level_dbfs in (-65.0, -45.0):
        line = _phone_line(np.zeros(8000 * 12, dtype=np.int16), noise_dbfs=level_dbfs)
        analyzer = PhoneSileroVADAnalyzer(params=VADParams(**PARAMS))
        assert _speech_starts(analyzer, line) == []
        assert 0 < analyzer._levels.gain_db <= NOISE_CEILING_DBFS - level_dbfs + 1  # raised, capped
