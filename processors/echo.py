"""Echo canceller: the agent's own voice leaking back from the phone is not a barge-in.

Phones and hybrids leak the far end's audio back into the caller's microphone path,
typically 20 dB or more down. A quiet caller can be no louder than that echo, so a
level threshold cannot tell them apart; the shape can. We know exactly what we sent
(:class:`~processors.barge_in.PlayoutTracker` keeps each reply's audio) and roughly
where Twilio's playout is (mark echoes). For each 20 ms caller frame we search the reply's audio around that
position for the best match of the last 60 ms of caller audio (normalised
cross-correlation, computed with scipy's FFT): the echo path's delay.
The echo path's gain is learned only from stretches that are echo alone (a very
strong match) and held while the caller talks, when a per-frame estimate would be
biased by their voice. Whenever the echo is present, its estimate (reference at the
matched delay times the held gain) is subtracted and the residual passed on. Once
found, the delay is tracked: the next frame searches only 40 ms either side of it (a
full search costs about 0.25 ms per 20 ms frame, a tracked one a fraction of that). What
remains is the caller's own voice, if any, so a caller talking over the agent still
barges in, while pure echo leaves near silence for the VAD.

This is a one-tap canceller with a delay search: it removes linear echo with a flat
path (a gain and a delay), as the simulated caller produces and as digital phone
networks mostly do. Dispersive analogue hybrids would need an adaptive multi-tap
filter; that is out of scope here.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft

from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from processors.barge_in import PlayoutTracker

__all__ = ["EchoCanceller"]


def _correlate_valid(ref: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Cross-correlation of ``window`` at every offset inside ``ref`` (FFT, "valid" part).

    Returns:
        ``len(ref) - len(window) + 1`` values: element k is ``ref[k:k+len(window)] @ window``.
    """
    n = next_fast_len(len(ref) + len(window) - 1, real=True)
    spectrum = rfft(ref, n) * rfft(window[::-1], n)
    return irfft(spectrum, n)[len(window) - 1 : len(ref)]


class EchoCanceller(FrameProcessor):
    """Removes the agent's own echo from the caller's audio while the agent plays.

    Place it right after the input transport, before the VAD. Frames pass untouched
    when no reply is playing.

    Args:
        playout: The call's playout tracker (the echo reference and play position).
        search_back_ms: How far behind the estimated play position to look, in ms
            (network and echo-path delay).
        search_ahead_ms: How far ahead of it to look, in ms (estimate error).
        echo_only_threshold: Normalised cross-correlation above which the caller's
            audio is taken to be echo alone (the gain is learned there).
        presence_threshold: Correlation above which echo is present and subtracted.
        track_ms: Once echo is found, the next frame searches only this far (ms)
            either side of where it was; a frame without a match searches in full.
        **kwargs: Passed to :class:`FrameProcessor`.
    """

    def __init__(
        self,
        playout: PlayoutTracker,
        *,
        search_back_ms: int = 500,
        search_ahead_ms: int = 200,
        echo_only_threshold: float = 0.85,
        presence_threshold: float = 0.3,
        track_ms: int = 40,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._playout = playout
        self._back_ms = search_back_ms
        self._ahead_ms = search_ahead_ms
        self._echo_only = echo_only_threshold
        self._presence = presence_threshold
        self._history = b""  # the caller's two frames before this one, raw, for the 60 ms match
        self._gain: float | None = None  # echo path gain, learned from echo-only stretches
        self._track: int | None = None  # reply sample where the last match began
        self._track_reply = None  # the reply that match is in
        self._track_ms = track_ms
        self.frames_cancelled = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Cancel echo in caller audio frames; forward everything.

        Args:
            frame: The frame to process.
            direction: The direction of frame flow.
        """
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            residual = self._cancel(frame)
            if residual is not None:
                frame.audio = residual
                self.frames_cancelled += 1
        await self.push_frame(frame, direction)

    def _cancel(self, frame: InputAudioRawFrame) -> bytes | None:
        # Cheap when no reply plays (most frames of a call): keep the raw bytes only.
        audio = frame.audio
        recent = self._history + audio
        self._history = recent[-2 * len(audio) :]
        reply = self._playout.reply
        if reply is None or reply.sample_rate != frame.sample_rate or not reply.sent_ms:
            return None
        if reply.ended_at is not None and not reply.playing:
            return None  # finished playing; its echo tail is at most the search window
        x = np.frombuffer(audio, dtype="<i2").astype(np.float64)
        window = np.frombuffer(recent[-3 * len(audio) :], dtype="<i2").astype(np.float64)  # 60 ms
        energy = float(window @ window)
        if energy < len(window):  # digital silence
            return None
        rate = frame.sample_rate / 1000
        if self._track_reply is not reply:
            self._track_reply, self._track = reply, None
        if self._track is not None:
            # The echo path's delay barely moves between frames: search around the
            # last match, moved on by this frame (a tenth of the full search's work).
            expected = self._track + len(x)
            slack = int(self._track_ms * rate)
            start = max(0, expected - slack)
            end = min(len(reply.audio) // 2, expected + slack + len(window))
        else:
            position = reply.play_position_ms()
            start = max(0, int((position - self._back_ms) * rate))
            end = min(len(reply.audio) // 2, int((position + self._ahead_ms) * rate) + len(window))
        if end - start < len(window):
            return None
        ref = np.frombuffer(reply.audio, dtype="<i2", count=end - start, offset=2 * start)
        ref = ref.astype(np.float64)
        corr = _correlate_valid(ref, window)
        cumulative = np.concatenate(([0.0], np.cumsum(ref * ref)))
        ref_energy = cumulative[len(window) :] - cumulative[: -len(window)]
        ncc = corr / np.sqrt(np.maximum(ref_energy, 1.0) * energy)
        best = int(np.argmax(ncc))
        self._track = start + best if ncc[best] >= self._presence else None
        if ncc[best] >= self._echo_only:
            gain = corr[best] / max(ref_energy[best], 1.0)
            self._gain = gain if self._gain is None else 0.7 * self._gain + 0.3 * gain
        if self._gain is None or ncc[best] < self._presence:
            return None
        echo = ref[best + len(window) - len(x) : best + len(window)] * self._gain
        residual = np.clip(np.rint(x - echo), -32768, 32767)
        return residual.astype("<i2").tobytes()
