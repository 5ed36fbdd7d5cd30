"""Low-delay telephone-band resampling between Twilio's 8 kHz and the model's rates.

Pipecat's stock path resamples with soxr "VHQ" stream resamplers, which hold back
tens of milliseconds of audio in each direction (see ``../shared/ANCHORS.md``). A
phone line carries nothing above 4 kHz, so we need far less: a linear-phase FIR,
designed with scipy (Kaiser window), applied as a streaming polyphase filter.

Filter (the same specification for every supported rate pair):

- passband 0-3400 Hz (the telephone band), ripple under 0.01 dB;
- stopband from 4000 Hz (the Nyquist frequency of 8 kHz), at least 60 dB down;
- delay: the filter's group delay, (taps - 1) / 2 samples at the higher rate,
  about 3.0 ms. Nothing else is held back: every call returns exactly
  ``len(input) * out_rate / in_rate`` samples.

Only integer ratios are supported (8 kHz to and from 16, 24 or 48 kHz), which
covers Twilio and both speech-to-speech providers.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import firwin, kaiserord

from pipecat.frames.frames import AudioRawFrame, Frame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = [
    "PASSBAND_HZ",
    "STOPBAND_HZ",
    "STOPBAND_ATTENUATION_DB",
    "StreamResampler",
    "AudioResamplerProcessor",
]

#: Upper edge of the passband: the top of the telephone band (ITU-T G.712).
PASSBAND_HZ = 3400.0
#: Lower edge of the stopband: the Nyquist frequency of Twilio's 8 kHz audio.
STOPBAND_HZ = 4000.0
#: Attenuation the filter is designed for in the stopband, in dB.
STOPBAND_ATTENUATION_DB = 60.0

_filter_cache: dict[int, np.ndarray] = {}


def _design(high_rate: int) -> np.ndarray:
    """Design (once per rate) the anti-alias / anti-image FIR at ``high_rate`` Hz."""
    taps = _filter_cache.get(high_rate)
    if taps is None:
        nyquist = high_rate / 2
        numtaps, beta = kaiserord(STOPBAND_ATTENUATION_DB, (STOPBAND_HZ - PASSBAND_HZ) / nyquist)
        numtaps |= 1  # odd length: an integer group delay
        cutoff = (PASSBAND_HZ + STOPBAND_HZ) / 2
        taps = firwin(numtaps, cutoff, window=("kaiser", beta), fs=high_rate)
        _filter_cache[high_rate] = taps
    return taps


class StreamResampler:
    """Streaming integer-ratio resampler for 16-bit mono PCM with ~3 ms delay.

    Keeps the last few input samples between calls, so a stream cut into frames of
    any size (Twilio's 20 ms, the model's 40-100 ms deltas) comes out exactly as if
    it had been resampled whole.

    Args:
        in_rate: Input sample rate in Hz.
        out_rate: Output sample rate in Hz. One of the rates must be an integer
            multiple of the other.

    Raises:
        ValueError: If the ratio is not an integer, or a rate is not positive.
    """

    def __init__(self, in_rate: int, out_rate: int):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        high, low = max(in_rate, out_rate), min(in_rate, out_rate)
        if high % low:
            raise ValueError(f"only integer ratios are supported, got {in_rate} -> {out_rate} Hz")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._factor = high // low
        self._up = out_rate > in_rate
        taps = _design(high) if self._factor > 1 else np.ones(1)
        if self._up:
            # Polyphase: output phase p uses taps p, p+L, p+2L ... on the input samples.
            # Gain L restores the level lost to zero-stuffing.
            length = -(-len(taps) // self._factor) * self._factor
            padded = np.zeros(length)
            padded[: len(taps)] = taps * self._factor
            self._phases = padded.reshape(-1, self._factor).T[:, ::-1].copy()
            self._history = np.zeros(self._phases.shape[1] - 1)
        else:
            self._taps = taps[::-1].copy()
            self._history = np.zeros(len(taps) - 1)
            self._offset = 0  # input samples to skip before the next kept output
        self._delay_samples = (len(taps) - 1) / 2

    @property
    def delay_ms(self) -> float:
        """Group delay of the filter, in milliseconds (constant at all frequencies)."""
        return self._delay_samples / max(self.in_rate, self.out_rate) * 1000

    def reset(self) -> None:
        """Forget the stream's history (e.g. after a barge-in dropped the audio)."""
        self._history[:] = 0
        if not self._up:
            self._offset = 0

    def process_float(self, pcm: bytes) -> np.ndarray:
        """Like :meth:`process`, but the samples as float64 at full scale 32768, unrounded.

        For a consumer that wants floats anyway (Silero VAD): skips the round trip
        through 16-bit PCM.
        """
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if self._factor == 1 or not len(x):
            return x
        signal = np.concatenate((self._history, x))
        self._history = signal[len(signal) - len(self._history) :]
        # np.correlate is one C loop per phase: about half the time of a strided
        # window view and a matrix product on 20 ms frames (same results to 1e-11).
        if self._up:
            out = np.empty((len(x), self._factor))
            for p, phase in enumerate(self._phases):
                out[:, p] = np.correlate(signal, phase, "valid")
            return out.reshape(-1)
        kept = np.correlate(signal, self._taps, "valid")[self._offset :: self._factor]
        self._offset = (self._offset - len(x)) % self._factor
        return kept

    def process(self, pcm: bytes) -> bytes:
        """Resample the next piece of the stream.

        Args:
            pcm: Little-endian signed 16-bit mono PCM at ``in_rate``.

        Returns:
            16-bit PCM at ``out_rate``: ``len(pcm) * out_rate / in_rate`` bytes when
            downsampling a whole number of periods, otherwise the samples whose
            position falls in this piece (the total over a stream is exact).
        """
        if self._factor == 1:
            return pcm
        y = self.process_float(pcm)
        return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


class AudioResamplerProcessor(FrameProcessor):
    """Resamples one kind of audio frame to a fixed rate, in place, with ~3 ms delay.

    Placed in a pipeline so that every resampling on the call path is ours: e.g.
    caller audio 8 kHz -> 24 kHz before the speech-to-speech service (whose own
    resampler is then skipped because the rate already matches), and the model's
    24 kHz audio -> 8 kHz before the output transport (whose own resampler is then
    skipped because the rate matches ``audio_out_sample_rate``).

    Frames of other types, and frames already at ``sample_rate``, pass through
    untouched. One :class:`StreamResampler` is kept per input rate.

    Args:
        sample_rate: Output sample rate in Hz.
        frame_type: The audio frame class to convert (e.g. ``InputAudioRawFrame``
            or ``OutputAudioRawFrame``); subclasses are converted too.
        **kwargs: Passed to :class:`FrameProcessor`.
    """

    def __init__(self, sample_rate: int, frame_type: type[AudioRawFrame], **kwargs):
        super().__init__(**kwargs)
        self._sample_rate = sample_rate
        self._frame_type = frame_type
        self._resamplers: dict[int, StreamResampler] = {}

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Convert matching audio frames, forward everything.

        Args:
            frame: The frame to process.
            direction: The direction of frame flow.
        """
        await super().process_frame(frame, direction)
        if isinstance(frame, self._frame_type) and frame.sample_rate != self._sample_rate:
            resampler = self._resamplers.get(frame.sample_rate)
            if resampler is None:
                resampler = StreamResampler(frame.sample_rate, self._sample_rate)
                self._resamplers[frame.sample_rate] = resampler
            frame.audio = resampler.process(frame.audio)
            frame.sample_rate = self._sample_rate
            frame.num_frames = len(frame.audio) // 2
        await self.push_frame(frame, direction)
