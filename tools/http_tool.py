"""Integration tools backed by webhooks.

A webhook tool is configured, not coded: a name, a description, a URL, the JSON schema
of its arguments (plain JSON Schema from configuration, no pydantic model) and a
timeout. :func:`http_tool` turns one into a registry tool that POSTs::

    {"tool": name, "call_sid": ..., "caller_number": ..., "arguments": {...}}

with httpx and hands the JSON answer to the model. Arguments are checked against the
configured schema first (required fields, types, enums, nested objects and arrays),
so a model gets the same structured ``invalid_arguments`` error as with typed tools.
Non-2xx answers, network failures and timeouts become ``http_error``,
``http_unreachable`` and ``timeout`` errors::

    registry = booking_registry()
    add_http_tools(registry, settings_json["webhook_tools"])

MCP tools are the other integration: see :mod:`tools.mcp_tools`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from loguru import logger

from tools.registry import InvalidArguments, ToolContext, ToolError, ToolRegistry, ToolSpec, portable_schema

__all__ = ["WebhookToolConfig", "add_http_tools", "http_tool", "validate_json_arguments"]

# Our own deadline runs this much after httpx's, so httpx's timeout is the one reported.
_DEADLINE_MARGIN_S = 1.0
_MAX_TEXT_CHARS = 2000


@dataclass(frozen=True)
class WebhookToolConfig:
    """One webhook tool, as configured.

    Parameters:
        name: Tool name the model calls (letters, digits, ``_``).
        description: What the tool does, for the model.
        url: Where the arguments are POSTed (http or https).
        parameters: JSON schema of the arguments: ``{"type": "object", "properties":
            {...}, "required": [...]}``.
        timeout_s: Deadline for the HTTP request, in seconds.
        headers: Extra request headers (e.g. an Authorization header).
        slow_after_s: Seconds after which the call counts as slow (None: never).
    """

    name: str
    description: str
    url: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = 5.0
    headers: dict[str, str] = field(default_factory=dict)
    slow_after_s: float | None = 0.7

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WebhookToolConfig:
        """Build from configuration data (unknown keys are an error).

        Raises:
            TypeError: On unknown or missing keys.
        """
        return cls(**dict(data))


def http_tool(config: WebhookToolConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> ToolSpec:
    """A registry tool that POSTs its arguments to the configured webhook.

    Args:
        config: The webhook's configuration.
        transport: httpx transport to use instead of the network (tests).

    Returns:
        The tool, ready for :meth:`ToolRegistry.add`.

    Raises:
        ValueError: If the URL is not http(s) or the schema is not an object schema.
    """
    if not config.url.startswith(("http://", "https://")):
        raise ValueError(f"webhook tool {config.name!r}: url must be http(s), got {config.url!r}")
    if config.parameters.get("type", "object") != "object":
        raise ValueError(f"webhook tool {config.name!r}: parameters must be an object schema")
    schema = portable_schema(config.parameters)

    def parse(raw: dict[str, Any]) -> dict[str, Any]:
        problems = validate_json_arguments(config.parameters, raw)
        if problems:
            raise InvalidArguments(problems)
        return raw

    async def post(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        body = {
            "tool": config.name,
            "call_sid": ctx.call_sid,
            "caller_number": ctx.caller_number,
            "arguments": args,
        }
        try:
            async with httpx.AsyncClient(timeout=config.timeout_s, transport=transport) as client:
                response = await client.post(config.url, json=body, headers=config.headers)
        except httpx.TimeoutException:
            raise ToolError(
                "timeout", f"{config.name} did not answer within {config.timeout_s:g} s."
            ) from None
        except httpx.HTTPError as e:
            logger.warning(f"webhook tool {config.name}: {type(e).__name__}: {e}")
            raise ToolError("http_unreachable", f"{config.name} could not be reached.") from None
        if not response.is_success:
            logger.warning(f"webhook tool {config.name}: HTTP {response.status_code}")
            raise ToolError(
                "http_error",
                f"{config.name} answered HTTP {response.status_code}.",
                status=response.status_code,
            )
        try:
            data = response.json()
        except ValueError:
            return {"text": response.text[:_MAX_TEXT_CHARS]}
        return data if isinstance(data, dict) else {"value": data}

    return ToolSpec(
        name=config.name,
        description=config.description,
        fn=post,
        parse=parse,
        properties=schema.get("properties", {}),
        required=list(schema.get("required", [])),
        timeout_s=config.timeout_s + _DEADLINE_MARGIN_S,
        slow_after_s=config.slow_after_s,
    )


def add_http_tools(
    registry: ToolRegistry,
    configs: Iterable[WebhookToolConfig | Mapping[str, Any]],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[str]:
    """Add webhook tools to a registry.

    Args:
        registry: Where to add them.
        configs: Configurations, as :class:`WebhookToolConfig` or plain mappings.
        transport: httpx transport to use instead of the network (tests).

    Returns:
        The names of the tools added.
    """
    names = []
    for item in configs:
        config = item if isinstance(item, WebhookToolConfig) else WebhookToolConfig.from_mapping(item)
        registry.add(http_tool(config, transport=transport))
        names.append(config.name)
    return names


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def validate_json_arguments(schema: Mapping[str, Any], args: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Check arguments against the common core of JSON Schema.

    Covers ``type`` (one or a list), ``enum``, ``required``, ``properties``,
    ``additionalProperties: false`` and ``items``; other keywords are not checked.

    Args:
        schema: An object schema.
        args: The arguments.
        prefix: Dotted path of ``args`` inside the top-level arguments.

    Returns:
        ``[{"field": ..., "problem": ...}]``, empty when the arguments are valid.
    """
    if not isinstance(args, dict):
        return [{"field": prefix or None, "problem": "expected an object"}]
    problems = []
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in args:
            problems.append({"field": prefix + name, "problem": "Field required"})
    for name, value in args.items():
        if name in properties:
            problems += _check_value(properties[name], value, prefix + name)
        elif schema.get("additionalProperties") is False:
            problems.append({"field": prefix + name, "problem": "unknown field"})
    return problems


def _check_value(schema: Mapping[str, Any], value: Any, path: str) -> list[dict[str, Any]]:
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_is_type(value, name) for name in names):
            return [{"field": path, "problem": f"expected {' or '.join(names)}"}]
    if "enum" in schema and value not in schema["enum"]:
        return [{"field": path, "problem": f"must be one of {schema['enum']}"}]
    if isinstance(value, dict) and ("properties" in schema or "required" in schema):
        return validate_json_arguments(schema, value, prefix=path + ".")
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        problems = []
        for i, item in enumerate(value):
            problems += _check_value(schema["items"], item, f"{path}.{i}")
        return problems
    return []


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False  # JSON booleans are not numbers
    return isinstance(value, _JSON_TYPES.get(name, (object,)))
