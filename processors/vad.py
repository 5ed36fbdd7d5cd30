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
"""

from __future__ import annotations

import numpy as np

from pipecat.audio.vad.silero import SileroVADAnalyzer

from processors.resampler import StreamResampler

__all__ = ["PhoneSileroVADAnalyzer"]

_MODEL_RATE = 16000  # Hz
_MODEL_WINDOW = 512  # samples at 16 kHz: 32 ms, Silero's window at that rate


class PhoneSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD whose 16 kHz model runs on 8 kHz (or 16 kHz) input.

    Args:
        **kwargs: Passed to :class:`SileroVADAnalyzer` (``params``, ``sample_rate``).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._upsampler: StreamResampler | None = None

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
            buffer = self._upsampler.process(bytes(buffer))
        audio = np.frombuffer(buffer, np.int16).astype(np.float32) / 32768.0
        if len(audio) != _MODEL_WINDOW:
            return 0.0
        confidence = self._model(audio, _MODEL_RATE)[0]
        self._maybe_reset_model(confidence.item())
        return confidence
