"""Barge-in latency: the caller's speech onset -> Twilio ``clear`` on the wire.

The simulated caller talks over the agent 2 s into each reply; the time from the
onset of its speech (first 20 ms frame within 20 dB of the utterance's peak) to the
``clear`` it receives is one sample. Measured for a caller at the recording's level
and for a quiet caller (-35 dBFS) over the agent's own echo at -20 dB.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import uvloop

from config import Settings
from offline.caller import CallerBehaviour, run_call
from offline.server_process import server_process

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"


@dataclass
class LatencyResult:
    """Barge-in latencies of one caller condition.

    Parameters:
        condition: What kind of caller.
        samples_ms: Onset -> clear for each interruption, in ms.
        missed: Interruptions that produced no clear while the caller spoke.
    """

    condition: str
    samples_ms: list[float]
    missed: int

    def percentile(self, p: float) -> float:
        """The p-th percentile of the samples, in ms."""
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure(url: str, condition: str, behaviour: CallerBehaviour, target: int) -> LatencyResult:
    """Interrupt the agent until ``target`` samples are collected.

    Args:
        url: The server's base URL.
        condition: A label for the caller condition.
        behaviour: The caller's behaviour (barge-in after a delay, level, echo).
        target: How many interruptions to measure.

    Returns:
        The latencies.
    """
    samples: list[float] = []
    missed = 0
    while len(samples) + missed < target:
        result = await run_call(url, str(AUDIO / "jfk_8k.wav"), behaviour=behaviour, max_call_s=90)
        for index, utterance in enumerate(result.utterances):
            if not utterance.get("barged_in") or len(samples) + missed >= target:
                continue
            clear = next(
                (c for c in result.clear_events if c["utterance"] == index and c["state"] == "speaking"),
                None,
            )
            if clear is None:
                missed += 1
            else:
                samples.append((clear["at"] - utterance["onset_at"]) * 1000)
    return LatencyResult(condition, samples, missed)


def run(interruptions: int = 20) -> list[LatencyResult]:
    """Start the server and measure both caller conditions.

    Args:
        interruptions: Interruptions per condition.

    Returns:
        One result per condition.
    """
    conditions = {
        "caller at recording level": CallerBehaviour(barge_in_after_ms=2000),
        "quiet caller (-35 dBFS) over -20 dB echo": CallerBehaviour(
            barge_in_after_ms=2000, speech_dbfs=-35, echo_db=-20
        ),
    }
    with tempfile.TemporaryDirectory() as tmp, server_process(Path(tmp)) as (url, _):
        return [
            uvloop.run(measure(url, name, behaviour, interruptions))
            for name, behaviour in conditions.items()
        ]


def report(results: list[LatencyResult]) -> str:
    """A text table of the results, with the VAD start time they include."""
    vad_start_ms = Settings.model_fields["BARGE_IN_MIN_SECS"].default * 1000
    lines = [
        f"Barge-in: caller speech onset -> Twilio clear (VAD start time {vad_start_ms:.0f} ms)",
        f"{'caller':44} {'n':>3} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'missed':>6}",
    ]
    for r in results:
        lines.append(
            f"{r.condition:44} {len(r.samples_ms):3d} {r.percentile(50):7.0f} "
            f"{r.percentile(95):7.0f} {max(r.samples_ms):7.0f} {r.missed:6d}"
        )
    lines.append(f"(mean {statistics.mean(s for r in results for s in r.samples_ms):.0f} ms over all)")
    return "\n".join(lines)
