"""End to end: MCP tools in a call, with one MCP server up and slow and one down.

The real server process is configured with two MCP servers: the offline loyalty server
(a real MCP server over streamable HTTP, answering ``loyalty_points`` after 1.5 s) and
an address where nothing listens. The offline agent, seeing ``loyalty_points`` declared,
looks the known caller's points up after the caller lookup. The test checks what a
caller and an operator would see: calls are answered although one MCP server is down,
the slow tool is covered by the spoken "one moment", the points are read out, and the
MCP call is in the call record.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from offline.caller import run_call
from offline.mcp_server import mcp_server_process
from offline.server_process import free_port
from tests.support import ACCOUNT_SID, AUDIO, TOKEN, ended_record, running_server

ACK = "One moment while I check that for you."


async def _health(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url) as client:
        return (await client.get("/health")).json()


@pytest.mark.asyncio
async def test_mcp_tools_in_a_call_with_one_server_down(tmp_path, fake_twilio_rest):
    down_url = f"http://127.0.0.1:{free_port()}/mcp"
    with mcp_server_process(free_port(), loyalty_delay_ms=1500) as up_url, running_server(
        tmp_path,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'booking.db'}",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_API_BASE_URL=fake_twilio_rest.url,
        MCP_SERVERS=json.dumps([up_url, {"url": down_url, "name": "billing"}]),
        TOOL_ACK_TEXT=ACK,
    ) as (url, log):
        # The server is up at once; the MCP servers are reported as they are.
        for _ in range(200):
            mcp = (await _health(url))["mcp"]
            if mcp[up_url]["state"] == "connected" and mcp["billing"]["state"] == "down":
                break
            await asyncio.sleep(0.1)
        assert mcp[up_url] == {"state": "connected", "tools": ["loyalty_points", "slow_lookup"], "error": None}
        assert mcp["billing"]["state"] == "down" and mcp["billing"]["error"]

        result = await run_call(url, str(AUDIO / "jfk_8k.wav"), auth_token=TOKEN, max_call_s=90)
        record = await ended_record(url, result.call_sid)

    # The call went as usual: greeted, every turn answered, ended by the agent.
    assert result.greeting_ms is not None
    assert all(u["replied"] for u in result.utterances), result.summary()
    assert record["end_reason"] == "agent_ended"

    # The MCP tool was called with the caller's number and is in the record.
    calls = record["tool_calls"]
    assert [c["name"] for c in calls][:2] == ["get_caller_context", "loyalty_points"]
    loyalty = calls[1]
    assert loyalty["arguments"] == {"phone": "+15551230001"}
    assert loyalty["error"] is None and loyalty["result"]["points"] == 2300
    assert loyalty["duration_ms"] >= 1400

    # The slow lookup was covered by "one moment", then the points were read out.
    assistant = [t["text"] for t in record["turns"] if t["role"] == "assistant"]
    assert ACK in assistant
    welcome = next(i for i, text in enumerate(assistant) if "2300 loyalty points" in text)
    assert assistant.index(ACK) < welcome
    assert "Traceback" not in log.read_text()
