"""MCP tools: a real MCP server (the offline loyalty server, over streamable HTTP) feeds
the registry through Pipecat's MCP client; servers that are down, die or hang never
hold up or break anything.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from pydantic import ValidationError

from agent_settings import AgentSettings
from offline.mcp_server import mcp_server_process
from offline.server_process import free_port
from tools.booking_tools import booking_registry
from tools.mcp_tools import McpServerConfig, McpToolSource
from tools.registry import ToolContext

CTX = ToolContext(call_sid="CA-mcp", caller_number="+15551230001", store=None)


async def _connected(source: McpToolSource, timeout_s: float = 20.0) -> None:
    await asyncio.wait_for(source.connected.wait(), timeout_s)


@pytest.mark.asyncio
async def test_mcp_tools_join_the_registry_and_are_called_through_it():
    registry = booking_registry()
    booking_tools = list(registry.names)
    with mcp_server_process(free_port()) as url:
        source = McpToolSource(McpServerConfig(url=url, timeout_s=1.0, slow_after_s=0.3), registry)
        source.start()
        try:
            await _connected(source)
            assert registry.names == booking_tools + ["loyalty_points", "slow_lookup"]
            assert source.status() == {"state": "connected", "tools": ["loyalty_points", "slow_lookup"],
                                       "error": None}
            # The schema the model sees is the MCP server's own.
            schema = {s.name: s for s in registry.tools_schema().standard_tools}["loyalty_points"]
            assert schema.required == ["phone"] and schema.properties["phone"]["type"] == "string"

            ok = await registry.call("loyalty_points", {"phone": "+15551230001"}, CTX)
            assert ok.result == {"phone": "+15551230001", "points": 2300, "tier": "silver"}

            # Arguments are checked against that schema before the server is asked.
            bad = await registry.call("loyalty_points", {"phone": 42}, CTX)
            assert bad.error["error"]["type"] == "invalid_arguments"
            assert bad.error["error"]["details"] == [{"field": "phone", "problem": "expected string"}]

            # A slow MCP tool gets the spoken "one moment"; one past its deadline times out.
            slow_calls = []
            slow = await registry.call("slow_lookup", {"seconds": 0.5}, CTX,
                                       on_slow=lambda name, args: slow_calls.append(name))
            assert slow.result == {"waited_s": 0.5} and slow_calls == ["slow_lookup"]
            late = await registry.call("slow_lookup", {"seconds": 5}, CTX)
            assert late.error["error"]["type"] == "timeout"
            # ... and the connection still serves the next call.
            again = await registry.call("loyalty_points", {"phone": "+15550000000"}, CTX)
            assert again.ok and again.result["points"] == 1600
        finally:
            await source.stop()


@pytest.mark.asyncio
async def test_a_server_down_at_start_is_retried_in_the_background_until_it_comes_up():
    registry = booking_registry()
    port = free_port()
    source = McpToolSource(McpServerConfig(url=f"http://127.0.0.1:{port}/mcp"), registry,
                           retry_delays_s=(0.2,))
    started = time.monotonic()
    source.start()
    assert time.monotonic() - started < 0.05  # nothing waits for the MCP server
    try:
        for _ in range(100):
            if source.state == "down":
                break
            await asyncio.sleep(0.05)
        assert source.state == "down" and "ConnectError" in source.last_error
        assert "loyalty_points" not in registry.names
        assert (await registry.call("get_caller_context", {}, CTX)).error["error"]["type"] != "unknown_tool"

        with mcp_server_process(port):
            await _connected(source)
            outcome = await registry.call("loyalty_points", {"phone": "+1"}, CTX)
            assert outcome.result["points"] == 100
    finally:
        await source.stop()


@pytest.mark.asyncio
async def test_a_server_that_dies_mid_process_gives_errors_then_recovers():
    registry = booking_registry()
    port = free_port()
    source = McpToolSource(McpServerConfig(url=f"http://127.0.0.1:{port}/mcp"), registry)
    try:
        with mcp_server_process(port):
            source.start()
            await _connected(source)
        # Down: the model gets a structured error, the call goes on.
        down = await registry.call("loyalty_points", {"phone": "+1"}, CTX)
        assert down.error["error"]["type"] in {"mcp_error", "mcp_unavailable"}
        # Back up: Pipecat's client connects again on the next call.
        with mcp_server_process(port):
            for _ in range(3):
                back = await registry.call("loyalty_points", {"phone": "+1"}, CTX)
                if back.ok:
                    break
            assert back.ok and back.result["points"] == 100
    finally:
        await source.stop()


@pytest.mark.asyncio
async def test_a_server_that_never_answers_is_given_up_on_and_stops_cleanly():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers a byte
    port = listener.getsockname()[1]
    registry = booking_registry()
    source = McpToolSource(McpServerConfig(url=f"http://127.0.0.1:{port}/mcp", connect_timeout_s=0.5),
                           registry, retry_delays_s=(0.2,))
    try:
        source.start()
        for _ in range(60):
            if source.state == "down":
                break
            await asyncio.sleep(0.05)
        assert source.state == "down" and source.last_error == "no answer within 0.5 s"
        assert "loyalty_points" not in registry.names
    finally:
        stopping = time.monotonic()
        await source.stop()
        assert time.monotonic() - stopping < 2.0
        listener.close()


def test_mcp_servers_configuration(monkeypatch):
    monkeypatch.setenv("MCP_SERVERS", json.dumps([
        "http://127.0.0.1:9100/mcp",
        {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"], "tools": ["get_time"]},
        {"url": "https://mcp.example.com/sse", "transport": "sse", "headers": {"Authorization": "Bearer x"}},
    ]))
    servers = AgentSettings(_env_file=None).MCP_SERVERS
    assert [s.label for s in servers] == ["http://127.0.0.1:9100/mcp", "mcp-server-time --local-timezone UTC",
                                         "https://mcp.example.com/sse"]
    assert type(servers[0].server_params()).__name__ == "StreamableHttpParameters"
    assert type(servers[1].server_params()).__name__ == "StdioServerParameters"
    assert type(servers[2].server_params()).__name__ == "SseServerParameters"

    for bad in (["ftp://x"], [{"url": "http://x", "command": "y"}], [{"url": "http://x", "retries": 3}]):
        monkeypatch.setenv("MCP_SERVERS", json.dumps(bad))
        with pytest.raises(ValidationError, match="MCP_SERVERS"):
            AgentSettings(_env_file=None)
