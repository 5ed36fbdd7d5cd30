"""End to end on PostgreSQL: with ``DATABASE_URL`` naming PostgreSQL, a real call's record lives there."""

from __future__ import annotations

import statistics

import httpx
import pytest

from offline.caller import run_call
from records import CallStore
from tests.support import AUDIO, TOKEN, ended_record, running_server


@pytest.mark.asyncio
async def test_a_call_is_recorded_in_postgresql_turn_by_turn(tmp_path, postgres_url):
    with running_server(tmp_path, DATABASE_URL=postgres_url) as (url, _log):
        result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90)
        served = await ended_record(url, result.call_sid)
        async with httpx.AsyncClient(base_url=url) as client:
            exported = (await client.get(f"/api/calls/{result.call_sid}/export.txt")).text
    store = CallStore(postgres_url)  # straight from PostgreSQL, the server gone
    try:
        record = await store.get_call(result.call_sid)
    finally:
        await store.close()
    assert record == served
    assert record["end_reason"] and record["provider"] == "local"
    users = [t for t in record["turns"] if t["role"] == "user"]
    replies = [t for t in record["turns"] if t["role"] == "assistant"]
    assert len(users) >= 3 and len(replies) >= 3  # the greeting, then the replies
    assert replies[0]["latency_ms"] is None  # the greeting answered nobody
    latencies = [t["latency_ms"] for t in replies[1:] if t["latency_ms"] is not None]
    # Our reply latency agrees with the delay the caller lived: from the end of their
    # speech to the first reply audio they received (measured by the simulated caller).
    lived = [u["reply_delay_ms"] for u in result.utterances if u["replied"]]
    assert latencies and lived
    assert abs(statistics.median(latencies) - statistics.median(lived)) < 200, (latencies, lived)
    assert f"Call {result.call_sid}" in exported and "Caller:" in exported
    assert not (tmp_path / "calls.db").exists()  # nothing went to the SQLite default
