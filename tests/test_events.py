"""Live events across server processes through a real Redis (Debian's redis-server)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from events import EventBus
from offline.caller import run_call
from tests.support import AUDIO, TOKEN, running_server, server_pid


async def _next(queue: asyncio.Queue, timeout_s: float = 5.0) -> dict:
    return await asyncio.wait_for(queue.get(), timeout_s)


@pytest.mark.asyncio
async def test_in_process_bus_delivers_to_every_subscriber():
    bus = EventBus(None)
    await bus.start()
    async with bus.subscribe() as first, bus.subscribe() as second:
        bus.publish({"type": "turn", "call_sid": "CA1", "text": "hi"})
        assert (await _next(first))["text"] == "hi" and (await _next(second))["text"] == "hi"
    assert bus.subscriber_count == 0
    await bus.stop()


@pytest.mark.asyncio
async def test_redis_carries_events_between_buses(redis_url):
    one, two = EventBus(redis_url), EventBus(redis_url)
    await one.start()
    await two.start()
    try:
        async with one.subscribe() as mine, two.subscribe() as theirs:
            for n in range(3):
                one.publish({"type": "turn", "call_sid": "CA1", "n": n})
            got = [await _next(theirs) for _ in range(3)]
            assert [e["n"] for e in got] == [0, 1, 2] and {e["origin"] for e in got} == {one.origin}
            assert [(await _next(mine))["n"] for _ in range(3)] == [0, 1, 2]  # once, through Redis
            await asyncio.sleep(0.2)
            assert mine.empty() and theirs.empty()
    finally:
        await one.stop()
        await two.stop()


@pytest.mark.asyncio
async def test_a_call_on_one_server_process_reaches_events_clients_of_another(tmp_path, redis_url):
    """Two real server processes share REDIS_URL; the call runs on A, the watcher is on B."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_server(tmp_path / "a", REDIS_URL=redis_url) as (url_a, log_a), \
            running_server(tmp_path / "b", REDIS_URL=redis_url) as (url_b, log_b):
        pid_a, pid_b = server_pid(log_a), server_pid(log_b)
        assert pid_a != pid_b
        events: list[dict] = []
        async with websockets.connect(url_b.replace("http", "ws") + "/events") as watcher:
            async def watch():
                async for message in watcher:
                    events.append(json.loads(message))
                    if events[-1]["type"] == "call_ended":
                        return

            watching = asyncio.create_task(watch())
            result = await run_call(url_a, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90)
            await asyncio.wait_for(watching, 15)
        async with httpx.AsyncClient() as client:
            on_b = (await client.get(f"{url_b}/api/calls/{result.call_sid}")).status_code
    mine = [e for e in events if e["call_sid"] == result.call_sid]
    kinds = [e["type"] for e in mine]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended", kinds
    turns = [e for e in mine if e["type"] == "turn"]
    assert {t["role"] for t in turns} == {"user", "assistant"}
    assert len([t for t in turns if t["role"] == "user"]) >= 3  # jfk_8k.wav's phrases
    assert any(t.get("latency_ms") for t in turns if t["role"] == "assistant")
    # Published by A's process, delivered by B's, which never saw the call itself.
    assert {e["origin"].rpartition(":")[2] for e in mine} == {str(pid_a)}
    assert on_b == 404
