"""The typed tool registry: derived schemas, provider formats, errors, Pipecat registration."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import pytest
from google.genai import types as genai_types
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.adapters.llm.services.gemini_adapter import GeminiLLMAdapter
from pipecat.adapters.llm.services.open_ai_realtime_adapter import OpenAIRealtimeLLMAdapter
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pydantic import BaseModel, Field

from tools.http_tool import WebhookToolConfig, add_http_tools, validate_json_arguments
from tools.registry import ToolContext, ToolError, ToolRegistry, portable_schema


class Address(BaseModel):
    street: str = Field(description="Street and number.")
    city: str


class OrderArgs(BaseModel):
    item: str = Field(min_length=1, description="What to order.")
    quantity: int = Field(default=1, ge=1, le=9, description="How many.")
    size: Literal["small", "large"] | None = Field(default=None, description="Size, if it matters.")
    deliver_to: Address | None = None
    weight_kg: float = Field(default=1.0, gt=0, description="Weight in kilograms.")


class SleepArgs(BaseModel):
    seconds: float


registry = ToolRegistry()


@registry.tool(description="Order an item.", timeout_s=2.0)
async def order(ctx: ToolContext, args: OrderArgs) -> dict:
    return {"ordered": args.item, "quantity": args.quantity, "call": ctx.call_sid}


@registry.tool(description="Sleep, then answer.", timeout_s=0.2, slow_after_s=0.05)
async def sleepy(ctx: ToolContext, args: SleepArgs) -> dict:
    await asyncio.sleep(args.seconds)
    return {"slept": args.seconds}


@registry.tool(description="Always fails.")
async def broken(ctx: ToolContext) -> dict:
    raise RuntimeError("database on fire")


@registry.tool(description="Reports an expected failure.")
async def refuses(ctx: ToolContext) -> dict:
    raise ToolError("not_allowed", "You may not do that.", hint="ask nicely")


def make_ctx() -> ToolContext:
    return ToolContext(call_sid="CA123", caller_number="+15551230001", store=None)


# -- schemas -------------------------------------------------------------------------


def test_function_schema_is_derived_from_the_model():
    schema = registry.spec("order").function_schema()
    assert schema.name == "order"
    assert schema.description == "Order an item."
    assert schema.required == ["item"]
    props = schema.properties
    assert set(props) == {"item", "quantity", "size", "deliver_to", "weight_kg"}
    assert props["item"] == {"description": "What to order.", "minLength": 1, "type": "string"}
    assert props["quantity"] == {
        "default": 1,
        "description": "How many.",
        "maximum": 9,
        "minimum": 1,
        "type": "integer",
    }
    # Optional[Literal] collapses to the enum; the nested model's $ref is inlined.
    assert props["size"] == {
        "enum": ["small", "large"],
        "type": "string",
        "description": "Size, if it matters.",
    }
    assert props["deliver_to"]["type"] == "object"
    assert props["deliver_to"]["required"] == ["street", "city"]
    assert props["deliver_to"]["properties"]["street"]["description"] == "Street and number."
    # gt=0 gives exclusiveMinimum, which Gemini rejects: dropped (still validated).
    assert "exclusiveMinimum" not in props["weight_kg"]
    text = json.dumps(props)
    assert "$ref" not in text and "title" not in text and "null" not in text


def test_tool_without_arguments_has_an_empty_object_schema():
    schema = registry.spec("broken").function_schema()
    assert schema.properties == {} and schema.required == []


def test_registry_names_and_subset_schema():
    assert registry.names == ["order", "sleepy", "broken", "refuses"]
    subset = registry.tools_schema(["order"])
    assert isinstance(subset, ToolsSchema)
    assert [t.name for t in subset.standard_tools] == ["order"]


def test_tools_schema_converts_for_gemini_and_openai_realtime():
    tools_schema = registry.tools_schema()

    gemini = GeminiLLMAdapter().to_provider_tools_format(tools_schema)
    declarations = gemini[0]["function_declarations"]
    assert [d["name"] for d in declarations] == registry.names
    # google-genai's own models (extra="forbid") accept every declaration as it is.
    tool = genai_types.Tool.model_validate(gemini[0])
    assert tool.function_declarations[0].parameters.properties["size"].enum == ["small", "large"]
    genai_types.LiveConnectConfig(tools=gemini)

    openai = OpenAIRealtimeLLMAdapter().to_provider_tools_format(tools_schema)
    assert openai[0]["type"] == "function"
    assert openai[0]["name"] == "order"
    assert openai[0]["parameters"]["required"] == ["item"]
    assert openai[0]["parameters"]["properties"]["quantity"]["maximum"] == 9


def test_portable_schema_leaves_its_input_alone():
    original = OrderArgs.model_json_schema()
    before = json.dumps(original, sort_keys=True)
    portable_schema(original)
    assert json.dumps(original, sort_keys=True) == before


def test_registering_twice_or_untyped_is_refused():
    with pytest.raises(ValueError):
        registry.tool(description="again")(order)
    other = ToolRegistry()
    with pytest.raises(TypeError):

        @other.tool(description="untyped")
        async def untyped(ctx: ToolContext, args: dict) -> dict:
            return {}

    with pytest.raises(TypeError):

        @other.tool(description="sync")
        def not_async(ctx: ToolContext) -> dict:
            return {}


# -- calling -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_call_returns_the_result():
    outcome = await registry.call("order", {"item": "tea", "quantity": 2}, make_ctx())
    assert outcome.ok
    assert outcome.result == {"ordered": "tea", "quantity": 2, "call": "CA123"}
    assert outcome.error is None
    assert outcome.duration_ms >= 0


@pytest.mark.asyncio
async def test_invalid_arguments_are_structured_not_raised():
    outcome = await registry.call("order", {"quantity": 12, "size": "huge", "weight_kg": 0}, make_ctx())
    assert outcome.result is None
    error = outcome.error["error"]
    assert error["type"] == "invalid_arguments"
    assert error["message"]
    problems = {d["field"]: d["problem"] for d in error["details"]}
    assert set(problems) == {"item", "quantity", "size", "weight_kg"}
    assert "required" in problems["item"].lower()
    assert "9" in problems["quantity"]
    assert outcome.payload == outcome.error
    json.dumps(outcome.payload)


@pytest.mark.asyncio
async def test_unknown_tool():
    outcome = await registry.call("teleport", {}, make_ctx())
    assert outcome.error["error"]["type"] == "unknown_tool"
    assert "order" in outcome.error["error"]["available"]


@pytest.mark.asyncio
async def test_exception_becomes_tool_failed_and_is_logged():
    from loguru import logger

    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(str(message)), level="ERROR")
    try:
        outcome = await registry.call("broken", {}, make_ctx())
    finally:
        logger.remove(sink)
    assert outcome.error["error"]["type"] == "tool_failed"
    assert "RuntimeError" in outcome.error["error"]["message"]
    assert "fire" not in outcome.error["error"]["message"]  # internals stay in the log
    assert any("database on fire" in line for line in logged)


@pytest.mark.asyncio
async def test_expected_tool_error_is_passed_on():
    outcome = await registry.call("refuses", None, make_ctx())
    assert outcome.error == {
        "error": {"type": "not_allowed", "message": "You may not do that.", "hint": "ask nicely"}
    }


@pytest.mark.asyncio
async def test_timeout_and_slow_hook():
    slow_calls = []
    outcome = await registry.call(
        "sleepy", {"seconds": 5}, make_ctx(), on_slow=lambda name, args: slow_calls.append((name, args))
    )
    assert outcome.error["error"]["type"] == "timeout"
    assert 150 <= outcome.duration_ms < 1000
    assert slow_calls == [("sleepy", {"seconds": 5})]

    fast = await registry.call("sleepy", {"seconds": 0}, make_ctx(), on_slow=lambda *a: slow_calls.append(a))
    assert fast.ok and len(slow_calls) == 1


# -- Pipecat registration ------------------------------------------------------------


@pytest.mark.asyncio
async def test_register_with_a_real_pipecat_service_and_run_its_handler():
    llm = OpenAIRealtimeLLMService(api_key="x", base_url="ws://127.0.0.1:9")
    recorded = []

    async def on_outcome(name, args, outcome):
        recorded.append((name, args, outcome))

    registry.register_with(llm, lambda params: make_ctx(), on_outcome=on_outcome)
    for name in registry.names:
        assert llm.has_function(name)
    item = llm._functions["order"]
    assert item.timeout_secs == pytest.approx(4.0)  # 2 s of ours plus the margin

    delivered = []

    async def result_callback(result, *, properties=None):
        delivered.append(result)

    def params_for(name: str, arguments: dict) -> FunctionCallParams:
        return FunctionCallParams(
            function_name=name,
            tool_call_id="call-1",
            arguments=arguments,
            llm=llm,
            pipeline_worker=None,
            context=LLMContext(),
            result_callback=result_callback,
        )

    await item.handler(params_for("order", {"item": "coffee"}))
    assert delivered == [{"ordered": "coffee", "quantity": 1, "call": "CA123"}]
    assert recorded[0][0] == "order" and recorded[0][1] == {"item": "coffee"}
    assert recorded[0][2].ok

    await llm._functions["order"].handler(params_for("order", {"quantity": "many"}))
    assert delivered[1]["error"]["type"] == "invalid_arguments"
    assert not recorded[1][2].ok


@pytest.mark.asyncio
async def test_a_call_pipecat_cancels_is_still_recorded():
    """A barge-in makes Pipecat cancel a running tool call: it must still reach the record."""
    llm = OpenAIRealtimeLLMService(api_key="x", base_url="ws://127.0.0.1:9")
    recorded = []

    async def on_outcome(name, args, outcome):
        await asyncio.sleep(0)  # a database write: it runs after the handler was cancelled
        recorded.append((name, args, outcome))

    registry.register_with(llm, lambda params: make_ctx(), on_outcome=on_outcome)
    delivered = []

    async def result_callback(result, *, properties=None):
        delivered.append(result)

    params = FunctionCallParams(
        function_name="sleepy", tool_call_id="call-2", arguments={"seconds": 5}, llm=llm,
        pipeline_worker=None, context=LLMContext(), result_callback=result_callback,
    )
    running = asyncio.create_task(llm._functions["sleepy"].handler(params))
    await asyncio.sleep(0.05)
    running.cancel()  # what Pipecat's _cancel_function_call_tasks does on an interruption
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(20):
        if recorded:
            break
        await asyncio.sleep(0.01)
    assert delivered == []  # Pipecat, not the handler, answers the model for a cancelled call
    [(name, args, outcome)] = recorded
    assert (name, args) == ("sleepy", {"seconds": 5})
    assert outcome.error["error"]["type"] == "cancelled"
    assert 40 <= outcome.duration_ms < 1000


# -- webhook tools -------------------------------------------------------------------


WEATHER = {
    "name": "get_weather",
    "description": "Weather forecast for a city.",
    "url": "https://hooks.example.com/weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "units": {"type": "string", "enum": ["metric", "imperial"]},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
    "timeout_s": 2.0,
    "headers": {"Authorization": "Bearer secret"},
}


def test_validate_json_arguments():
    schema = WEATHER["parameters"]
    assert validate_json_arguments(schema, {"city": "Lisbon", "days": 3}) == []
    problems = validate_json_arguments(schema, {"days": True, "units": "kelvin", "extra": 1})
    assert {p["field"] for p in problems} == {"city", "days", "units", "extra"}


@pytest.mark.asyncio
async def test_http_tool_posts_json_and_returns_the_answer():
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if json.loads(request.content)["arguments"]["city"] == "Atlantis":
            return httpx.Response(503)
        return httpx.Response(200, json={"forecast": "sunny"})

    tools = ToolRegistry()
    assert add_http_tools(tools, [WEATHER], transport=httpx.MockTransport(handle)) == ["get_weather"]
    schema = tools.spec("get_weather").function_schema()
    assert schema.required == ["city"] and set(schema.properties) == {"city", "days", "units"}
    GeminiLLMAdapter().to_provider_tools_format(tools.tools_schema())

    outcome = await tools.call("get_weather", {"city": "Lisbon"}, make_ctx())
    assert outcome.result == {"forecast": "sunny"}
    body = json.loads(seen[0].content)
    assert body == {
        "tool": "get_weather",
        "call_sid": "CA123",
        "caller_number": "+15551230001",
        "arguments": {"city": "Lisbon"},
    }
    assert seen[0].headers["authorization"] == "Bearer secret"

    failed = await tools.call("get_weather", {"city": "Atlantis"}, make_ctx())
    assert failed.error["error"]["type"] == "http_error" and failed.error["error"]["status"] == 503

    invalid = await tools.call("get_weather", {"units": "kelvin"}, make_ctx())
    assert invalid.error["error"]["type"] == "invalid_arguments"
    assert len(seen) == 2  # invalid arguments never reach the webhook


@pytest.mark.asyncio
async def test_http_tool_unreachable():
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    tools = ToolRegistry()
    add_http_tools(
        tools, [WebhookToolConfig(**{**WEATHER, "name": "w"})], transport=httpx.MockTransport(handle)
    )
    outcome = await tools.call("w", {"city": "Lisbon"}, make_ctx())
    assert outcome.error["error"]["type"] == "http_unreachable"
