"""Calls leave nothing behind: after 20 calls the server runs the tasks and threads it ran before.

A functional check (no timing or memory thresholds; ``make bench`` measures RSS and
teardown time over 500 calls). Calls are short (1 s of real speech, hung up during
the greeting, four at a time), some hung up with ``stop``, some by dropping the
socket. The server's own count comes from ``GET /debug/stats`` (``DIAGNOSTICS``).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from offline.caller import CallerBehaviour, run_call
from tests.support import TOKEN, running_server, trimmed_wav


async def _settled_stats(client: httpx.AsyncClient) -> dict:
    for _ in range(100):
        stats = (await client.get("/debug/stats", params={"collect": "true"})).json()
        health = (await client.get("/health")).json()
        if stats["calls_started"] == stats["calls_ended"] and health["active_calls"] == 0:
            return stats
        await asyncio.sleep(0.1)
    raise AssertionError(f"calls still running: {stats}")


@pytest.mark.asyncio
async def test_twenty_calls_leave_no_tasks_or_threads_behind(tmp_path):
    wav = trimmed_wav(tmp_path, 1.0)
    with running_server(tmp_path, DIAGNOSTICS="true") as (url, _):

        async def lane(count: int, hang_up: str) -> None:
            for _ in range(count):
                await run_call(url, wav, auth_token=TOKEN, max_call_s=1.5,
                               behaviour=CallerBehaviour(hang_up=hang_up))

        async with httpx.AsyncClient(base_url=url) as client:
            await asyncio.gather(lane(1, "stop"), lane(1, "abort"))  # warm-up: pools, caches
            before = await _settled_stats(client)
            await asyncio.gather(lane(5, "stop"), lane(5, "abort"), lane(5, "stop"), lane(5, "stop"))
            after = await _settled_stats(client)

    assert after["calls_ended"] - before["calls_ended"] == 20
    assert after["tasks"] == before["tasks"], (before, after)
    assert after["thread_names"] == before["thread_names"], (before["thread_names"], after["thread_names"])
    assert after["teardown_ms"]["n"] == 22  # every call's end was seen after its hang-up
    # Startup's objects are frozen: Python's full collections skip them, so they no
    # longer stall every call for 100+ ms (the collections are timed, too).
    assert after["gc_frozen"] > 0
    assert after["gc_pause_ms"]["n"] > 0
    # The calls up at once shared Silero runs (processors.vad.SileroBatcher).
    assert after["vad_windows"] > after["vad_runs"] > 0
