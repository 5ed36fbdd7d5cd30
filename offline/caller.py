"""A simulated Twilio caller: one inbound phone call, end to end, without Twilio.

The caller behaves on the wire the way Twilio does, so the agent server under test
runs exactly the code it runs in production:

1. **Voice webhook.** It POSTs ``{server}/twilio/incoming-call`` as a form, with the
   parameters Twilio sends for an incoming call (``CallSid``, ``AccountSid``,
   ``From``, ``To``, ``CallStatus=ringing``, ``Direction=inbound``,
   ``ApiVersion=2010-04-01``, ``Caller``, ``Called`` and the geographic fields), and,
   when an auth token is given, an ``X-Twilio-Signature`` header computed with the
   Twilio SDK over the *public* webhook URL. Sources:
   https://www.twilio.com/docs/usage/webhooks/voice-webhooks and
   https://www.twilio.com/docs/usage/webhooks/webhooks-security
2. **TwiML.** It reads ``<Response><Connect><Stream url=...>`` and the stream's
   ``<Parameter>`` children. Source: https://www.twilio.com/docs/voice/twiml/stream
3. **Media Stream.** It opens the WebSocket (the upgrade request is signed too, over
   the ``<Stream url>``, since Twilio signs every HTTP request it makes to your app),
   sends ``connected`` then ``start``, then a ``media`` message every 20 ms in real
   time (160 bytes of 8000 Hz mu-law; digital silence when the caller is not
   talking) until it sends ``stop``. It plays the
   agent's ``media`` through a playout buffer drained at 160 bytes per 20 ms, echoes
   each ``mark`` once the audio queued before it has played, and on ``clear`` drops
   the buffered audio and echoes every pending mark at once. Source:
   https://www.twilio.com/docs/voice/media-streams/websocket-messages
4. **A polite person.** The WAV is cut into utterances by energy. The caller waits for
   the greeting to finish, says one utterance, waits for the reply to finish, says
   the next, and hangs up after the last reply. It measures the time to greeting and
   every reply delay, and can save the whole call as heard to a WAV.
5. **Outbound calls.** :func:`run_outbound_leg` is the phone that answered a call the
   server placed: given the ``<Stream>`` of the call's TwiML it opens the media stream
   as above. :func:`post_twilio_request` with :func:`status_callback_params` and
   :func:`amd_callback_params` sends Twilio's signed call-progress and answering
   machine detection callbacks.

Usage::

    python -m offline.caller --wav ../shared/audio/jfk_8k.wav --server http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import secrets
import sys
import time
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop
from loguru import logger
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from processors.g711 import ULAW_SILENCE, ulaw_decode, ulaw_encode

__all__ = [
    "CallerBehaviour",
    "CallResult",
    "CallSetupError",
    "PlayoutBuffer",
    "StreamInfo",
    "TwimlError",
    "WebhookError",
    "amd_callback_params",
    "frame_dbfs",
    "load_wav_8k",
    "main",
    "parse_twiml",
    "playout_gaps",
    "post_twilio_request",
    "run_call",
    "run_outbound_leg",
    "split_utterances",
    "status_callback_params",
]

SAMPLE_RATE = 8000  # Hz; Twilio Media Streams carry audio/x-mulaw at 8000 Hz, mono
FRAME_MS = 20  # ms of audio per Twilio media message
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160 samples = 160 mu-law bytes
FRAME_S = FRAME_MS / 1000.0
SILENT_FRAME = bytes([ULAW_SILENCE]) * FRAME_SAMPLES

#: A frame whose RMS is above this level counts as agent speech ("non-silent").
VOICED_DBFS = -50.0
#: Quiet time after the agent's last sound before the caller talks again.
POLITE_PAUSE_MS = 700
#: Gaps between played agent frames shorter than this join one agent segment.
SEGMENT_JOIN_MS = 200

WEBHOOK_PATH = "/twilio/incoming-call"
API_VERSION = "2010-04-01"


class CallSetupError(RuntimeError):
    """The call could not be set up (webhook or TwiML problem)."""


class WebhookError(CallSetupError):
    """The voice webhook did not answer 2xx."""


class TwimlError(CallSetupError):
    """The webhook's TwiML has no usable ``<Connect><Stream>``."""


# --------------------------------------------------------------------------- audio


def frame_dbfs(pcm: np.ndarray) -> float:
    """RMS level of 16-bit samples.

    Args:
        pcm: int16 samples (any length; empty gives -inf).

    Returns:
        Level in dBFS (0 dBFS = full-scale square wave, 32768).
    """
    if pcm.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(pcm, dtype=np.float64))))
    return 20.0 * math.log10(rms / 32768.0) if rms > 0 else -math.inf


def _ulaw_is_voiced(ulaw: bytes) -> bool:
    """Whether a mu-law chunk is above :data:`VOICED_DBFS` once decoded."""
    pcm = np.frombuffer(ulaw_decode(ulaw), dtype="<i2")
    return frame_dbfs(pcm) > VOICED_DBFS


def load_wav_8k(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 16-bit PCM WAV as 8000 Hz mono samples.

    Stereo is averaged to mono; any other rate is resampled to 8000 Hz with soxr.

    Args:
        path: WAV file (16-bit PCM, any rate, any channel count).

    Returns:
        int16 samples at 8000 Hz.

    Raises:
        ValueError: If the WAV is not 16-bit PCM.
    """
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr  # only needed for non-telephone-rate files

        logger.info("Resampling {} from {} Hz to {} Hz", path, rate, SAMPLE_RATE)
        samples = soxr.resample(samples.astype(np.float32), rate, SAMPLE_RATE)
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def _write_wav_8k(path: str | os.PathLike[str], pcm: bytes) -> None:
    """Write 8000 Hz mono 16-bit PCM bytes to a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)


def _speech_threshold(levels_db: np.ndarray) -> float:
    """Pick a speech/silence threshold (dBFS) from the frame levels of a recording.

    10 dB above the noise floor (10th percentile), never below :data:`VOICED_DBFS`,
    and at least 10 dB under the loud frames (95th percentile) so a recording with
    few pauses still splits.
    """
    finite = levels_db[np.isfinite(levels_db)]
    if finite.size == 0:
        return VOICED_DBFS
    floor, loud = np.percentile(finite, [10, 95])
    return float(min(max(floor + 10.0, VOICED_DBFS), loud - 10.0))


def split_utterances(
    pcm: np.ndarray,
    *,
    min_gap_ms: int = 350,
    min_utterance_ms: int = 400,
    pad_ms: int = 100,
    min_blip_ms: int = 60,
) -> list[tuple[int, int]]:
    """Cut a recording into utterances by frame energy.

    The recording is measured in 20 ms frames. Frames above an adaptive threshold
    (see :func:`_speech_threshold`) are speech; a run of quiet frames of at least
    ``min_gap_ms`` ends an utterance. Isolated sounds shorter than ``min_blip_ms``
    are ignored (clicks), utterances shorter than ``min_utterance_ms`` are merged
    into the nearer neighbour, and every utterance gets ``pad_ms`` of the
    surrounding audio on both sides.

    Args:
        pcm: int16 samples at 8000 Hz.
        min_gap_ms: Shortest silence (ms) that separates two utterances.
        min_utterance_ms: Shorter utterances (ms) are merged into a neighbour.
        pad_ms: Audio (ms) kept before and after each utterance.
        min_blip_ms: Sounds shorter than this (ms) with silence around are dropped.

    Returns:
        ``(start, end)`` sample indices (end exclusive), in order, not overlapping.
    """
    n_frames = math.ceil(len(pcm) / FRAME_SAMPLES)
    if n_frames == 0:
        return []
    padded = np.zeros(n_frames * FRAME_SAMPLES, dtype=np.int16)
    padded[: len(pcm)] = pcm
    levels = np.array([frame_dbfs(f) for f in padded.reshape(n_frames, FRAME_SAMPLES)])
    voiced = np.flatnonzero(levels > _speech_threshold(levels))
    if voiced.size == 0:
        return []

    # Runs of speech frames, split where the gap is long enough: [start, end) frames.
    gap_frames = math.ceil(min_gap_ms / FRAME_MS)
    runs: list[list[int]] = [[int(voiced[0]), int(voiced[0]) + 1]]
    for frame in voiced[1:]:
        if frame - runs[-1][1] >= gap_frames:
            runs.append([int(frame), int(frame) + 1])
        else:
            runs[-1][1] = int(frame) + 1

    blip_frames = math.ceil(min_blip_ms / FRAME_MS)
    runs = [run for run in runs if run[1] - run[0] >= blip_frames] or runs

    min_frames = math.ceil(min_utterance_ms / FRAME_MS)
    while len(runs) > 1:
        lengths = [end - start for start, end in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_frames:
            break
        gap_before = runs[i][0] - runs[i - 1][1] if i > 0 else math.inf
        gap_after = runs[i + 1][0] - runs[i][1] if i + 1 < len(runs) else math.inf
        j = i - 1 if gap_before <= gap_after else i + 1
        lo, hi = min(i, j), max(i, j)
        runs[lo:hi + 1] = [[runs[lo][0], runs[hi][1]]]

    pad = pad_ms * SAMPLE_RATE // 1000
    return [
        (max(0, start * FRAME_SAMPLES - pad), min(len(pcm), end * FRAME_SAMPLES + pad))
        for start, end in runs
    ]


def _speech_onset(frames: list[bytes], below_peak_db: float = 20.0) -> int:
    """Index of the first frame within ``below_peak_db`` dB of the loudest frame.

    The speech onset of an utterance, robust to the background noise a recording
    carries before the first word (which a fixed threshold would take for speech).
    """
    levels = [frame_dbfs(np.frombuffer(ulaw_decode(f), dtype="<i2")) for f in frames]
    peak = max(levels)
    return next(i for i, level in enumerate(levels) if level >= peak - below_peak_db)


def _to_ulaw_frames(pcm: np.ndarray) -> list[bytes]:
    """Encode int16 samples as 160-byte mu-law frames (the last padded with silence)."""
    ulaw = ulaw_encode(pcm.astype("<i2").tobytes())
    frames = [ulaw[i:i + FRAME_SAMPLES] for i in range(0, len(ulaw), FRAME_SAMPLES)]
    if frames and len(frames[-1]) < FRAME_SAMPLES:
        frames[-1] = frames[-1].ljust(FRAME_SAMPLES, bytes([ULAW_SILENCE]))
    return frames


# ------------------------------------------------------------------------ playout


class PlayoutBuffer:
    """The phone's jitter/playout buffer for the agent's audio, with marks.

    Positions are counted in mu-law bytes (= samples at 8000 Hz) since the start of
    the call. A mark sits at the position of the audio queued before it; it is due
    once playout has reached that position, i.e. the audio before it has played.
    This mirrors Twilio's ``mark`` and ``clear`` semantics described at
    https://www.twilio.com/docs/voice/media-streams/websocket-messages
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # queued, not yet played
        self._played = 0  # bytes played so far
        self._marks: deque[tuple[int, str]] = deque()  # (position, name)
        self._voiced_until = 0  # position right after the last queued speech chunk
        self.dropped_bytes = 0  # audio discarded by clear()

    @property
    def queued_bytes(self) -> int:
        """Audio (bytes = samples) waiting to be played."""
        return len(self._pending)

    @property
    def has_voiced_pending(self) -> bool:
        """Whether any speech (not just silence) is still waiting to be played."""
        return self._voiced_until > self._played

    def push_audio(self, ulaw: bytes) -> None:
        """Queue agent audio behind everything already queued.

        Args:
            ulaw: mu-law bytes at 8000 Hz, any length.
        """
        base = self._played + len(self._pending)
        for offset in range(0, len(ulaw), FRAME_SAMPLES):
            chunk = ulaw[offset:offset + FRAME_SAMPLES]
            if _ulaw_is_voiced(chunk):
                self._voiced_until = base + offset + len(chunk)
        self._pending += ulaw

    def push_mark(self, name: str) -> None:
        """Queue a mark behind the audio queued so far."""
        self._marks.append((self._played + len(self._pending), name))

    def due_marks(self) -> list[str]:
        """Remove and return the marks whose preceding audio has fully played."""
        due = []
        while self._marks and self._marks[0][0] <= self._played:
            due.append(self._marks.popleft()[1])
        return due

    def pop_frame(self) -> tuple[bytes, int]:
        """Play one 20 ms frame.

        Returns:
            The 160 mu-law bytes played (padded with silence when the buffer runs
            dry) and how many of them were queued agent audio.
        """
        take = min(FRAME_SAMPLES, len(self._pending))
        audio = bytes(self._pending[:take])
        del self._pending[:take]
        self._played += take
        return audio.ljust(FRAME_SAMPLES, bytes([ULAW_SILENCE])), take

    def clear(self) -> list[str]:
        """Drop all queued audio at once and return every pending mark, in order."""
        self.dropped_bytes += len(self._pending)
        self._pending.clear()
        self._voiced_until = min(self._voiced_until, self._played)
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names


# -------------------------------------------------------------------- setup steps


@dataclass
class StreamInfo:
    """What the TwiML asks for: ``<Connect><Stream url>`` and its ``<Parameter>``s."""

    url: str
    parameters: dict[str, str]


def parse_twiml(twiml: str) -> StreamInfo:
    """Find the bidirectional Media Stream in a TwiML answer.

    Args:
        twiml: The webhook's response body.

    Returns:
        The stream URL and custom parameters (name -> value).

    Raises:
        TwimlError: If the XML is invalid, is not a ``<Response>``, or has no
            ``<Connect><Stream url="ws(s)://...">``.
    """
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise TwimlError(f"TwiML is not valid XML ({exc}): {twiml[:300]!r}") from exc
    if root.tag != "Response":
        raise TwimlError(f"TwiML root is <{root.tag}>, expected <Response>")
    stream = root.find("./Connect/Stream")
    if stream is None:
        if root.find(".//Stream") is not None:
            raise TwimlError("TwiML has <Stream> outside <Connect>: that stream is one-way")
        raise TwimlError(f"TwiML has no <Connect><Stream>: {twiml[:300]!r}")
    url = (stream.get("url") or "").strip()
    if not url.startswith(("ws://", "wss://")):
        raise TwimlError(f"<Stream url> must be an absolute ws(s):// URL, got {url!r}")
    for verb in root:
        if verb.tag != "Connect":
            logger.warning("TwiML verb <{}> ignored by the simulated caller", verb.tag)
    parameters = {
        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")
    }
    return StreamInfo(url=url, parameters=parameters)


def _sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix + 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def _webhook_params(
    call_sid: str, account_sid: str, from_number: str, to_number: str
) -> dict[str, str]:
    """Form fields of the incoming-call webhook, as Twilio sends them.

    Source: https://www.twilio.com/docs/usage/webhooks/voice-webhooks
    (unknown geographic fields are sent empty).
    """
    params = {
        "AccountSid": account_sid,
        "ApiVersion": API_VERSION,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to_number,
        "Caller": from_number,
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
    }
    for side in ("Called", "Caller", "From", "To"):
        params.update(
            {f"{side}City": "", f"{side}State": "", f"{side}Zip": "", f"{side}Country": "US"}
        )
    return params


# ------------------------------------------------------------------------- result


@dataclass
class CallResult:
    """Everything the simulated caller saw and measured during one call.

    Times ("call time") are seconds since the ``start`` message was sent.

    Attributes:
        call_sid: ``CA`` + 32 hex, as sent in the webhook and ``start``.
        stream_sid: ``MZ`` + 32 hex.
        twiml: The webhook's response body.
        parameters: The ``<Stream>``'s ``<Parameter>`` name/value pairs.
        greeting_ms: ms from sending ``start`` to the first non-silent agent frame
            played, or None if the agent did not speak first.
        utterances: One dict per caller utterance: ``start_s``/``end_s`` (position
            in the WAV, s), ``sent_at``/``ended_at`` (call time of its first/last
            frame sent, s, None if never said), ``replied`` (bool),
            ``reply_at`` (call time of the first non-silent reply frame played, s)
            and ``reply_delay_ms`` (from the last frame sent to that frame, ms).
        agent_segments: ``(start_s, end_s)`` call times when agent speech played.
        heard_pcm: The whole call as the caller heard it: 8000 Hz 16-bit PCM.
        media_received: ``media`` messages received from the server.
        marks_received: ``mark`` messages received from the server.
        marks_echoed: Names of the marks sent back, in order.
        clears: ``clear`` messages received.
        media_after_clear: ``media`` messages received after the first ``clear``.
        dropped_ms: Agent audio (ms) discarded by ``clear`` before it played.
        duration_s: Call time when the caller hung up (or the server closed).
        ended_by: ``"caller"``, ``"server"`` or ``"max_call_s"``.
        media_arrivals: ``(call time s, phase)`` of every ``media`` message received,
            in order; the phase counts the caller's turns and the ``clear``s, so one
            phase holds at most one stretch of agent speech (see :func:`playout_gaps`).
        closed_after_stop_s: With ``hang_up="stop_only"``: seconds from ``stop`` to
            the server closing the socket (None if it did not within 10 s).
    """

    call_sid: str
    stream_sid: str
    twiml: str
    parameters: dict[str, str]
    greeting_ms: float | None = None
    utterances: list[dict[str, Any]] = field(default_factory=list)
    agent_segments: list[tuple[float, float]] = field(default_factory=list)
    heard_pcm: bytes = b""
    media_received: int = 0
    marks_received: int = 0
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    media_after_clear: int = 0
    dropped_ms: float = 0.0
    duration_s: float = 0.0
    ended_by: str = "caller"
    clear_events: list[dict[str, Any]] = field(default_factory=list)
    stale_media_after_clear: int = 0
    backchannel_at: float | None = None
    dtmf_sent_at: float | None = None
    dtmf_answered_at: float | None = None
    media_arrivals: list[tuple[float, int]] = field(default_factory=list)
    closed_after_stop_s: float | None = None

    @property
    def all_answered(self) -> bool:
        """True if the call had utterances and every one got a reply."""
        return bool(self.utterances) and all(u["replied"] for u in self.utterances)

    def summary(self) -> str:
        """A readable timeline of the call and its timings."""
        events: list[tuple[float, str]] = []
        for start, end in self.agent_segments:
            events.append((start, f"agent   speaks {end - start:5.2f} s"))
        for i, utt in enumerate(self.utterances, 1):
            if utt["sent_at"] is None:
                continue
            reply = (
                f"reply after {utt['reply_delay_ms']:.0f} ms" if utt["replied"] else "NO REPLY"
            )
            events.append(
                (
                    utt["sent_at"],
                    f"caller  says   {utt['end_s'] - utt['start_s']:5.2f} s"
                    f"  (utterance {i}, wav {utt['start_s']:.2f}-{utt['end_s']:.2f} s) -> {reply}",
                )
            )
        lines = [f"Call {self.call_sid}  stream {self.stream_sid}"]
        if self.parameters:
            lines.append(f"  stream parameters: {_redacted(self.parameters)}")
        lines += [f"  {t:7.2f} s  {text}" for t, text in sorted(events)]
        lines.append(f"  {self.duration_s:7.2f} s  call ended by {self.ended_by}")
        greeting = f"{self.greeting_ms:.0f} ms" if self.greeting_ms is not None else "none"
        delays = [u["reply_delay_ms"] for u in self.utterances if u["replied"]]
        answered = sum(1 for u in self.utterances if u["replied"])
        lines.append(f"Time to greeting: {greeting}")
        if delays:
            lines.append(
                f"Reply delay: min {min(delays):.0f} / median {float(np.median(delays)):.0f}"
                f" / max {max(delays):.0f} ms"
            )
        lines.append(f"Utterances answered: {answered}/{len(self.utterances)}")
        lines.append(
            f"Media received {self.media_received}, marks {self.marks_received} received /"
            f" {len(self.marks_echoed)} echoed, clears {self.clears}"
            f" (media after clear {self.media_after_clear}, dropped {self.dropped_ms:.0f} ms)"
        )
        return "\n".join(lines)


def playout_gaps(
    arrivals: list[tuple[float, int]], *, jitter_ms: float = 20.0, frame_ms: float = FRAME_MS
) -> list[float]:
    """Silences a listener hears inside the agent's speech because audio came late.

    Each phase's ``media`` frames (one stretch of agent speech: see
    :attr:`CallResult.media_arrivals`) are played on a 20 ms clock that starts
    ``jitter_ms`` after the first frame arrives (a jitter buffer of that depth;
    Twilio does not document its own). A frame that arrives after its turn to play
    leaves a gap of silence and the clock slips by as much. Frames between phases
    (the caller talking, a ``clear``) are not inside agent speech.

    Args:
        arrivals: ``(arrival time s, phase)`` per 20 ms ``media`` frame, in order.
        jitter_ms: The buffer depth at the start of each stretch, in ms.
        frame_ms: Audio per frame, in ms.

    Returns:
        Every gap, in ms, in order (an underrun heard is one over 40 ms).
    """
    gaps: list[float] = []
    phase, due = None, 0.0  # due: when the next frame must be there to play on time, s
    for at, frame_phase in arrivals:
        if frame_phase != phase:
            phase, due = frame_phase, at + jitter_ms / 1000
        elif at > due:
            gaps.append((at - due) * 1000)
            due = at
        due += frame_ms / 1000
    return gaps


# ------------------------------------------------------------------------ session


@dataclass
class CallerBehaviour:
    """How the simulated caller behaves beyond polite turn-taking.

    Parameters:
        barge_in_after_ms: Start the next utterance this long after the agent's audio
            began playing, talking over it (ms); None waits for the agent to finish.
        echo_db: Feed the agent's audio, as played, back into the caller's line at this
            level relative to it (dB, e.g. -20), like a phone's acoustic/hybrid echo.
        echo_delay_ms: Delay of that echo path (ms).
        backchannel_ms: Once, 1.5 s into the greeting, say this much of the first
            utterance (ms), like a caller's "mm-hm", and go on waiting.
        speech_dbfs: Scale the caller's speech so its active level is this (dBFS),
            e.g. -35 for a quiet phone caller; None keeps the WAV's level.
        dtmf_after_greeting: Keys to press (Twilio ``dtmf`` messages, one per key)
            once the greeting has played, then wait for the agent's answer before
            speaking.
        before_start: Raw WebSocket messages (text or binary) sent after
            ``connected`` and before ``start`` (fault injection).
        inject: Fault injection: called every 20 ms tick with the call time (s);
            the raw messages (text or binary) it returns are sent before the tick's
            ``media``.
        hang_up: How the caller leaves: ``stop`` (send ``stop``, then close the
            socket, as Twilio does), ``abort`` (drop the TCP connection: no ``stop``,
            no close frame) or ``stop_only`` (send ``stop`` and wait for the server
            to close the socket, up to 10 s).
        pause_ms: How long the agent must have been quiet before the caller takes
            its turn (ms).
    """

    barge_in_after_ms: float | None = None
    echo_db: float | None = None
    echo_delay_ms: float = 40.0
    backchannel_ms: float | None = None
    speech_dbfs: float | None = None
    dtmf_after_greeting: str | None = None
    before_start: list[str | bytes] = field(default_factory=list)
    inject: Callable[[float], list[str | bytes]] | None = None
    hang_up: str = "stop"
    pause_ms: float = POLITE_PAUSE_MS


class _MediaSession:
    """One Media Stream WebSocket: the 20 ms clock, the caller's turns, the playout.

    Message shapes follow https://www.twilio.com/docs/voice/media-streams/websocket-messages
    """

    def __init__(
        self,
        ws: ClientConnection,
        result: CallResult,
        account_sid: str,
        utterances: list[list[bytes]],
        *,
        reply_timeout_s: float,
        max_call_s: float,
        behaviour: CallerBehaviour | None = None,
    ) -> None:
        self.ws = ws
        self.behaviour = behaviour or CallerBehaviour()
        self.t0 = 0.0  # loop time of the call's start, s
        self.reply_played_bytes = 0  # agent audio played since the current reply began
        self.barged_in_phase = False
        self.cleared_this_utterance = False
        self.dtmf_pending = self.behaviour.dtmf_after_greeting or ""
        self.dtmf_to_send = ""
        self.backchannel_left = (
            int(self.behaviour.backchannel_ms // FRAME_MS) if self.behaviour.backchannel_ms else 0
        )
        delay_frames = max(1, round(self.behaviour.echo_delay_ms / FRAME_MS))
        self.echo_line: deque[np.ndarray] = deque(
            [np.zeros(FRAME_SAMPLES)] * delay_frames, maxlen=delay_frames
        )
        self.result = result
        self.account_sid = account_sid
        self.utterance_frames = utterances
        self.reply_timeout_s = reply_timeout_s
        self.max_call_s = max_call_s
        self.buffer = PlayoutBuffer()
        self.sequence = 0
        self.heard: list[bytes] = []
        # Caller state machine: "greeting" -> ("speaking" -> "awaiting_reply")* -> "done".
        self.state = "greeting"
        self.phase_started = 0.0  # call time the current wait began, s
        self.utterance = 0  # index of the utterance being said / awaited
        self.frame_in_utterance = 0
        self.heard_in_phase: float | None = None  # first speech played in this wait, s
        self.last_voiced_at = -math.inf  # call time the last agent speech frame played, s
        self.phase = 0  # caller turns begun + clears received (see CallResult.media_arrivals)

    def _next_sequence(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def _echo_mark(self, name: str) -> None:
        await self._send(
            {
                "event": "mark",
                "sequenceNumber": self._next_sequence(),
                "streamSid": self.result.stream_sid,
                "mark": {"name": name},
            }
        )
        self.result.marks_echoed.append(name)
        logger.debug("mark {!r} echoed", name)

    # -- receiving ------------------------------------------------------------------

    async def receive(self) -> None:
        """Read the server's messages until the socket closes."""
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    logger.warning("Binary WebSocket frame ignored ({} bytes)", len(raw))
                    continue
                await self._on_message(json.loads(raw))
        except ConnectionClosed as exc:
            logger.info("Media stream closed: {}", exc)

    async def _on_message(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "media":
            payload = base64.b64decode(message.get("media", {}).get("payload", ""))
            self.buffer.push_audio(payload)
            self.result.media_received += 1
            self.result.media_arrivals.append(
                (asyncio.get_running_loop().time() - self.t0, self.phase)
            )
            if self.result.clears:
                self.result.media_after_clear += 1
                if self.state == "speaking" and self.cleared_this_utterance:
                    # No new reply can start while the caller is still talking: this is
                    # audio of the interrupted reply arriving after its clear.
                    self.result.stale_media_after_clear += 1
        elif event == "mark":
            self.result.marks_received += 1
            self.buffer.push_mark(str(message.get("mark", {}).get("name", "")))
        elif event == "clear":
            self.result.clears += 1
            self.phase += 1
            dropped = self.buffer.queued_bytes
            self.result.dropped_ms += dropped * 1000.0 / SAMPLE_RATE
            pending = self.buffer.clear()
            now = asyncio.get_running_loop().time() - self.t0
            self.result.clear_events.append(
                {"at": now, "reply_played_ms": self.reply_played_bytes * 1000 / SAMPLE_RATE,
                 "dropped_ms": dropped * 1000 / SAMPLE_RATE, "state": self.state,
                 "utterance": self.utterance}
            )
            self.reply_played_bytes = 0
            self.cleared_this_utterance = self.state == "speaking"
            logger.info("clear: dropped {} ms of agent audio, {} pending mark(s) echoed",
                        dropped * 1000 // SAMPLE_RATE, len(pending))
            for name in pending:
                await self._echo_mark(name)
        else:
            logger.warning("Unexpected message from the server: {}", message)

    # -- the 20 ms tick ------------------------------------------------------------

    async def _play_tick(self, now: float) -> None:
        """Echo due marks, then play one frame of the agent's audio."""
        for name in self.buffer.due_marks():
            await self._echo_mark(name)
        frame, taken = self.buffer.pop_frame()
        self.reply_played_bytes += taken
        self.heard.append(frame)
        if self.behaviour.echo_db is not None:
            played = np.frombuffer(ulaw_decode(frame), dtype="<i2").astype(np.float64)
            self.echo_line.append(played * 10 ** (self.behaviour.echo_db / 20))
        if not _ulaw_is_voiced(frame):
            return
        self.last_voiced_at = now
        if self.heard_in_phase is None and self.state in ("greeting", "awaiting_reply"):
            self.heard_in_phase = now
            if self.state == "greeting" and self.result.greeting_ms is not None:
                self.result.dtmf_answered_at = now  # the agent answered the keys pressed
            elif self.state == "greeting":
                self.result.greeting_ms = now * 1000.0
                logger.info("Greeting heard after {:.0f} ms", now * 1000.0)
            else:
                utt = self.result.utterances[self.utterance]
                utt.update(replied=True, reply_at=now,
                           reply_delay_ms=(now - utt["ended_at"]) * 1000.0)
                logger.info("Reply to utterance {} after {:.0f} ms",
                            self.utterance + 1, utt["reply_delay_ms"])
        segments = self.result.agent_segments
        if segments and now - segments[-1][1] <= SEGMENT_JOIN_MS / 1000.0:
            segments[-1] = (segments[-1][0], now + FRAME_S)
        else:
            segments.append((now, now + FRAME_S))

    def _agent_done(self, now: float) -> bool:
        """The agent was heard in this wait and has been quiet for the polite pause."""
        return (
            self.heard_in_phase is not None
            and not self.buffer.has_voiced_pending
            and now - self.last_voiced_at >= self.behaviour.pause_ms / 1000.0
        )

    def _begin_next_utterance(self, now: float) -> None:
        if self.state == "awaiting_reply":
            self.utterance += 1
        if self.utterance >= len(self.utterance_frames):
            self.state = "done"
            return
        self.state = "speaking"
        self.phase += 1
        self.frame_in_utterance = 0
        self.cleared_this_utterance = False
        utterance = self.result.utterances[self.utterance]
        utterance["sent_at"] = now
        utterance["onset_at"] = now + _speech_onset(self.utterance_frames[self.utterance]) * FRAME_S

    def _caller_tick(self, now: float) -> bytes | None:
        """The frame the caller sends now, with the line's echo mixed in (None: hang up)."""
        frame = self._speech_tick(now)
        if frame is None or self.behaviour.echo_db is None:
            return frame
        mixed = np.frombuffer(ulaw_decode(frame), dtype="<i2") + self.echo_line[0]
        return ulaw_encode(np.clip(np.rint(mixed), -32768, 32767).astype("<i2").tobytes())

    def _speech_tick(self, now: float) -> bytes | None:
        """Advance the caller's turn-taking and return the speech frame to send."""
        behaviour = self.behaviour
        if (
            self.state in ("greeting", "awaiting_reply")
            and behaviour.barge_in_after_ms is not None
            and self.heard_in_phase is not None
            and not self.barged_in_phase
            and now - self.heard_in_phase >= behaviour.barge_in_after_ms / 1000
            and self.utterance + (self.state == "awaiting_reply") < len(self.utterance_frames)
        ):
            self.barged_in_phase = True
            self._begin_next_utterance(now)
            self.result.utterances[self.utterance]["barged_in"] = True
        if (
            self.state == "greeting"
            and self.backchannel_left
            and self.heard_in_phase is not None
            and now - self.heard_in_phase >= 1.5
        ):
            frames = self.utterance_frames[0]
            start = min(5, len(frames) - 1)  # skip the utterance's leading pad
            index = min(start + int(behaviour.backchannel_ms // FRAME_MS) - self.backchannel_left,
                        len(frames) - 1)
            self.backchannel_left -= 1
            if self.result.backchannel_at is None:
                self.result.backchannel_at = now
            return frames[index]
        if self.state in ("greeting", "awaiting_reply"):
            waited = now - self.phase_started
            if self._agent_done(now) and self.state == "greeting" and self.dtmf_pending:
                self.dtmf_to_send, self.dtmf_pending = self.dtmf_pending, ""
                self.phase_started, self.heard_in_phase = now, None  # wait for the answer
                self.result.dtmf_sent_at = now
            elif self._agent_done(now):
                self._begin_next_utterance(now)
            elif self.heard_in_phase is None and waited >= self.reply_timeout_s:
                what = (
                    "greeting" if self.state == "greeting"
                    else f"reply to utterance {self.utterance + 1}"
                )
                logger.warning("No {} within {:.1f} s", what, self.reply_timeout_s)
                self._begin_next_utterance(now)
        if self.state == "done":
            return None
        if self.state != "speaking":
            return SILENT_FRAME
        frames = self.utterance_frames[self.utterance]
        frame = frames[self.frame_in_utterance]
        self.frame_in_utterance += 1
        if self.frame_in_utterance == len(frames):
            self.result.utterances[self.utterance]["ended_at"] = now
            self.state = "awaiting_reply"
            self.phase_started = now
            self.heard_in_phase = None
            self.barged_in_phase = False
            self.reply_played_bytes = 0
        return frame

    # -- the call -------------------------------------------------------------------

    async def _hang_up(self, call_sid: str, receiver: asyncio.Task) -> None:
        """Leave the call the way :attr:`CallerBehaviour.hang_up` says."""
        how = self.behaviour.hang_up
        if how == "abort":
            self.ws.transport.abort()
            return
        await self._send(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "stop": {"accountSid": self.account_sid, "callSid": call_sid},
                "streamSid": self.result.stream_sid,
            }
        )
        if how == "stop_only":
            sent = asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(asyncio.shield(receiver), 10.0)
                self.result.closed_after_stop_s = asyncio.get_running_loop().time() - sent
            except TimeoutError:
                logger.warning("The server kept the stream open 10 s after stop")
        await self.ws.close()

    async def run(self, call_sid: str, parameters: dict[str, str]) -> None:
        """Send connected/start, then media every 20 ms until the caller hangs up."""
        result = self.result
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        for raw in self.behaviour.before_start:
            await self.ws.send(raw)
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": result.stream_sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": SAMPLE_RATE,
                        "channels": 1,
                    },
                    "customParameters": parameters,
                },
                "streamSid": result.stream_sid,
            }
        )
        loop = asyncio.get_running_loop()
        t0 = self.t0 = loop.time()
        receiver = asyncio.create_task(self.receive())
        tick = 0
        now = 0.0
        late = False
        try:
            while True:
                # Absolute schedule: tick n is due at t0 + n * 20 ms, whatever came before,
                # so sleep overshoots do not add up; a late tick is caught up at once.
                delay = t0 + tick * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if delay < -0.1 and not late:
                    logger.warning("Media clock {:.0f} ms late (event loop busy?)", -delay * 1000)
                late = delay < -0.1
                now = loop.time() - t0
                if receiver.done():
                    result.ended_by = "server"
                    break
                if now >= self.max_call_s:
                    logger.warning("max_call_s={} reached, hanging up", self.max_call_s)
                    result.ended_by = "max_call_s"
                    break
                await self._play_tick(now)
                frame = self._caller_tick(now)
                if frame is None:
                    break
                if self.behaviour.inject is not None:
                    for raw in self.behaviour.inject(now):
                        await self.ws.send(raw)
                if self.dtmf_to_send:  # one key per tick, as a phone would
                    key, self.dtmf_to_send = self.dtmf_to_send[0], self.dtmf_to_send[1:]
                    await self._send(
                        {
                            "event": "dtmf",
                            "streamSid": result.stream_sid,
                            "sequenceNumber": self._next_sequence(),
                            "dtmf": {"track": "inbound_track", "digit": key},
                        }
                    )
                await self._send(
                    {
                        "event": "media",
                        "sequenceNumber": self._next_sequence(),
                        "media": {
                            "track": "inbound",
                            "chunk": str(tick + 1),
                            "timestamp": str(tick * FRAME_MS),
                            "payload": base64.b64encode(frame).decode("ascii"),
                        },
                        "streamSid": result.stream_sid,
                    }
                )
                tick += 1
            if result.ended_by != "server":
                await self._hang_up(call_sid, receiver)
        except ConnectionClosed as exc:
            logger.info("Server closed the media stream: {}", exc)
            result.ended_by = "server"
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            result.duration_s = now
            result.heard_pcm = ulaw_decode(b"".join(self.heard))


# ---------------------------------------------------------------------------- API


async def run_call(
    server_url: str,
    wav_path: str,
    *,
    auth_token: str | None = None,
    public_base_url: str | None = None,
    from_number: str = "+15551230001",
    to_number: str = "+15559870002",
    out_wav: str | None = None,
    min_gap_ms: int = 350,
    reply_timeout_s: float = 10.0,
    max_call_s: float = 120.0,
    ws_url_override: str | None = None,
    behaviour: CallerBehaviour | None = None,
    call_sid: str | None = None,
    graph: str | None = None,
) -> CallResult:
    """Place one simulated inbound Twilio call against an agent server.

    Args:
        server_url: Where the server listens, e.g. ``http://127.0.0.1:8000``.
        wav_path: The caller's speech: 16-bit PCM WAV (8000 Hz mono preferred).
        auth_token: Twilio auth token; when given, the webhook and the WebSocket
            upgrade carry ``X-Twilio-Signature`` (HMAC-SHA1, computed by the SDK).
        public_base_url: The server's public base URL, which the signature covers
            (Twilio signs the URL it was configured with). Defaults to ``server_url``.
        from_number: Caller's number (E.164), sent as ``From``/``Caller``.
        to_number: Agent's number (E.164), sent as ``To``/``Called``.
        out_wav: If given, save the call as heard (8000 Hz 16-bit mono WAV).
        min_gap_ms: Silence (ms) in the WAV that separates two utterances.
        reply_timeout_s: Give up waiting for the greeting or a reply after this (s).
        max_call_s: Hard limit on the call length (s, call time).
        ws_url_override: Connect here instead of the TwiML's ``<Stream url>``
            (the signature still covers the TwiML URL, as Twilio would).
        behaviour: Barge-in, echo, backchannel and level options; polite by default.
        call_sid: The call SID to use (``CA`` + 32 hex); a fresh one by default.
        graph: Ask for this pipeline graph (e.g. ``cascade``): the ``start`` message's
            ``graph`` custom parameter replaces the TwiML's (a developer's override; real
            Twilio sends the TwiML's parameters as they are).

    Returns:
        The call's :class:`CallResult`.

    Raises:
        WebhookError: The webhook did not answer 2xx.
        TwimlError: The answer has no ``<Connect><Stream>``.
        ValueError: No speech found in the WAV.
    """
    pcm, spans = _caller_speech(wav_path, min_gap_ms, behaviour)
    call_sid, account_sid, stream_sid = call_sid or _sid("CA"), _sid("AC"), _sid("MZ")
    params = _webhook_params(call_sid, account_sid, from_number, to_number)
    response = await post_twilio_request(
        server_url, WEBHOOK_PATH, params, auth_token=auth_token, public_base_url=public_base_url
    )
    public_url = (public_base_url or server_url).rstrip("/") + WEBHOOK_PATH
    if not response.is_success:
        raise WebhookError(
            f"Webhook {public_url} answered {response.status_code}: {response.text[:300]}"
        )
    twiml = response.text
    stream = parse_twiml(twiml)
    if graph:
        stream.parameters["graph"] = graph
    logger.info("Call {} -> stream {} parameters={}", call_sid, stream.url,
                _redacted(stream.parameters))
    result = CallResult(
        call_sid=call_sid, stream_sid=stream_sid, twiml=twiml, parameters=stream.parameters
    )
    await _media_leg(
        result, stream, account_sid, pcm, spans, auth_token=auth_token,
        ws_url_override=ws_url_override, reply_timeout_s=reply_timeout_s, max_call_s=max_call_s,
        behaviour=behaviour,
    )
    if out_wav:
        _write_wav_8k(out_wav, result.heard_pcm)
        logger.info("Call as heard saved to {}", out_wav)
    return result


async def run_outbound_leg(
    stream_url: str,
    parameters: dict[str, str],
    wav_path: str,
    *,
    call_sid: str,
    account_sid: str | None = None,
    auth_token: str | None = None,
    out_wav: str | None = None,
    min_gap_ms: int = 350,
    reply_timeout_s: float = 10.0,
    max_call_s: float = 120.0,
    ws_url_override: str | None = None,
    behaviour: CallerBehaviour | None = None,
) -> CallResult:
    """Be the phone that answered an outbound call: Twilio's side of its media stream.

    An outbound call placed through the REST API runs the TwiML given with it once
    answered; for ``<Connect><Stream>`` Twilio then opens the stream exactly as for
    an incoming call (signed upgrade, ``connected``, ``start`` with the
    ``<Parameter>``s as ``customParameters``, 20 ms media). The person waits for the
    agent to speak, then talks like :func:`run_call`'s caller.

    Args:
        stream_url: The ``<Stream url>`` of the call's TwiML (see :func:`parse_twiml`).
        parameters: Its ``<Parameter>``s.
        wav_path: What the person says (16-bit PCM WAV).
        call_sid: The SID the REST API gave the call.
        account_sid: The account's SID (a random one if None).
        auth_token: Twilio auth token; when given, the upgrade request is signed.
        out_wav: If given, save the call as heard.
        min_gap_ms: Silence (ms) in the WAV that separates two utterances.
        reply_timeout_s: Give up waiting for the agent's first words or a reply (s).
        max_call_s: Hard limit on the call length (s).
        ws_url_override: Connect here instead of ``stream_url`` (still signed for it).
        behaviour: Barge-in, echo and level options.

    Returns:
        The call's :class:`CallResult` (``greeting_ms``: when the agent first spoke).

    Raises:
        ValueError: No speech found in the WAV.
        websockets.exceptions.InvalidStatus: The server refused the upgrade (e.g. 403).
    """
    pcm, spans = _caller_speech(wav_path, min_gap_ms, behaviour)
    result = CallResult(call_sid=call_sid, stream_sid=_sid("MZ"), twiml="", parameters=parameters)
    await _media_leg(
        result, StreamInfo(stream_url, dict(parameters)), account_sid or _sid("AC"), pcm, spans,
        auth_token=auth_token, ws_url_override=ws_url_override, reply_timeout_s=reply_timeout_s,
        max_call_s=max_call_s, behaviour=behaviour,
    )
    if out_wav:
        _write_wav_8k(out_wav, result.heard_pcm)
    return result


def _caller_speech(
    wav_path: str, min_gap_ms: int, behaviour: CallerBehaviour | None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The caller's speech at 8 kHz and its utterances (scaled as ``behaviour`` asks)."""
    pcm = load_wav_8k(wav_path)
    spans = split_utterances(pcm, min_gap_ms=min_gap_ms)
    if behaviour and behaviour.speech_dbfs is not None and spans:
        pcm = _scale_speech(pcm, spans, behaviour.speech_dbfs)
    if not spans:
        raise ValueError(f"No speech found in {wav_path}")
    logger.info("{}: {} utterance(s): {}", wav_path, len(spans),
                ", ".join(f"{s / SAMPLE_RATE:.2f}-{e / SAMPLE_RATE:.2f} s" for s, e in spans))
    return pcm, spans


async def _media_leg(
    result: CallResult,
    stream: StreamInfo,
    account_sid: str,
    pcm: np.ndarray,
    spans: list[tuple[int, int]],
    *,
    auth_token: str | None,
    ws_url_override: str | None,
    reply_timeout_s: float,
    max_call_s: float,
    behaviour: CallerBehaviour | None,
) -> None:
    """Open the media stream as Twilio does and hold the call until someone hangs up."""
    result.utterances = [
        {"start_s": s / SAMPLE_RATE, "end_s": e / SAMPLE_RATE, "sent_at": None, "ended_at": None,
         "replied": False, "reply_at": None, "reply_delay_ms": None}
        for s, e in spans
    ]
    # Twilio signs every HTTP request it makes, the WebSocket upgrade included: the
    # signature covers the <Stream url> with no parameters.
    ws_headers = {}
    if auth_token:
        ws_headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            stream.url, {}
        )
    async with connect(ws_url_override or stream.url, additional_headers=ws_headers,
                       max_size=None) as ws:
        session = _MediaSession(
            ws, result, account_sid, [_to_ulaw_frames(pcm[s:e]) for s, e in spans],
            reply_timeout_s=reply_timeout_s, max_call_s=max_call_s, behaviour=behaviour,
        )
        await session.run(result.call_sid, stream.parameters)


# ------------------------------------------------------------ Twilio's callbacks


async def post_twilio_request(
    server_url: str,
    path: str,
    params: dict[str, str],
    *,
    auth_token: str | None = None,
    public_base_url: str | None = None,
) -> httpx.Response:
    """POST a form to the server the way Twilio does, signed when a token is given.

    The signature (``X-Twilio-Signature``, computed by the twilio SDK) covers the
    *public* URL, ``public_base_url + path``, as Twilio signs the URL it was given.
    Source: https://www.twilio.com/docs/usage/webhooks/webhooks-security

    Args:
        server_url: Where the server listens, e.g. ``http://127.0.0.1:8000``.
        path: e.g. ``/twilio/call-status`` (may carry a query string).
        params: The form fields.
        auth_token: Twilio auth token, or None for an unsigned request.
        public_base_url: The server's public base URL (default ``server_url``).

    Returns:
        The server's response, whatever its status.
    """
    headers = {"User-Agent": "TwilioProxy/1.1"}
    if auth_token:
        public_url = (public_base_url or server_url).rstrip("/") + path
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            public_url, params
        )
    async with httpx.AsyncClient(timeout=15.0) as http:
        return await http.post(server_url.rstrip("/") + path, data=params, headers=headers)


def status_callback_params(
    call_sid: str,
    account_sid: str,
    status: str,
    *,
    sequence_number: int,
    from_number: str = "+15559870002",
    to_number: str = "+15551230001",
    duration_s: int | None = None,
) -> dict[str, str]:
    """Form fields of a call progress callback for an outbound call, as Twilio sends them.

    Sources: https://www.twilio.com/docs/voice/api/call-resource#statuscallbackevent
    and https://www.twilio.com/docs/voice/twiml#request-parameters (``CallStatus``
    ``initiated``/``ringing``/``in-progress``/``completed``/``busy``/``no-answer``/
    ``failed``/``canceled``; ``CallDuration`` in s with ``completed``;
    ``SequenceNumber`` orders the callbacks; ``CallbackSource=call-progress-events``).

    Args:
        call_sid: The call.
        account_sid: The account.
        status: ``CallStatus``.
        sequence_number: ``SequenceNumber`` (0 for the first callback).
        from_number: ``From`` (our number, for an outbound call).
        to_number: ``To`` (the person called).
        duration_s: ``CallDuration``, for a finished call.

    Returns:
        The form.
    """
    params = {
        "AccountSid": account_sid, "ApiVersion": API_VERSION, "CallSid": call_sid,
        "CallStatus": status, "CallbackSource": "call-progress-events", "Direction": "outbound-api",
        "From": from_number, "To": to_number, "SequenceNumber": str(sequence_number),
        "Timestamp": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
    }
    if duration_s is not None:
        params["CallDuration"] = str(duration_s)
    return params


def amd_callback_params(
    call_sid: str, account_sid: str, answered_by: str, *, duration_ms: int = 2500
) -> dict[str, str]:
    """Form fields of the asynchronous AMD callback (``AsyncAmdStatusCallback``).

    Source: https://www.twilio.com/docs/voice/answering-machine-detection (``AnsweredBy``:
    ``human``, ``machine_start``, ``machine_end_beep``, ``machine_end_silence``,
    ``machine_end_other``, ``fax``, ``unknown``; ``MachineDetectionDuration`` in ms).
    """
    return {
        "AccountSid": account_sid, "CallSid": call_sid, "AnsweredBy": answered_by,
        "MachineDetectionDuration": str(duration_ms),
    }


def _redacted(parameters: dict[str, str]) -> dict[str, str]:
    """The stream parameters with the one-time stream token hidden (for logs)."""
    return {k: ("[redacted]" if k == "stream_token" else v) for k, v in parameters.items()}


def _scale_speech(pcm: np.ndarray, spans: list[tuple[int, int]], dbfs: float) -> np.ndarray:
    """Scale ``pcm`` so the RMS of its voiced 20 ms frames is ``dbfs`` (dBFS)."""
    speech = np.concatenate([pcm[s:e] for s, e in spans]).astype(np.float64)
    frames = speech[: len(speech) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = rms[rms > np.percentile(rms, 50)]
    level = 20 * np.log10(np.sqrt(np.mean(active**2)) / 32768)
    gain = 10 ** ((dbfs - level) / 20)
    return np.clip(np.rint(pcm * gain), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------- CLI


def _load_dotenv(path: Path) -> None:
    """Load ``KEY=VALUE`` lines from ``path`` into the environment (no override)."""
    if not path.is_file():
        return
    try:
        from dotenv import load_dotenv
    except ImportError:
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.removeprefix("export ").split("=", 1)
            os.environ.setdefault(key.strip(), value.strip().strip("'\""))
    else:
        load_dotenv(path, override=False)


def _print_turns(server_url: str, call_sid: str, api_key: str | None = None) -> None:
    """Print the server's record of the call (``GET /api/calls/{sid}``), if it has one."""
    url = f"{server_url.rstrip('/')}/api/calls/{call_sid}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        for attempt in range(3):  # the server may still be saving the record
            response = httpx.get(url, timeout=5.0, headers=headers)
            if response.status_code != 404 or attempt == 2:
                break
            time.sleep(0.5)
    except httpx.HTTPError as exc:
        logger.info("No call record from the server: {}", exc)
        return
    if response.status_code != 200:
        logger.info("No call record from the server (HTTP {})", response.status_code)
        return
    print("Turns recorded by the server:")
    for turn in response.json().get("turns", []):
        span = f"{turn.get('started_at')} - {turn.get('ended_at')}"
        print(f"  [{span}] {turn.get('role')}: {turn.get('text')}")


def main(argv: list[str] | None = None) -> int:
    """Command line: place one call and print what happened.

    Returns:
        0 if every utterance was answered, else 1 (also when the call failed to set up).
    """
    _load_dotenv(Path.cwd() / ".env")
    parser = argparse.ArgumentParser(
        prog="python -m offline.caller", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--wav", required=True, help="caller speech, 16-bit PCM WAV")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="agent server base URL")
    parser.add_argument("--out", help="save the call as heard to this WAV")
    parser.add_argument("--public-base-url", default=os.environ.get("PUBLIC_BASE_URL"),
                        help="public base URL the signature covers (env PUBLIC_BASE_URL)")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                        help="Twilio auth token for X-Twilio-Signature (env TWILIO_AUTH_TOKEN)")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"),
                        help="the server's API key, to read the call record (env API_KEY)")
    parser.add_argument("--ws-url", help="connect to this WebSocket URL instead of the TwiML's")
    parser.add_argument("--from", dest="from_number", default="+15551230001")
    parser.add_argument("--to", dest="to_number", default="+15559870002")
    parser.add_argument("--min-gap-ms", type=int, default=350)
    parser.add_argument("--reply-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--max-call", type=float, default=120.0, help="seconds")
    parser.add_argument("--graph",
                        help="ask for this pipeline graph (e.g. cascade) instead of the TwiML's")
    args = parser.parse_args(argv)

    try:
        result = uvloop.run(
            run_call(
                args.server, args.wav, auth_token=args.auth_token or None,
                public_base_url=args.public_base_url or None, from_number=args.from_number,
                to_number=args.to_number, out_wav=args.out, min_gap_ms=args.min_gap_ms,
                reply_timeout_s=args.reply_timeout, max_call_s=args.max_call,
                ws_url_override=args.ws_url, graph=args.graph,
            )
        )
    except (CallSetupError, ValueError, OSError, httpx.HTTPError, WebSocketException) as exc:
        logger.error("Call failed: {}: {}", type(exc).__name__, exc)
        return 1
    _print_turns(args.server, result.call_sid, args.api_key or None)
    print(result.summary())
    return 0 if result.all_answered else 1


if __name__ == "__main__":
    sys.exit(main())
