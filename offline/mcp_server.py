"""A small MCP server for offline tests and demos: a hotel loyalty programme.

It speaks the real Model Context Protocol over streamable HTTP (the ``mcp`` package's
own server), so the agent's MCP client is exercised exactly as against a third-party
server. Tools:

- ``loyalty_points(phone)``: the programme's points balance of a phone number;
- ``slow_lookup(seconds)``: answers after ``seconds`` (to test deadlines and the spoken
  "one moment").

Run it with ``python -m offline.mcp_server --port 9100`` and point the agent at it with
``MCP_SERVERS='["http://127.0.0.1:9100/mcp"]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

__all__ = ["build_server", "mcp_server_process"]

ROOT = Path(__file__).resolve().parent.parent


def build_server(loyalty_delay_ms: int = 0):
    """The MCP server with its two tools (an ``mcp.server.mcpserver.MCPServer``).

    Args:
        loyalty_delay_ms: How long ``loyalty_points`` takes to answer, in ms (to make
            it a slow tool).
    """
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("loyalty", instructions="Hotel loyalty programme lookups.")

    @server.tool(description="Loyalty points balance of a caller, by phone number (E.164).")
    async def loyalty_points(phone: str) -> dict:
        await asyncio.sleep(loyalty_delay_ms / 1000)
        digits = sum(int(c) for c in phone if c.isdigit())
        return {"phone": phone, "points": 100 * digits, "tier": "gold" if digits > 40 else "silver"}

    @server.tool(description="A lookup that takes the given number of seconds.")
    async def slow_lookup(seconds: float) -> dict:
        await asyncio.sleep(seconds)
        return {"waited_s": seconds}

    return server


@contextmanager
def mcp_server_process(port: int, *, loyalty_delay_ms: int = 0,
                       ready_timeout_s: float = 20.0) -> Iterator[str]:
    """This MCP server as a child process on 127.0.0.1; yields its URL.

    Args:
        port: TCP port to listen on.
        loyalty_delay_ms: How long ``loyalty_points`` takes to answer, in ms.
        ready_timeout_s: How long to wait for it to accept connections, in seconds.

    Raises:
        RuntimeError: If it does not start in time.
    """
    proc = subprocess.Popen([sys.executable, "-m", "offline.mcp_server", "--port", str(port),
                             "--loyalty-delay-ms", str(loyalty_delay_ms)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"MCP server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("MCP server did not start in time") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    """Command line: ``python -m offline.mcp_server [--port 9100]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--loyalty-delay-ms", type=int, default=0)
    args = parser.parse_args()
    server = build_server(args.loyalty_delay_ms)
    asyncio.run(server.run_streamable_http_async(host=args.host, port=args.port))


if __name__ == "__main__":
    main()
