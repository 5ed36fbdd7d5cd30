"""Load diagnostics: event-loop lag, the latency our code adds, call teardown time.

``make bench`` turns these on (``DIAGNOSTICS=true``) and reads them from
``GET /debug/stats``. When off, each hook is one context-variable lookup; when on, about
a microsecond per 20 ms frame.

What is measured, per server process:

- **Event-loop lag**: a task asks to wake every :data:`LAG_INTERVAL_S` and records
  how late it woke (ms). Every call's audio shares this loop, so lag is delay added
  to every frame of every call.
- **Ingress** (caller -> model): for each ``input_audio_buffer.append`` sent to the
  model, the age of the newest caller audio it carries, from the arrival of the
  Twilio ``media`` frame holding that audio (ms). Audio is matched by position in
  the stream (seconds of caller audio received vs seconds of audio handed to the
  model socket), so audio a resampler holds back shows up as latency, as it should.
- **Egress** (model -> caller): from the first audio delta of a model response to
  the first Twilio ``media`` message sent after it (ms).
- **Teardown**: from the caller's hang-up (``stop`` or the socket closing) to the
  end of the call's handler, pipeline stopped and record closed (ms).
- **GC pauses**: how long each of Python's garbage collections held the process
  (ms, every generation), and how many objects the server froze at startup
  (``gc.freeze()``: full collections skip them).
- **VAD batching**: Silero ONNX runs and the windows they scored since the last
  reset (:class:`~processors.vad.SileroBatcher`); windows per run is the batch size.

The hooks are :class:`CallProbe` methods, called by the serializer
(:class:`~processors.twilio_serializer.TwilioMediaSerializer`), the model service
(:class:`ProbedRealtimeMixin`) and :func:`bot.run_bot`. The call's probe travels in
a context variable: Pipecat's tasks for a call are created inside the call's task,
so they see it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import threading
import time
from collections import deque
from typing import Any

from fastapi import FastAPI

from processors.vad import SileroBatcher

__all__ = [
    "CALL_PROBE",
    "LAG_INTERVAL_S",
    "STATS",
    "CallProbe",
    "ProbedRealtimeMixin",
    "ProcessStats",
    "install",
    "new_call_probe",
    "percentile",
]

#: How often the event-loop lag probe wakes, in s.
LAG_INTERVAL_S = 0.01
#: Samples kept per figure (older ones are dropped).
MAX_SAMPLES = 200_000

#: The current call's probe, or None when diagnostics are off.
CALL_PROBE: contextvars.ContextVar["CallProbe | None"] = contextvars.ContextVar(
    "call_probe", default=None
)


_FIGURES = ("loop_lag_ms", "ingress_ms", "egress_ms", "teardown_ms", "gc_pause_ms")


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class ProcessStats:
    """The figures of one server process (see the module docstring); ms unless named."""

    def __init__(self) -> None:
        self.enabled = False
        self.loop_lag_ms: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.ingress_ms: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.egress_ms: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.teardown_ms: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.gc_pause_ms: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._gc_started = 0.0
        self.calls_started = 0
        self.calls_ended = 0
        self._vad_counts = (0, 0)  # the batcher's (runs, windows) at the last reset
        self._lag_task: asyncio.Task | None = None

    def reset(self) -> None:
        """Forget the samples (counters of calls stay); call on the server's loop."""
        for name in _FIGURES:
            getattr(self, name).clear()
        self._vad_counts = SileroBatcher.counts()

    def start_lag_probe(self) -> None:
        """Start the event-loop lag task on the running loop, and time GC pauses (once)."""
        if self._lag_task is None or self._lag_task.done():
            self._lag_task = asyncio.get_running_loop().create_task(self._probe_lag(), name="loop-lag")
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        # gc.callbacks: called with "start" and "stop" around every collection.
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause_ms.append((time.perf_counter() - self._gc_started) * 1000)

    async def stop_lag_probe(self) -> None:
        """Stop the lag task and the GC timing."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
            self._lag_task = None

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_INTERVAL_S
            await asyncio.sleep(LAG_INTERVAL_S)
            self.loop_lag_ms.append(max(0.0, loop.time() - due) * 1000)

    def snapshot(self, *, collect: bool = False) -> dict[str, Any]:
        """The figures as JSON-ready numbers.

        Args:
            collect: Run the garbage collector first (for leak checks: tasks and
                objects left only to cycles are counted after it).

        Returns:
            ``{calls_started, calls_ended, tasks, threads, rss_bytes, loop_lag_ms:
            {n, p50, p95, p99, max}, ingress_ms: {...}, egress_ms: {...},
            teardown_ms: {...}, gc_pause_ms: {...}, gc_frozen, vad_runs,
            vad_windows}``; the percentile fields are None without samples.
            ``gc_frozen`` counts the objects frozen by ``gc.freeze()``;
            ``vad_runs`` and ``vad_windows`` count Silero runs and the windows they
            scored since the last reset. Call on the server's loop.
        """
        if collect:
            gc.collect()
        figures: dict[str, Any] = {
            "pid": os.getpid(),
            "calls_started": self.calls_started,
            "calls_ended": self.calls_ended,
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "thread_names": sorted(t.name for t in threading.enumerate()),
            "rss_bytes": _rss_bytes(),
            "gc_frozen": gc.get_freeze_count(),
        }
        runs, windows = SileroBatcher.counts()
        figures["vad_runs"] = runs - self._vad_counts[0]
        figures["vad_windows"] = windows - self._vad_counts[1]
        for name in _FIGURES:
            values = list(getattr(self, name))
            figures[name] = {
                "n": len(values),
                **{f"p{p}": percentile(values, p) for p in (50, 95, 99)},
                "max": max(values) if values else None,
            }
        return figures


def _rss_bytes() -> int:
    """Resident set size of this process, in bytes (from /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


#: This process's figures.
STATS = ProcessStats()


class CallProbe:
    """One call's latency bookkeeping (see the module docstring).

    Args:
        stats: Where the samples go.
    """

    def __init__(self, stats: ProcessStats = STATS) -> None:
        self._stats = stats
        self._arrivals: deque[tuple[float, float]] = deque()  # (end of frame in s of audio, t)
        self._received_s = 0.0  # caller audio received, s
        self._to_model_s = 0.0  # caller audio handed to the model socket, s
        self._model_audio_at: float | None = None
        self.hung_up_at: float | None = None

    def caller_audio(self, seconds: float) -> None:
        """A Twilio ``media`` frame of ``seconds`` of audio arrived now."""
        self._received_s += seconds
        self._arrivals.append((self._received_s, time.perf_counter()))

    def audio_to_model(self, seconds: float, *, sent: bool) -> None:
        """``seconds`` of caller audio were handed to the model socket now.

        Args:
            seconds: Duration of the audio in the ``append`` event, s.
            sent: False when the service dropped it (no connection): it still
                advances the position, but is no latency sample.
        """
        self._to_model_s += seconds
        arrivals = self._arrivals
        position = self._to_model_s - 1e-6
        while len(arrivals) > 1 and arrivals[0][0] < position:
            arrivals.popleft()
        if sent and arrivals and arrivals[0][0] >= position:
            self._stats.ingress_ms.append((time.perf_counter() - arrivals[0][1]) * 1000)

    def model_audio_started(self) -> None:
        """The first audio delta of a model response arrived now."""
        self._model_audio_at = time.perf_counter()

    def media_sent(self) -> None:
        """A Twilio ``media`` message is being sent now."""
        if self._model_audio_at is not None:
            self._stats.egress_ms.append((time.perf_counter() - self._model_audio_at) * 1000)
            self._model_audio_at = None

    def cleared(self) -> None:
        """The agent was interrupted: audio of the cancelled response is no sample."""
        self._model_audio_at = None

    def hung_up(self) -> None:
        """The caller hung up now (``stop`` or the socket closed); the first one counts."""
        if self.hung_up_at is None:
            self.hung_up_at = time.perf_counter()

    def ended(self) -> None:
        """The call's handler is done: records the teardown time after a hang-up."""
        self._stats.calls_ended += 1
        if self.hung_up_at is not None:
            self._stats.teardown_ms.append((time.perf_counter() - self.hung_up_at) * 1000)


def new_call_probe(stats: ProcessStats = STATS) -> CallProbe | None:
    """Start a call's probe and make it the current one, if diagnostics are on.

    Returns:
        The probe (also in :data:`CALL_PROBE`), or None when off.
    """
    if not stats.enabled:
        return None
    stats.calls_started += 1
    probe = CallProbe(stats)
    CALL_PROBE.set(probe)
    return probe


class ProbedRealtimeMixin:
    """Latency hooks for an OpenAI Realtime service (Pipecat's ``OpenAIRealtimeLLMService``).

    Put it first in the bases. It reports the caller audio sent on the model socket
    (decoded length of each ``input_audio_buffer.append``, over the service's
    ``input_audio_bytes_per_s``: 48000 for the Realtime API's 16-bit PCM at 24 kHz,
    8000 for ``audio/pcmu``) and the first audio delta of each response. Nothing else
    changes.
    """

    _PCM_BYTES_PER_S = 24000 * 2  # 16-bit mono at 24 kHz (platform.openai.com realtime docs)

    async def _send_user_audio(self, frame):
        probe = CALL_PROBE.get()
        if probe is None:
            return await super()._send_user_audio(frame)
        self._probe_sending_user_audio = True
        try:
            return await super()._send_user_audio(frame)
        finally:
            self._probe_sending_user_audio = False

    async def send_client_event(self, event):
        probe = CALL_PROBE.get()
        if probe is not None and getattr(self, "_probe_sending_user_audio", False):
            audio = getattr(event, "audio", None)
            if isinstance(audio, str):
                size = len(audio) * 3 // 4 - audio[-2:].count("=")
                connected = self._websocket is not None and not self._disconnecting
                rate = getattr(self, "input_audio_bytes_per_s", self._PCM_BYTES_PER_S)
                probe.audio_to_model(size / rate, sent=connected)
        return await super().send_client_event(event)

    async def _handle_evt_audio_delta(self, evt):
        probe = CALL_PROBE.get()
        if probe is not None:
            current = self._current_audio_response
            if current is None or current.response_id != evt.response_id:
                probe.model_audio_started()
        return await super()._handle_evt_audio_delta(evt)


def install(app: FastAPI, *, dependencies: list | None = None, stats: ProcessStats = STATS) -> None:
    """Turn diagnostics on for this process and serve them.

    Adds ``GET /debug/stats`` (the :meth:`ProcessStats.snapshot`; ``?collect=true``
    runs the garbage collector first) and ``POST /debug/stats/reset``. Call
    :meth:`ProcessStats.start_lag_probe` from the app's lifespan.

    Args:
        app: The FastAPI app.
        dependencies: FastAPI dependencies guarding both routes (e.g. the API key).
        stats: The figures to serve.
    """
    stats.enabled = True

    @app.get("/debug/stats", dependencies=dependencies or [])
    async def debug_stats(collect: bool = False) -> dict:
        """This process's load figures (see :mod:`diagnostics`)."""
        return stats.snapshot(collect=collect)

    @app.post("/debug/stats/reset", status_code=204, dependencies=dependencies or [])
    async def debug_stats_reset() -> None:
        """Forget the samples so far (start of a measurement)."""
        stats.reset()
