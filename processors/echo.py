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

Once a reply has finished or been cut off, only what was played of it can still echo
back, and only for the search window after its end: the search looks no further
than that, and after it the line holds no echo of the reply.

When the caller talks over the echo, their voice can hide the echo from the search
(no match): the echo path has not moved, so the echo is still subtracted at the
delay of the last echo-only match, for up to a second after it, wherever that lowers
the frame's energy (it would raise it if the echo were not there).

The canceller also says, for each frame it passes on, how far a quiet caller's audio
may be raised for the VAD while the agent plays (:meth:`EchoCanceller.headroom_db`):
what is left of the echo after cancelling (its residue, measured where the match is
near perfect) may be raised up to :data:`RESIDUE_CEILING_DBFS`; a frame in which
echo may have passed uncancelled (no match, the path not learned yet, the reply's
end) may not be raised, unless the caller's voice is well above any echo the reply
could make there.

This is a one-tap canceller with a delay search: it removes linear echo with a flat
path (a gain and a delay), as the simulated caller produces and as digital phone
networks mostly do. Dispersive analogue hybrids would need an adaptive multi-tap
filter; that is out of scope here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft

from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from processors.barge_in import MARK_MS, PlayoutTracker

__all__ = ["EchoCanceller", "RESIDUE_CEILING_DBFS", "energy_dbfs"]

#: The agent's echo residue is never raised above this for the VAD, in dBFS: the same
#: ceiling as the line's noise (:data:`processors.vad.NOISE_CEILING_DBFS`). Silero
#: scores a -35 dBFS caller at 0.01-0.12 on some phrases; the residue raised to this
#: level has not started a turn in the simulated calls (tests/test_barge_in_e2e.py).
RESIDUE_CEILING_DBFS = -40.0
#: Normalised cross-correlation above which what is left after cancelling is taken to
#: be the echo's residue alone (at most 1% of the frame's energy, -20 dB): stricter
#: than learning the gain, so a caller starting to talk is not mistaken for residue.
RESIDUE_NCC = 0.995
#: How fast the tracked residue level falls, in dB per second of caller audio.
RESIDUE_FALL_DB_PER_S = 2.0
#: A frame whose 60 ms energy is this many times the loudest echo the reply could
#: make there (3 dB) is the caller's own voice, whether or not echo is matched in it.
CALLER_OVER_ECHO = 2.0
#: Frames whose headroom the canceller remembers for :meth:`EchoCanceller.headroom_db`.
HEADROOM_FRAMES = 50


def energy_dbfs(energy: float, samples: int) -> float:
    """RMS level of 16-bit audio with sum of squares ``energy`` over ``samples``, in dBFS.

    Silence gives -120 dBFS, not -inf (the levels are compared and tracked).
    """
    return 10 * math.log10(energy / max(1, samples) / 32768**2 + 1e-12)


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
        hold_ms: While the caller talks over the echo and no match is found, the
            echo is still cancelled at the delay of the last echo-only match, for up
            to this long after it (ms).
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
        hold_ms: int = 1000,
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
        self._hold_ms = hold_ms
        # Where this frame's window would match at the delay of the last echo-only
        # match, and how long ago (samples) that match was.
        self._held: int | None = None
        self._held_for = 0
        self._residue_db: float | None = None  # peak level of the echo's residue, dBFS
        self._ended = None  # the last reply seen finished or cut off
        self._tail = 0  # samples of caller audio its echo may still come back in
        # The headroom of the last frames passed on, keyed by their audio object's id
        # (the audio objects are kept, so an id is not reused while it is a key).
        self._headroom: dict[int, tuple[bytes, float]] = {}
        self.frames_cancelled = 0

    def headroom_db(self, audio: bytes) -> float:
        """How far a frame's audio may be raised for the VAD while the agent plays, in dB.

        The VAD's view of a quiet caller may be raised only as far as keeps the echo's
        residue under :data:`RESIDUE_CEILING_DBFS`: 0 dB until the echo path is learned
        and its residue measured, and for a frame in which echo may have passed
        uncancelled (no match found, the reply's end). The user aggregator's VAD asks
        this for each frame it is given (:class:`processors.vad.PhoneSileroVADAnalyzer`).

        Args:
            audio: A caller frame's ``audio`` as this processor passed it on (the same
                object, not a copy).

        Returns:
            The headroom in dB (>= 0); 0.0 for audio not among the last
            :data:`HEADROOM_FRAMES` frames passed on.
        """
        entry = self._headroom.get(id(audio))
        return entry[1] if entry is not None and entry[0] is audio else 0.0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Cancel echo in caller audio frames; forward everything.

        Args:
            frame: The frame to process.
            direction: The direction of frame flow.
        """
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            safe, residual = self._cancel(frame)
            if residual is not None:
                frame.audio = residual
                self.frames_cancelled += 1
            headroom = 0.0
            if safe and self._residue_db is not None:
                headroom = max(0.0, RESIDUE_CEILING_DBFS - self._residue_db)
            self._headroom[id(frame.audio)] = (frame.audio, headroom)
            if len(self._headroom) > HEADROOM_FRAMES:
                del self._headroom[next(iter(self._headroom))]  # the oldest
        await self.push_frame(frame, direction)

    def _cancel(self, frame: InputAudioRawFrame) -> tuple[bool, bytes | None]:
        """The frame's residual (None: unchanged) and whether no echo passed uncancelled."""
        # Cheap when no reply plays (most frames of a call): keep the raw bytes only.
        audio = frame.audio
        recent = self._history + audio
        self._history = recent[-2 * len(audio) :]
        reply = self._playout.reply
        if reply is None or reply.sample_rate != frame.sample_rate or not reply.sent_ms:
            return False, None
        played = len(reply.audio) // 2  # samples of the reply that may have been played
        if reply.ended_at is not None and not reply.playing:
            # Finished or cut off: only what was played can still echo back, and for
            # at most the search window after the end.
            if self._ended is not reply:
                self._ended, self._tail = reply, self._back_ms * frame.sample_rate // 1000
            self._tail -= len(audio) // 2
            if self._tail < 0:
                return True, None  # all of its echo has come back
            played = min(played, int((reply.played_ms + MARK_MS) * frame.sample_rate / 1000))
        x = np.frombuffer(audio, dtype="<i2").astype(np.float64)
        window = np.frombuffer(recent[-3 * len(audio) :], dtype="<i2").astype(np.float64)  # 60 ms
        rate = frame.sample_rate / 1000
        if self._track_reply is not reply:
            self._track_reply, self._track, self._held = reply, None, None
        if self._held is not None:  # moved on by this frame, at the same delay
            self._held, self._held_for = self._held + len(x), self._held_for + len(x)
            if self._held_for > self._hold_ms * rate:
                self._held = None
        energy = float(window @ window)
        if energy < len(window):  # digital silence
            self._track = None if self._track is None else self._track + len(x)
            return True, None
        if self._track is not None:
            # The echo path's delay barely moves between frames: search around the
            # last match, moved on by this frame (a tenth of the full search's work).
            expected = self._track + len(x)
            slack = int(self._track_ms * rate)
            start = max(0, expected - slack)
            end = min(played, expected + slack + len(window))
        else:
            position = reply.play_position_ms()
            start = max(0, int((position - self._back_ms) * rate))
            end = min(played, int((position + self._ahead_ms) * rate) + len(window))
        if end - start < len(window):
            return end <= start, None  # no played audio here: no echo of it
        ref = np.frombuffer(reply.audio, dtype="<i2", count=end - start, offset=2 * start)
        ref = ref.astype(np.float64)
        corr = _correlate_valid(ref, window)
        cumulative = np.concatenate(([0.0], np.cumsum(ref * ref)))
        ref_energy = cumulative[len(window) :] - cumulative[: -len(window)]
        ncc = corr / np.sqrt(np.maximum(ref_energy, 1.0) * energy)
        best = int(np.argmax(ncc))
        self._track = start + best if ncc[best] >= self._presence else None
        if ncc[best] >= self._echo_only:  # echo alone: its delay and gain are sure
            self._held, self._held_for = self._track, 0
            gain = corr[best] / max(ref_energy[best], 1.0)
            self._gain = gain if self._gain is None else 0.7 * self._gain + 0.3 * gain
        elif self._track is None and self._held is not None and self._gain is not None:
            # No match, but one was found within the last hold_ms: the path has not
            # moved, so keep its delay (the caller may be talking over the echo).
            residual = self._cancel_at(reply, self._held, x, len(window), played)
            if residual is not None:
                return True, residual
        if self._gain is None:
            return False, None
        if ncc[best] < self._presence:
            # No match. Safe if even the loudest echo the reply could make here is no
            # louder than the residue already allowed for, or if the caller's own
            # voice is well above it (raised, it is raised above that echo too).
            loudest = self._gain**2 * float(ref_energy.max())
            quiet = self._residue_db is not None and energy_dbfs(loudest, len(window)) <= self._residue_db
            return quiet or energy >= CALLER_OVER_ECHO * loudest, None
        echo = ref[best + len(window) - len(x) : best + len(window)] * self._gain
        residual = np.clip(np.rint(x - echo), -32768, 32767)
        if ncc[best] >= RESIDUE_NCC:  # echo alone: what is left of it is its residue
            level = energy_dbfs(float(residual @ residual), len(residual))
            fall = RESIDUE_FALL_DB_PER_S * len(x) / frame.sample_rate
            self._residue_db = level if self._residue_db is None else max(level, self._residue_db - fall)
        return True, residual.astype("<i2").tobytes()

    def _cancel_at(self, reply, track: int, x: np.ndarray, window: int, played: int) -> bytes | None:
        """Cancel at a held delay, when the caller talks over the echo (double talk).

        The caller's voice hides the echo from the search, but the echo path has not
        moved: the echo is subtracted where the last match puts it, if that lowers the
        frame's energy (it would raise it if the echo were not there).

        Args:
            reply: The reply playing.
            track: Reply sample where this frame's 60 ms window would match.
            x: The frame's samples.
            window: Samples in the 60 ms window.
            played: Samples of the reply that may have been played (none echoes after).

        Returns:
            The residual, or None when that does not lower the frame's energy.
        """
        at = track + window - len(x)
        count = max(0, min(len(x), played - at))
        ref = np.zeros(len(x))
        ref[:count] = np.frombuffer(reply.audio, dtype="<i2", count=count, offset=2 * at)
        residual = np.clip(np.rint(x - ref * self._gain), -32768, 32767)
        if float(residual @ residual) >= float(x @ x):
            return None
        return residual.astype("<i2").tobytes()
