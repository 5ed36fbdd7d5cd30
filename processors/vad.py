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
"""

from __future__ import annotations

import threading
from importlib import resources

import numpy as np
import onnxruntime

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

from processors.resampler import StreamResampler

__all__ = ["PhoneSileroVADAnalyzer", "shared_silero_session"]

_MODEL_RATE = 16000  # Hz
_MODEL_WINDOW = 512  # samples at 16 kHz: 32 ms, Silero's window at that rate

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


class PhoneSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD whose 16 kHz model runs on 8 kHz (or 16 kHz) input.

    Args:
        sample_rate: The input rate in Hz (8000 or 16000), or None to be set later.
        params: VAD thresholds and timings.
    """

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        # SileroVADAnalyzer.__init__ would load a session of its own: take the shared one.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _CallSileroState(shared_silero_session())
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._upsampler: StreamResampler | None = None

    async def analyze_audio(self, buffer: bytes) -> VADState:
        """Score ``buffer`` (16-bit PCM at the input rate) on the event loop.

        Args:
            buffer: Audio to analyze, any length (windows are cut by Pipecat's logic).

        Returns:
            The VAD state after this audio.
        """
        return self._run_analyzer(buffer)

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

        Args:
            buffer: 16-bit PCM at the input rate, :meth:`num_frames_required` samples.

        Returns:
            Confidence between 0.0 and 1.0 (0 on a malformed window, logged by Pipecat).
        """
        if self._upsampler is not None:
            audio = (self._upsampler.process_float(bytes(buffer)) / 32768.0).astype(np.float32)
        else:
            audio = np.frombuffer(buffer, np.int16).astype(np.float32) / 32768.0
        if len(audio) != _MODEL_WINDOW:
            return 0.0
        confidence = self._model(audio, _MODEL_RATE)[0]
        self._maybe_reset_model(confidence.item())
        return confidence
