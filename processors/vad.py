"""Silero VAD for phone audio: the 16 kHz model, fed 8 kHz audio upsampled with ~3 ms delay.

Silero's 8 kHz model is slow to trust some phone speech: on the drawn-out "aaask" of
``jfk_8k.wav`` it stays below 0.35 confidence for 300 ms of loud speech, while the
16 kHz model, given the same audio upsampled by our low-delay resampler, passes 0.9
within one 32 ms window (see ``tests/test_vad.py``). A late start delays barge-in by
the same amount, so calls use the 16 kHz model.

The analyzer keeps the pipeline's 8 kHz rate for everything Pipecat computes (window
counts, start and stop times, volume); only the model sees 16 kHz. It is Pipecat's
:class:`~pipecat.audio.vad.silero.SileroVADAnalyzer` (its ONNX model ships in the
pipecat wheel) with the upsampling in front of the model.

Many calls, one model: Pipecat's analyzer loads its own ONNX session (about 2 MB of
weights plus the runtime's arenas) and scores windows on a thread of its own for every
call. Here every call of the process shares one :class:`onnxruntime.InferenceSession`
and keeps only its own recurrent state (the ``state`` tensor and the 64-sample
context), and windows are scored on the event loop, with no thread hop: a window costs
about 0.1 ms of model and 0.03 ms of upsampling, less than handing it to a thread and
back. With a two-thread pool instead, the pool threads and the event loop fought over
the GIL: at 10 calls the server used 0.084 core per call against 0.071 inline, and the
caller's audio reached the model 23-52 ms late (p95) against 5 ms (``bench/density.py``,
two runs each).

Many calls, one run: most of an ONNX run of this small model is fixed overhead, so the
calls of a process also share runs (:class:`SileroBatcher`): a window waits up to
10 ms for the other calls' windows. At 12 calls in one process (three runs each way,
``bench/density.py``) the server used 0.066 core per call against 0.075, with 5 windows
per run; at 20 calls, which saturate a core either way, the caller's audio reached the
model 27-48 ms late (p50) against 2.6 s.

Quiet callers: Silero's confidence falls with the level. ``jfk_8k.wav`` scaled to
-35 dBFS (a quiet handset; the recording's own speech peaks near -8 dBFS) scores
0.01-0.12 on "ask not what your country can do for you", which never starts a turn,
so the agent never answers it. So each window is raised towards a speech peak of
:data:`TARGET_PEAK_DBFS` before the model scores it (:class:`LevelNormalizer`); Pipecat
still computes the volume, and the caller's audio to the model is untouched. The
gain is capped so the line's noise floor stays under :data:`NOISE_CEILING_DBFS` (a
noisy line gets none). Measured over the simulated phone line, three calls of a
-35 dBFS caller with the agent's echo at -20 dB: 2 of 12 utterances went unanswered
without it and none with it.

While the agent's audio plays (and for :data:`ECHO_HOLD_S` after), what the model
hears includes what is left of the agent's echo, and a raised echo is a false
barge-in. So the gain is then at most what the echo canceller allows for each frame
(:meth:`processors.echo.EchoCanceller.headroom_db`): as far as keeps the echo's
measured residue under its ceiling, and nothing where echo may have passed
uncancelled. Such a frame alone does not drop the window's gain, two within five
frames do (:meth:`PhoneSileroVADAnalyzer._window_headroom_db`). Without a canceller
there is no gain while the agent plays.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from importlib import resources

import numpy as np
import onnxruntime

from loguru import logger

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

from processors.echo import energy_dbfs
from processors.resampler import StreamResampler

__all__ = ["LevelNormalizer", "PhoneSileroVADAnalyzer", "SileroBatcher", "shared_silero_session"]

_MODEL_RATE = 16000  # Hz
_MODEL_WINDOW = 512  # samples at 16 kHz: 32 ms, Silero's window at that rate
_MODEL_CONTEXT = 64  # samples at 16 kHz the model prepends from the previous window

#: Longest a window waits for other calls' windows to share its ONNX run, in s.
BATCH_WAIT_S = 0.010
#: Windows at which a run starts without waiting further (beyond 16 the cost per
#: window hardly falls).
MAX_BATCH = 16

#: Speech peak (loudest recent window's RMS, dBFS) a quiet caller is raised towards.
TARGET_PEAK_DBFS = -10.0
#: The line's noise floor is never raised above this, in dBFS.
NOISE_CEILING_DBFS = -40.0
#: How fast the tracked speech peak falls in silence, and the noise floor rises, in dB/s.
PEAK_FALL_DB_PER_S = 2.0
FLOOR_RISE_DB_PER_S = 1.0
#: For this long after the agent's audio stopped playing (its echo's tail), in s, the
#: gain stays at most the echo canceller's headroom, as while it plays.
ECHO_HOLD_S = 0.5
#: Frames (20 ms) over which frames the echo canceller could not vouch for are counted
#: (:meth:`PhoneSileroVADAnalyzer._window_headroom_db`).
ECHO_FRAMES = 5

_lock = threading.Lock()
_session: onnxruntime.InferenceSession | None = None


def shared_silero_session() -> onnxruntime.InferenceSession:
    """The process's one Silero VAD ONNX session (the model shipped in the pipecat wheel).

    Created on first use, on the CPU, one intra-op and one inter-op thread (the same
    options as Pipecat's per-call session).

    Returns:
        The shared session; its ``run()`` may be called from several threads at once.
    """
    global _session
    with _lock:
        if _session is None:
            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            path = resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
            _session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"], sess_options=options
            )
        return _session


class _CallSileroState(SileroOnnxModel):
    """One call's Silero state (``state`` tensor, context) on the shared session."""

    def __init__(self, session: onnxruntime.InferenceSession):  # no super(): no own session
        self.session = session
        self.sample_rates = [8000, 16000]
        self.reset_states()


class SileroBatcher:
    """Scores the Silero windows of many calls in one ONNX run.

    Silero's ONNX graph takes a batch: ``input`` (batch, 64 + 512 samples, float32 at
    16 kHz), ``state`` (2, batch, 128) and ``sr`` (its inputs as listed by
    ``InferenceSession.get_inputs()``). One run costs about 170 µs for one window,
    540 µs for 8 and 940 µs for 16 (one core of the bench machine): per window, 170,
    68 and 59 µs. The scores are the same as one window at a time, to the bit.

    A window handed to :meth:`score` waits for other calls' windows, at most
    ``max_wait_s`` (10 ms), and no longer than until every call seen has one in (a
    lone call is scored at the end of the current loop turn). A call's windows come
    every 32 ms, so the wait holds only the VAD's decision, never the next window:
    the user aggregator forwards the caller's audio to the model before it analyzes
    it. A barge-in or a turn's end can come up to 10 ms later.

    One batcher per event loop (:meth:`for_running_loop`), on the process's shared
    session.

    Args:
        session: The Silero ONNX session.
        max_wait_s: Longest a window waits for others, in s.
    """

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SileroBatcher]" = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, session: onnxruntime.InferenceSession, *, max_wait_s: float = BATCH_WAIT_S):
        self._session = session
        self._max_wait_s = max_wait_s
        self._sr = np.array(_MODEL_RATE, dtype=np.int64)
        self._pending: list[tuple[_CallSileroState, np.ndarray, asyncio.Future]] = []
        self._models: weakref.WeakSet[_CallSileroState] = weakref.WeakSet()  # calls seen
        self._handle: asyncio.Handle | None = None
        self.runs = 0  # ONNX runs so far
        self.windows = 0  # windows scored so far

    @classmethod
    def for_running_loop(cls) -> "SileroBatcher":
        """The running event loop's batcher, created on first use.

        Raises:
            RuntimeError: If no event loop is running.
        """
        loop = asyncio.get_running_loop()
        batcher = cls._by_loop.get(loop)
        if batcher is None:
            batcher = cls._by_loop[loop] = cls(shared_silero_session())
        return batcher

    @classmethod
    def counts(cls) -> tuple[int, int]:
        """The running loop's ONNX runs and windows scored so far; (0, 0) before any.

        Unlike :meth:`for_running_loop`, creates no batcher (nor loads the model).
        """
        batcher = cls._by_loop.get(asyncio.get_running_loop())
        return (batcher.runs, batcher.windows) if batcher else (0, 0)

    @classmethod
    def forget(cls, model: _CallSileroState) -> None:
        """Stop waiting for ``model``'s windows: its call has ended.

        Args:
            model: The ended call's Silero state.
        """
        for batcher in list(cls._by_loop.values()):
            batcher._models.discard(model)

    def score(self, model: _CallSileroState, window: np.ndarray) -> asyncio.Future:
        """Queue one call's window for the next run.

        Args:
            model: The call's Silero state; the run advances it by this window.
            window: 512 float32 samples at 16 kHz, in -1..1.

        Returns:
            A future of the window's speech confidence (0.0-1.0); it raises what the
            ONNX run raised, if it failed.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((model, window, future))
        self._models.add(model)
        if len(self._pending) >= min(len(self._models), MAX_BATCH):  # everyone is in
            if self._handle is not None:
                self._handle.cancel()
            self._handle = loop.call_soon(self._run)
        elif self._handle is None:
            self._handle = loop.call_later(self._max_wait_s, self._run)
        return future

    def _run(self) -> None:
        """Score every queued window in one ONNX run, and advance each call's state."""
        self._handle = None
        batch, self._pending = self._pending, []
        # A call has at most one window here: analyze_audio() awaits each before the next.
        inputs = np.zeros((len(batch), _MODEL_CONTEXT + _MODEL_WINDOW), dtype=np.float32)
        for i, (model, window, _) in enumerate(batch):
            if model._context.size:  # empty after a reset: the context is silence
                inputs[i, :_MODEL_CONTEXT] = model._context[0]
            inputs[i, _MODEL_CONTEXT:] = window
        states = np.concatenate([m._state for m, _, _ in batch], axis=1)
        try:
            confidences, new_states = self._session.run(None, {"input": inputs, "state": states, "sr": self._sr})
        except Exception as e:  # a failed run fails its windows, not the loop
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.runs += 1
        self.windows += len(batch)
        for i, (model, _, future) in enumerate(batch):
            model._state = new_states[:, i : i + 1].copy()
            model._context = inputs[i : i + 1, -_MODEL_CONTEXT:].copy()
            model._last_sr, model._last_batch_size = _MODEL_RATE, 1
            if not future.done():  # its call may have ended meanwhile
                future.set_result(float(confidences[i, 0]))


class LevelNormalizer:
    """Gain for the model's view of a quiet caller, one window at a time.

    Tracks two levels of the caller's line, from each window's RMS in dBFS: the speech
    peak (jumps up to a louder window, falls :data:`PEAK_FALL_DB_PER_S` in silence) and
    the noise floor (drops to a quieter window, rises :data:`FLOOR_RISE_DB_PER_S`). The
    gain lifts the peak to :data:`TARGET_PEAK_DBFS`, at most ``max_gain_db`` and at most
    what keeps the floor under :data:`NOISE_CEILING_DBFS`; never below 0 dB. Both
    levels start at the target and the ceiling, so a call starts with no gain.

    Args:
        max_gain_db: The most the gain may be, in dB (0 turns it off).
        window_s: Duration of one window, in s (32 ms for Silero).
        agent_playing: Whether the agent's audio is playing at the caller (the call's
            playout tracker); the gain is at most the window's echo headroom then and
            for :data:`ECHO_HOLD_S` after (see :meth:`gain`).
    """

    def __init__(self, max_gain_db: float, window_s: float, agent_playing: Callable[[], bool] | None = None):
        self._max_gain_db = max_gain_db
        self._peak_db = TARGET_PEAK_DBFS
        self._floor_db = NOISE_CEILING_DBFS
        self._fall_db = PEAK_FALL_DB_PER_S * window_s
        self._rise_db = FLOOR_RISE_DB_PER_S * window_s
        self._agent_playing = agent_playing
        self._played_at = -math.inf  # time.monotonic() the agent's audio was last seen playing
        self.gain_db = 0.0  # the last window's gain

    def gain(self, window: np.ndarray, echo_headroom_db: float = 0.0) -> float:
        """Track the levels with one window and return its linear gain (1.0: none).

        Args:
            window: The window's samples (int16 scale, any float or int dtype).
            echo_headroom_db: The most the window may be raised while the agent plays,
                in dB: how far the echo canceller's residue allows
                (:meth:`processors.echo.EchoCanceller.headroom_db`); 0: none.
        """
        if self._max_gain_db <= 0:  # turned off: nothing to track
            return 1.0
        samples = window.astype(np.float32, copy=False)
        level_db = energy_dbfs(float(samples @ samples), len(samples))
        self._peak_db = level_db if level_db > self._peak_db else self._peak_db - self._fall_db
        self._floor_db = level_db if level_db < self._floor_db else self._floor_db + self._rise_db
        gain_db = min(TARGET_PEAK_DBFS - self._peak_db, self._max_gain_db, NOISE_CEILING_DBFS - self._floor_db)
        if self._agent_playing is not None:
            now = time.monotonic()
            if self._agent_playing():
                self._played_at = now
            if now - self._played_at < ECHO_HOLD_S:
                gain_db = min(gain_db, echo_headroom_db)
        self.gain_db = max(0.0, gain_db)
        return 10 ** (self.gain_db / 20) if self.gain_db > 0 else 1.0


class PhoneSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD whose 16 kHz model runs on 8 kHz (or 16 kHz) input.

    Args:
        sample_rate: The input rate in Hz (8000 or 16000), or None to be set later.
        params: VAD thresholds and timings.
        max_gain_db: Most a quiet caller is raised for the model, in dB
            (:class:`LevelNormalizer`; 0: never).
        agent_playing: Whether the agent's audio is playing (gain limited then).
        echo_headroom_db: The call's :meth:`processors.echo.EchoCanceller.headroom_db`:
            for the audio of each frame given to :meth:`analyze_audio`, how far it may be
            raised while the agent plays, in dB. None: not at all.
    """

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        max_gain_db: float = 24.0,
        agent_playing: Callable[[], bool] | None = None,
        echo_headroom_db: Callable[[bytes], float] | None = None,
    ):
        # SileroVADAnalyzer.__init__ would load a session of its own: take the shared one.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._levels = LevelNormalizer(max_gain_db, _MODEL_WINDOW / _MODEL_RATE, agent_playing)
        self._model = _CallSileroState(shared_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._upsampler: StreamResampler | None = None
        self._scores: deque[float] = deque()  # confidences of windows batched ahead
        self._echo_headroom_db = echo_headroom_db
        # Echo headroom of the last frames (dB; 0: echo may have passed uncancelled).
        self._frame_headroom: deque[float] = deque(maxlen=ECHO_FRAMES)

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Score ``buffer`` (16-bit PCM at the input rate) with the loop's batcher.

        Each 32 ms window the buffer completes is scored in the batcher's next run,
        with the windows of the process's other calls; then Pipecat's state machine
        (:meth:`_run_analyzer`) runs on those confidences, as it would on its own.

        Args:
            buffer: Audio to analyze, any length (windows are cut by Pipecat's logic).

        Returns:
            The VAD state after this audio.
        """
        if self._echo_headroom_db is not None:
            self._frame_headroom.append(self._echo_headroom_db(buffer))
        size = self._vad_frames_num_bytes
        complete = (len(self._vad_buffer) + len(buffer)) // size
        if complete:
            audio = self._vad_buffer + buffer
            batcher = SileroBatcher.for_running_loop()
            for n in range(complete):
                window = self._model_input(audio[n * size : (n + 1) * size])
                try:
                    score = await batcher.score(self._model, window) if window is not None else 0.0
                except asyncio.CancelledError:  # the call is ending: start afresh, aligned
                    self._scores.clear()
                    self._vad_buffer = b""
                    raise
                except Exception as e:
                    logger.error(f"Silero VAD failed on a window: {e}")
                    score = 0.0
                self._scores.append(score)
        return self._run_analyzer(buffer)

    async def cleanup(self):
        """Release the analyzer; the batcher no longer waits for this call's windows."""
        await super().cleanup()
        SileroBatcher.forget(self._model)

    def set_sample_rate(self, sample_rate: int):
        """Set the input rate (8000 or 16000 Hz).

        Args:
            sample_rate: The rate of the audio the analyzer will be given, in Hz.

        Raises:
            ValueError: If the rate is not 8000 or 16000 Hz.
        """
        super().set_sample_rate(sample_rate)
        rate = self.sample_rate
        self._upsampler = StreamResampler(rate, _MODEL_RATE) if rate != _MODEL_RATE else None

    def num_frames_required(self) -> int:
        """Samples per analysis window at the input rate (32 ms: 256 at 8 kHz)."""
        return _MODEL_WINDOW * self.sample_rate // _MODEL_RATE

    def voice_confidence(self, buffer) -> float:
        """Speech confidence of one 32 ms window, from the 16 kHz model.

        Pipecat's state machine calls this once per window. Within
        :meth:`analyze_audio` the batcher has already scored the window and this
        returns that score; called on its own, it runs the model on this window alone.

        Args:
            buffer: 16-bit PCM at the input rate, :meth:`num_frames_required` samples.

        Returns:
            Confidence between 0.0 and 1.0 (0.0 for a window of the wrong length).
        """
        if self._scores:  # scored by the batcher in analyze_audio()
            confidence = self._scores.popleft()
        else:
            audio = self._model_input(buffer)
            if audio is None:
                return 0.0
            confidence = self._model(audio[None], _MODEL_RATE)[0, 0].item()
        self._maybe_reset_model(confidence)
        return confidence

    def _window_headroom_db(self) -> float:
        """How far the latest window may be raised while the agent plays, in dB.

        The least headroom of the frames it spans (up to three 20 ms frames), leaving
        out one frame without headroom among the last :data:`ECHO_FRAMES`: an echo
        raised for one frame in five cannot keep Silero over its threshold for a
        barge-in's start time (0.3 s), while dropping the gain for that one window
        would restart the start time of a quiet caller talking over the agent. Two
        or more such frames: none.
        """
        recent = list(self._frame_headroom)
        if not recent or sum(1 for h in recent if h <= 0.0) > 1:
            return 0.0
        return min((h for h in recent[-3:] if h > 0.0), default=0.0)

    def _model_input(self, buffer: bytes) -> np.ndarray | None:
        """One window as the model takes it: 512 float32 samples at 16 kHz, or None.

        A quiet caller's window is raised by :class:`LevelNormalizer`'s gain. Called
        once per window, in order (the normalizer tracks the line's levels).

        Args:
            buffer: 16-bit PCM at the input rate, :meth:`num_frames_required` samples.
        """
        raw = bytes(buffer)
        samples = np.frombuffer(raw, np.int16)
        gain = self._levels.gain(samples, self._window_headroom_db())
        if self._upsampler is not None:
            audio = (self._upsampler.process_float(raw) / 32768.0).astype(np.float32)
        else:
            audio = samples.astype(np.float32) / 32768.0
        if len(audio) != _MODEL_WINDOW:
            return None
        if gain != 1.0:  # a quiet caller: raised, clipped to full scale
            audio = np.clip(audio * np.float32(gain), -1.0, 1.0)
        return audio
