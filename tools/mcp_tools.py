"""Tools from MCP servers: connected in the background, called through the registry.

Each server listed in ``MCP_SERVERS`` gets one Pipecat :class:`MCPClient` per server
process, shared by every call. :class:`McpToolSource` connects it in a background task,
so the server (and every call) starts at once whether or not the MCP server is up; a
server that is down or hangs is retried with back-off (1, 2, 5, 10, then every 30 s)
and reported in ``GET /health``. Once the server's tools are listed they join the
:class:`~tools.registry.ToolRegistry`, so calls that start from then on offer them to
the model next to the booking tools (a call in progress keeps the tools it started
with: both providers fix the tool list when their session opens).

An MCP tool is an ordinary registry tool: its arguments are checked against the JSON
schema the MCP server advertises (same structured ``invalid_arguments`` error as any
tool), it has a deadline, a slow call gets the spoken "one moment", and the call is
recorded in the call record. The call itself goes through the schema handler Pipecat's
client attaches to each tool (invoked with hand-built ``FunctionCallParams``) rather
than through the LLM service's auto-registration, because that registration closes the
client when a call's pipeline ends: one call hanging up would cut the MCP connection of
every other call.

Pipecat's client answers a failed call with text instead of raising (``"Error calling
mcp tool <name>: <detail>"``; after a lost connection it reconnects on the next call).
Those answers become ``mcp_error`` errors here, and a client that holds no session
becomes ``mcp_unavailable``.

Configuration (``MCP_SERVERS``, a JSON list): a string is a streamable-HTTP URL; an
object is :class:`McpServerConfig`, e.g.
``[{"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer x"},
"tools": ["loyalty_points"], "timeout_s": 5}, {"command": "mcp-server-time"}]``.

Sources: https://modelcontextprotocol.io/specification (tools/list, tools/call,
streamable HTTP and stdio transports); Pipecat's ``pipecat.services.mcp_service``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.registry import InvalidArguments, ToolContext, ToolError, ToolRegistry, ToolSpec, portable_schema

__all__ = ["McpServerConfig", "McpToolSource", "start_mcp_sources"]

RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
# Pipecat's MCPClient answers failed tool calls with these texts (mcp_service.py, 1.14).
_PIPECAT_ERROR_PREFIX = "Error calling mcp tool"
_PIPECAT_EMPTY_ANSWER = "Sorry, could not call the mcp tool"


class McpServerConfig(BaseModel):
    """One MCP server, as configured in ``MCP_SERVERS``.

    Exactly one of ``url`` (a network server) and ``command`` (a local stdio server)
    is set. A bare string in the configuration means ``{"url": that string}``.

    Parameters:
        url: The server's endpoint, e.g. ``http://127.0.0.1:9000/mcp``.
        transport: ``streamable_http`` (default) or ``sse`` for a ``url`` server.
        headers: Extra HTTP headers (e.g. ``Authorization``).
        command: Program to start for a stdio server; ``args`` and ``env`` go with it.
        args: Arguments of ``command``.
        env: Environment of ``command`` (None: inherit).
        name: Label in logs and ``/health`` (default: the URL or command).
        tools: Only these of the server's tools (None: all).
        timeout_s: Deadline of one tool call, in seconds.
        connect_timeout_s: Deadline of one attempt to connect and list tools, in seconds.
        slow_after_s: Seconds after which a call gets the spoken "one moment" (None: never).
    """

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    headers: dict[str, str] = Field(default_factory=dict)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    name: str | None = None
    tools: list[str] | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    slow_after_s: float | None = 0.7

    @model_validator(mode="before")
    @classmethod
    def _from_url_string(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_endpoint(self) -> McpServerConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("an MCP server needs exactly one of 'url' and 'command'")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"MCP server url must be http(s), got {self.url!r}")
        return self

    @property
    def label(self) -> str:
        """The name shown in logs and ``/health``."""
        return self.name or self.url or " ".join([self.command or "", *self.args]).strip()

    def server_params(self) -> Any:
        """The ``mcp`` package's parameters for Pipecat's :class:`MCPClient`."""
        from mcp import StdioServerParameters
        from mcp.client.session_group import SseServerParameters, StreamableHttpParameters

        if self.command is not None:
            return StdioServerParameters(command=self.command, args=self.args, env=self.env)
        if self.transport == "sse":
            return SseServerParameters(url=self.url, headers=self.headers or None)
        return StreamableHttpParameters(url=self.url, headers=self.headers or None)


class McpToolSource:
    """One MCP server whose tools join a registry once the server answers.

    Args:
        config: The server.
        registry: Where its tools are added (the per-process registry).
        retry_delays_s: Waits between connection attempts, in seconds; the last repeats.
    """

    def __init__(
        self,
        config: McpServerConfig,
        registry: ToolRegistry,
        *,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        from pipecat.services.mcp_service import MCPClient

        self.config = config
        self.registry = registry
        self.client = MCPClient(server_params=config.server_params(), tools_filter=config.tools)
        self.retry_delays_s = tuple(retry_delays_s) or (1.0,)
        self.state: Literal["connecting", "connected", "down", "stopped"] = "connecting"
        self.last_error: str | None = None
        self.tool_names: list[str] = []
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect_loop(), name=f"mcp:{self.config.label}")

    async def stop(self) -> None:
        """Stop trying to connect and close the connection."""
        self.state = "stopped"
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.client.close()
        except Exception as e:  # a transport that fails on close: nothing left to save
            logger.debug(f"MCP {self.config.label}: close failed: {e}")

    def status(self) -> dict[str, Any]:
        """``{state, tools, error}`` for ``/health``."""
        return {"state": self.state, "tools": list(self.tool_names), "error": self.last_error}

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.config.connect_timeout_s):
                    schema = await self.client.tools()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if isinstance(e, TimeoutError):
                    detail = f"no answer within {self.config.connect_timeout_s:g} s"
                if attempt == 0 or detail != self.last_error:
                    logger.warning(f"MCP server {self.config.label} is down ({detail}); retrying in the background")
                self.state, self.last_error = "down", detail
                await asyncio.sleep(self.retry_delays_s[min(attempt, len(self.retry_delays_s) - 1)])
                attempt += 1
                continue
            self.tool_names = self._add_tools(schema.standard_tools)
            self.state, self.last_error = "connected", None
            self.connected.set()
            logger.info(f"MCP server {self.config.label} connected: tools {self.tool_names}")
            return

    def _add_tools(self, schemas: Iterable[Any]) -> list[str]:
        added = []
        for schema in schemas:
            if schema.name in self.registry.names:
                logger.warning(f"MCP server {self.config.label}: tool {schema.name!r} "
                               "is already registered; the MCP one is left out")
                continue
            self.registry.add(self._tool_spec(schema))
            added.append(schema.name)
        return added

    def _tool_spec(self, schema: Any) -> ToolSpec:
        from tools.http_tool import validate_json_arguments

        json_schema = {"type": "object", "properties": dict(schema.properties or {}),
                       "required": list(schema.required or [])}
        portable = portable_schema(json_schema)
        handler = schema.handler
        name = schema.name

        def parse(raw: dict[str, Any]) -> dict[str, Any]:
            problems = validate_json_arguments(json_schema, raw)
            if problems:
                raise InvalidArguments(problems)
            return raw

        async def call(_ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
            return await self._call(name, handler, args)

        return ToolSpec(
            name=name,
            description=schema.description or name,
            fn=call,
            parse=parse,
            properties=portable.get("properties", {}),
            required=list(portable.get("required", [])),
            timeout_s=self.config.timeout_s,
            slow_after_s=self.config.slow_after_s,
        )

    async def _call(self, name: str, handler: Any, args: Mapping[str, Any]) -> dict[str, Any]:
        from pipecat.services.llm_service import FunctionCallParams

        answers: list[Any] = []

        async def result_callback(result: Any, **_kwargs: Any) -> None:
            answers.append(result)

        params = FunctionCallParams(
            function_name=name, tool_call_id=f"mcp-{uuid.uuid4().hex[:12]}", arguments=dict(args),
            llm=None, pipeline_worker=None, context=None, result_callback=result_callback,
        )
        try:
            await handler(params)
        except Exception as e:  # no session: never connected, or closed at shutdown
            raise ToolError("mcp_unavailable", f"The {name} service is not available right now.",
                            detail=str(e)[:200]) from None
        text = answers[-1] if answers else ""
        if not isinstance(text, str):
            return text if isinstance(text, dict) else {"value": text}
        if not text or text.startswith(_PIPECAT_ERROR_PREFIX) or text == _PIPECAT_EMPTY_ANSWER:
            raise ToolError("mcp_error", f"The {name} service failed.", detail=text[:200])
        try:
            data = json.loads(text)
        except ValueError:
            return {"text": text}
        return data if isinstance(data, dict) else {"value": data}


def start_mcp_sources(configs: Iterable[McpServerConfig], registry: ToolRegistry) -> list[McpToolSource]:
    """Start a background connection to each configured MCP server.

    Args:
        configs: The servers (``AgentSettings.MCP_SERVERS``).
        registry: The per-process registry their tools join.

    Returns:
        The sources, already connecting; stop them with :meth:`McpToolSource.stop`.
    """
    sources = [McpToolSource(config, registry) for config in configs]
    for source in sources:
        source.start()
    return sources
