"""Prometheus metrics of one server process, served as text at ``GET /metrics``.

Counted from the call-record store's events (:mod:`events` lists them), so what the
metrics say and what the records hold agree:

- ``phone_agent_active_calls`` (gauge): calls whose pipeline runs in this process now;
- ``phone_agent_calls_total{end_reason}``: calls ended;
- ``phone_agent_turns_total{role}``: completed turns, ``user`` or ``assistant``;
- ``phone_agent_reply_latency_seconds`` (histogram): caller stopped speaking (our VAD)
  -> the reply's first audio frame sent to Twilio;
- ``phone_agent_barge_ins_total``: agent replies the caller cut off;
- ``phone_agent_tool_calls_total{name}``: tool calls;
- ``phone_agent_errors_total{kind}``: ``model_error`` and ``error`` call ends, failed
  tool calls (``tool``), and anything else the server reports through :meth:`Metrics.error`.

Each process has its own registry (several apps in one test process must not
collide); with several server processes, scrape each one. Exposition format:
https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS_S", "Metrics"]

#: Reply latency histogram buckets, in s (phone conversations feel slow past ~1 s).
LATENCY_BUCKETS_S = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
#: Call end reasons that count as errors.
ERROR_END_REASONS = frozenset({"error", "model_error"})


class Metrics:
    """The process's metrics; :meth:`observe` is a call-record store listener.

    Args:
        active_calls: Gives the number of calls running in this process now.
    """

    def __init__(self, active_calls: Callable[[], int]):
        self.registry = CollectorRegistry()
        prefix = "phone_agent"
        self.active_calls = Gauge(f"{prefix}_active_calls", "Calls running in this process now",
                                  registry=self.registry)
        self.active_calls.set_function(active_calls)
        self.calls = Counter(f"{prefix}_calls", "Calls ended, by end reason", ["end_reason"],
                             registry=self.registry)
        self.turns = Counter(f"{prefix}_turns", "Completed turns, by role", ["role"],
                             registry=self.registry)
        self.latency = Histogram(
            f"{prefix}_reply_latency_seconds",
            "Caller stopped speaking -> first reply audio sent to Twilio, in s",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.barge_ins = Counter(f"{prefix}_barge_ins", "Agent replies the caller cut off",
                                 registry=self.registry)
        self.tool_calls = Counter(f"{prefix}_tool_calls", "Tool calls, by tool", ["name"],
                                  registry=self.registry)
        self.errors = Counter(f"{prefix}_errors", "Errors, by kind", ["kind"], registry=self.registry)

    def observe(self, event: dict[str, Any]) -> None:
        """Count one call-record event (the store calls this after each write).

        Args:
            event: An event as :mod:`events` describes them.
        """
        kind = event.get("type")
        if kind == "turn":
            self.turns.labels(role=event["role"]).inc()
            latency = event.get("latency_ms")
            if latency is not None:
                self.latency.observe(latency / 1000)
        elif kind == "interruption":
            self.barge_ins.inc()
        elif kind == "tool_call":
            self.tool_calls.labels(name=event["name"]).inc()
            if event.get("error") is not None:
                self.error("tool")
        elif kind == "call_ended":
            reason = event.get("end_reason") or "unknown"
            self.calls.labels(end_reason=reason).inc()
            if reason in ERROR_END_REASONS:
                self.error(reason)

    def error(self, kind: str) -> None:
        """Count one error.

        Args:
            kind: A short label, e.g. ``model_error``, ``tool``.
        """
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        """The metrics in Prometheus's text exposition format (:data:`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)
