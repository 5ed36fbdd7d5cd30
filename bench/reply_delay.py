"""Reply delay after the caller stops, per graph and way of detecting the end of their turn.

From the last frame of each caller utterance sent to the first agent audio the
simulated caller plays, with the offline agents answering at once (so the figure is
turn detection plus our pipeline, not a model's thinking time). For the cascade that
includes its three HTTP round trips to the offline OpenAI server: the transcription of
the utterance, the streamed chat completion and the first sentence's speech (espeak-ng).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import uvloop

from offline.caller import run_call
from offline.server_process import server_process

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
#: What is measured: a label and the server's environment.
MODES = {
    "local": ("realtime: Silero VAD + 0.6 s silence", {"TURN_DETECTION": "local"}),
    "smart": ("realtime: Silero VAD + smart-turn v3", {"TURN_DETECTION": "smart"}),
    "server": ("realtime: provider VAD (offline agent's)", {"TURN_DETECTION": "server"}),
    "cascade-smart": ("cascade: Silero VAD + smart-turn v3", {"GRAPH": "cascade", "CASCADE_TURN_DETECTION": "smart"}),
    "cascade-local": ("cascade: Silero VAD + 0.6 s silence", {"GRAPH": "cascade", "CASCADE_TURN_DETECTION": "local"}),
}


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run(calls: int = 2, modes: list[str] | None = None) -> dict[str, list[float]]:
    """Reply delays (ms) per graph and turn-detection mode, over ``calls`` calls of jfk_8k.wav each.

    Args:
        calls: Calls per mode.
        modes: Keys of :data:`MODES` (default: all).

    Returns:
        The delays of every answered utterance, in ms, per mode.
    """
    results: dict[str, list[float]] = {}
    for mode in modes or list(MODES):
        delays: list[float] = []
        env = MODES[mode][1]
        with tempfile.TemporaryDirectory() as tmp, server_process(Path(tmp), **env) as (url, _):
            for _ in range(calls):
                result = uvloop.run(run_call(url, str(AUDIO / "jfk_8k.wav"), max_call_s=90))
                graph = result.parameters.get("graph")
                if graph != env.get("GRAPH", "realtime"):
                    raise RuntimeError(f"{mode}: the server ran the {graph!r} graph")
                delays += [u["reply_delay_ms"] for u in result.utterances if u["replied"]]
        results[mode] = delays
    return results


def report(results: dict[str, list[float]]) -> str:
    """A text table of the reply delays."""
    lines = [
        "Reply delay: caller stops -> agent audio heard (offline agent answers at once)",
        f"{'graph: turn detection':40} {'n':>3} {'p50 ms':>7} {'p95 ms':>7}",
    ]
    for mode, delays in results.items():
        if delays:
            lines.append(
                f"{MODES[mode][0]:40} {len(delays):3d} {_percentile(delays, 50):7.0f} {_percentile(delays, 95):7.0f}"
            )
        else:
            lines.append(f"{MODES[mode][0]:40}   0 (no reply)")
    return "\n".join(lines)
