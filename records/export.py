"""A call record as a file: JSON (everything the API gives) or plain text (a readable transcript).

The text form lists the call's facts, then its turns and tool calls in time order,
each at its offset from the start of the media stream (``mm:ss.s``)::

    [00:03.2] Caller: I'd like to book a room.
    [00:04.0] Agent (after 640 ms): Of course. Which city? [interrupted: heard 1200 ms]
    [00:06.1] Tool search_hotels 12.3 ms: {"city": "Paris"} -> {"hotels": [...]}
"""

from __future__ import annotations

import json
from typing import Any

from records.store import parse_time

__all__ = ["export_filename", "to_json", "to_text"]


def export_filename(call_sid: str, extension: str) -> str:
    """The download's file name, e.g. ``call-CA123.txt`` (SID stripped of anything odd).

    Args:
        call_sid: The call's SID.
        extension: ``json`` or ``txt``.
    """
    safe = "".join(c for c in call_sid if c.isalnum() or c in "-_")[:64] or "call"
    return f"call-{safe}.{extension}"


def to_json(record: dict[str, Any]) -> str:
    """The record as indented JSON (the shape of ``GET /api/calls/{call_sid}``).

    Args:
        record: From :meth:`records.store.CallStore.get_call`.
    """
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


def to_text(record: dict[str, Any]) -> str:
    """The record as a plain-text transcript.

    Args:
        record: From :meth:`records.store.CallStore.get_call`.

    Returns:
        UTF-8-ready text, lines ending in ``\\n``.
    """
    lines = [f"Call {record['call_sid']}"]
    if record.get("direction"):
        lines.append(f"Direction: {record['direction']}")
    lines.append(f"From: {record.get('from') or '-'}   To: {record.get('to') or '-'}"
                 f"   Provider: {record.get('provider') or '-'}")
    started, ended = record.get("started_at"), record.get("ended_at")
    span = ""
    if started and ended:
        span = f" ({(parse_time(ended) - parse_time(started)).total_seconds():.1f} s)"
    lines.append(f"Started: {started or '-'}   Ended: {ended or '-'}{span}")
    lines.append(f"End reason: {record.get('end_reason') or '-'}")
    history = record.get("status_history") or []
    if history:
        lines.append("Status: " + " -> ".join(h["status"] for h in history))
    if record.get("preset"):
        lines.append(f"Preset: {record['preset']}")
    if record.get("answered_by"):
        lines.append(f"Answered by: {record['answered_by']}")
    latencies = [t["latency_ms"] for t in record.get("turns", []) if t.get("latency_ms") is not None]
    if latencies:
        lines.append(f"Reply latency: mean {sum(latencies) / len(latencies):.0f} ms, "
                     f"max {max(latencies)} ms over {len(latencies)} replies")
    lines.append("")
    origin = parse_time(started) if started else None
    items = [(t["started_at"], 0, t) for t in record.get("turns", [])]
    items += [(c["started_at"], 1, c) for c in record.get("tool_calls", [])]
    for at, kind, item in sorted(items, key=lambda x: (x[0], x[1])):
        stamp = _offset(origin, at)
        if kind == 1:
            outcome = item["result"] if item.get("error") is None else {"error": item["error"]}
            lines.append(f"[{stamp}] Tool {item['name']} {item['duration_ms']} ms: "
                         f"{json.dumps(item.get('arguments'), ensure_ascii=False)} -> "
                         f"{json.dumps(outcome, ensure_ascii=False)}")
            continue
        if item["role"] == "user":
            lines.append(f"[{stamp}] Caller: {item['text']}")
            continue
        after = f" (after {item['latency_ms']} ms)" if item.get("latency_ms") is not None else ""
        line = f"[{stamp}] Agent{after}: {item['text']}"
        if item.get("interrupted"):
            line += f" [interrupted: heard {item.get('audio_played_ms') or 0} ms"
            generated = item.get("generated_text") or ""
            if generated and generated != item["text"]:
                line += f"; it was saying: {generated}"
            line += "]"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _offset(origin, at: str) -> str:
    if origin is None:
        return at
    seconds = max(0.0, (parse_time(at) - origin).total_seconds())
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"
