"""A typed tool registry that feeds Pipecat function calling.

A tool is an ``async def fn(ctx: ToolContext, args: SomeArgs) -> dict`` whose argument
model ``SomeArgs`` is a pydantic ``BaseModel``. The JSON schema the model sees is derived
from that class (field types, ``Field(description=...)``, bounds, ``Literal`` enums), never
written by hand, and rewritten into the subset of JSON Schema that both Gemini Live and
OpenAI Realtime accept: ``$ref``s inlined, ``Optional[X]`` collapsed to ``X`` (left out of
``required``), titles and keywords Gemini rejects (``exclusiveMinimum``, ``format: date``,
...) dropped. Anything the schema can no longer express is still enforced, because the
arguments are validated against the pydantic model on every call.

One registry produces a Pipecat ``ToolsSchema`` (the service's adapter turns it into
Gemini's ``function_declarations`` or OpenAI's ``{"type": "function", ...}``) and
registers a handler per tool on a Pipecat LLM service::

    registry = ToolRegistry()

    class LookupArgs(BaseModel):
        city: str = Field(description="City name")

    @registry.tool(description="Look up a city.", timeout_s=3)
    async def lookup(ctx: ToolContext, args: LookupArgs) -> dict:
        return {"city": args.city}

    context = LLMContext(messages, tools=registry.tools_schema())
    registry.register_with(llm, lambda params: ToolContext(call_sid, caller, store))

:meth:`ToolRegistry.call` never raises (except for its own cancellation): bad arguments,
unknown tools, tool exceptions and timeouts come back as structured errors the model can
read and act on, e.g. ``{"error": {"type": "invalid_arguments", "message": ..., "details":
[{"field": "guests", "problem": "..."}]}}``.

Slow tools: Pipecat 1.14 has no "this tool is slow, say something" hook (only the
``on_function_calls_started`` event, fired at once). The registry therefore offers
``on_slow(name, args)``, called once when a tool runs longer than its ``slow_after_s``.

Imports: Pipecat 1.14 moved ``FunctionSchema``/``ToolsSchema`` to
``pipecat.adapters.llm.schemas`` (the old ``pipecat.adapters.schemas`` paths still work
but warn); the classes are the same.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

__all__ = [
    "InvalidArguments",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSpec",
    "error_payload",
    "portable_schema",
]

ToolFn = Callable[["ToolContext", Any], Awaitable[Any]]
OutcomeHook = Callable[[str, dict[str, Any], "ToolOutcome"], Any]
SlowHook = Callable[[str, dict[str, Any]], Any]

# Pipecat's own per-call deadline is set this much later than ours, so that our
# structured ``timeout`` error reaches the model instead of Pipecat's cancellation.
_PIPECAT_TIMEOUT_MARGIN_S = 2.0

# JSON Schema keywords kept in tool schemas: the ones Gemini's Schema object accepts
# that also mean the same thing to OpenAI. Everything else is dropped.
_PORTABLE_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "enum",
        "properties",
        "required",
        "items",
        "anyOf",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "default",
        "format",
    }
)
# String formats Gemini accepts; other formats (``date``, ``email``, ...) are dropped.
_PORTABLE_FORMATS = frozenset({"enum", "date-time"})


@dataclass
class ToolContext:
    """What a tool knows about the call it runs in. Set by the call, never by the model.

    Parameters:
        call_sid: Twilio call SID of the call.
        caller_number: The caller's number (E.164) as Twilio reported it, or None when
            withheld.
        store: The booking store (:class:`booking.store.BookingStore`).
        end_call: Async callable ``end_call(reason)`` that hangs the call up, or None
            when call control is unavailable (e.g. in tests).
        transfer_call: Async callable ``transfer_call(to_number)`` that transfers the
            call, or None when call control is unavailable.
        transfer_to: The number (E.164) a ``transfer_call`` tool transfers to; from
            configuration, never from the model.
    """

    call_sid: str
    caller_number: str | None
    store: Any
    end_call: Callable[[str], Awaitable[Any]] | None = None
    transfer_call: Callable[[str], Awaitable[Any]] | None = None
    transfer_to: str | None = None


@dataclass(frozen=True)
class ToolOutcome:
    """The outcome of one tool call.

    Parameters:
        result: The tool's JSON-ready result, or None when it failed.
        error: The error envelope ``{"error": {"type": ..., ...}}``, or None on success.
        duration_ms: Wall-clock time the call took, in milliseconds.
    """

    result: dict[str, Any] | None
    error: dict[str, Any] | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        """Whether the tool succeeded."""
        return self.error is None

    @property
    def payload(self) -> dict[str, Any]:
        """What the model is told: the result, or the error envelope."""
        return self.error if self.error is not None else (self.result or {})


class ToolError(Exception):
    """An expected failure a tool reports to the model (not logged as a crash).

    Args:
        type: Machine-readable error type, e.g. ``"booking_not_found"``.
        message: A sentence the model can act on.
        **extra: More JSON-ready fields for the error envelope.
    """

    def __init__(self, type: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.extra = extra


class InvalidArguments(Exception):
    """Raised by a tool's argument parser when the model's arguments are invalid.

    Args:
        details: One ``{"field": ..., "problem": ...}`` per problem.
    """

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{d.get('field')}: {d.get('problem')}" for d in details))
        self.details = details


def error_payload(type: str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    """Build the error envelope the model sees.

    Args:
        type: Machine-readable error type.
        message: Optional explanation.
        **extra: More JSON-ready fields.

    Returns:
        ``{"error": {"type": type, "message": message, **extra}}`` (message omitted if None).
    """
    body: dict[str, Any] = {"type": type}
    if message is not None:
        body["message"] = message
    body.update(extra)
    return {"error": body}


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool.

    Parameters:
        name: Tool name the model calls.
        description: What the tool does, for the model.
        fn: ``async fn(ctx, args)``.
        parse: Turns the model's raw arguments into ``args``; raises InvalidArguments.
        properties: JSON schema of each argument.
        required: Names of required arguments.
        timeout_s: Deadline for one call, in seconds.
        slow_after_s: After this many seconds a running call counts as slow (None: never).
        cancel_on_interruption: Passed to Pipecat's ``register_function`` (None: its default).
        args_model: The pydantic argument model, when the tool has one.
    """

    name: str
    description: str
    fn: ToolFn
    parse: Callable[[dict[str, Any]], Any]
    properties: dict[str, Any]
    required: list[str]
    timeout_s: float
    slow_after_s: float | None = 0.7
    cancel_on_interruption: bool | None = None
    args_model: type[BaseModel] | None = None

    def function_schema(self) -> FunctionSchema:
        """The tool as a Pipecat FunctionSchema (without a handler)."""
        return FunctionSchema(
            name=self.name,
            description=self.description,
            properties=self.properties,
            required=list(self.required),
        )


class _NoArgs(BaseModel):
    """Arguments of a tool that takes none."""


class ToolRegistry:
    """Typed async tools, their derived schemas, and their registration on Pipecat."""

    def __init__(self) -> None:
        """Create an empty registry."""
        self._tools: dict[str, ToolSpec] = {}

    # -- registration -------------------------------------------------------------

    def tool(
        self,
        *,
        description: str | None = None,
        name: str | None = None,
        args: type[BaseModel] | None = None,
        timeout_s: float = 10.0,
        slow_after_s: float | None = 0.7,
        cancel_on_interruption: bool | None = None,
    ) -> Callable[[ToolFn], ToolFn]:
        """Decorator registering ``async def fn(ctx, args: Model) -> dict`` as a tool.

        Args:
            description: What the tool does, for the model (default: the docstring's
                first paragraph).
            name: Tool name (default: the function's name).
            args: The argument model (default: the annotation of ``fn``'s second
                parameter; a function with only ``ctx`` takes no arguments).
            timeout_s: Deadline for one call, in seconds.
            slow_after_s: Seconds after which ``on_slow`` fires (None: never).
            cancel_on_interruption: Passed on to Pipecat's ``register_function``.

        Returns:
            The decorator; it returns ``fn`` unchanged.

        Raises:
            TypeError: If ``fn`` is not async or its argument model is not a BaseModel.
            ValueError: If the name is already registered.
        """

        def decorate(fn: ToolFn) -> ToolFn:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"tool {fn.__name__!r} must be an async function")
            model = args or _args_model_of(fn)
            doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0].strip()
            if not doc:
                raise ValueError(f"tool {fn.__name__!r} needs a description")
            schema = portable_schema(model.model_json_schema())
            takes_args = len(inspect.signature(fn).parameters) >= 2
            self.add(
                ToolSpec(
                    name=name or fn.__name__,
                    description=doc,
                    fn=fn if takes_args else _ignore_args(fn),
                    parse=_pydantic_parser(model),
                    properties=schema.get("properties", {}),
                    required=list(schema.get("required", [])),
                    timeout_s=timeout_s,
                    slow_after_s=slow_after_s,
                    cancel_on_interruption=cancel_on_interruption,
                    args_model=model,
                )
            )
            return fn

        return decorate

    def add(self, spec: ToolSpec) -> None:
        """Register a tool built by hand (e.g. from a JSON schema in configuration).

        Args:
            spec: The tool.

        Raises:
            ValueError: If a tool of that name is already registered.
        """
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} is already registered")
        self._tools[spec.name] = spec

    def copy(self) -> ToolRegistry:
        """A new registry with the same tools, to extend without touching this one."""
        clone = ToolRegistry()
        clone._tools = dict(self._tools)
        return clone

    # -- introspection ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Names of the registered tools, in registration order."""
        return list(self._tools)

    def spec(self, name: str) -> ToolSpec:
        """The registered tool called ``name``.

        Raises:
            KeyError: If there is no such tool.
        """
        return self._tools[name]

    def tools_schema(self, names: Iterable[str] | None = None) -> ToolsSchema:
        """The tools as a Pipecat ToolsSchema, for ``LLMContext(tools=...)``.

        Args:
            names: Only these tools (default: all, in registration order).

        Returns:
            A ToolsSchema of plain FunctionSchemas (handlers come from
            :meth:`register_with`).
        """
        chosen = self.names if names is None else list(names)
        return ToolsSchema(standard_tools=[self._tools[n].function_schema() for n in chosen])

    # -- calling ------------------------------------------------------------------

    async def call(
        self,
        name: str,
        raw_args: Mapping[str, Any] | None,
        ctx: ToolContext,
        *,
        on_slow: SlowHook | None = None,
    ) -> ToolOutcome:
        """Validate the model's arguments and run one tool, with its deadline.

        Args:
            name: Tool name, as the model called it.
            raw_args: The model's arguments (None counts as ``{}``).
            ctx: The call's context.
            on_slow: Called as ``on_slow(name, args)`` (sync or async) once the tool has
                run longer than its ``slow_after_s``; keep it quick (e.g. queue a
                spoken filler), it is cancelled when the tool finishes.

        Returns:
            The outcome; failures are in ``outcome.error``, never raised.
        """
        started = time.perf_counter()
        args_dict = dict(raw_args or {})

        def done(result: Any = None, error: dict[str, Any] | None = None) -> ToolOutcome:
            ms = (time.perf_counter() - started) * 1000
            if error is not None:
                logger.info(f"tool {name} -> {error['error']['type']} in {ms:.0f} ms")
            else:
                logger.info(f"tool {name} ok in {ms:.0f} ms")
            return ToolOutcome(result=result, error=error, duration_ms=ms)

        spec = self._tools.get(name)
        if spec is None:
            return done(error=error_payload("unknown_tool", f"No tool named {name!r}.", available=self.names))
        try:
            args = spec.parse(args_dict)
        except InvalidArguments as e:
            message = "The arguments are invalid; fix them and call the tool again."
            return done(error=error_payload("invalid_arguments", message, details=e.details))
        except Exception as e:  # a bug in a validator, not the model's fault
            logger.opt(exception=e).error(f"tool {name}: parsing its arguments failed")
            return done(error=error_payload("tool_failed", f"{name} could not read its arguments."))

        logger.debug(f"tool {name} called with {args_dict}")
        slow_task = _start_slow_timer(spec, args_dict, on_slow)
        # The tool runs in its own task so that its deadline holds even when its clean-up
        # after cancellation blocks (e.g. a database driver's thread stuck on a lock):
        # the outcome is given, and recorded, on time; the task is left to wind down.
        task = asyncio.ensure_future(spec.fn(ctx, args))
        try:
            raw = await asyncio.wait_for(asyncio.shield(task), spec.timeout_s)
            return done(result=_as_result(raw))
        except TimeoutError:
            task.cancel()
            _keep_until_done(task).add_done_callback(_retrieve_late_outcome)
            return done(error=error_payload("timeout", f"{name} did not answer within {spec.timeout_s:g} s."))
        except asyncio.CancelledError:
            task.cancel()
            raise
        except ToolError as e:
            return done(error=error_payload(e.type, e.message, **to_jsonable_python(e.extra)))
        except Exception as e:
            logger.opt(exception=e).error(f"tool {name} failed: {type(e).__name__}: {e}")
            return done(
                error=error_payload("tool_failed", f"{name} failed unexpectedly ({type(e).__name__}).")
            )
        finally:
            if slow_task is not None:
                slow_task.cancel()

    def register_with(
        self,
        llm: Any,
        context_factory: Callable[[Any], ToolContext],
        *,
        on_outcome: OutcomeHook | None = None,
        on_slow: SlowHook | None = None,
    ) -> None:
        """Register every tool on a Pipecat LLM service (``llm.register_function``).

        Each handler builds the call's context, runs :meth:`call`, answers with
        ``await params.result_callback(outcome.payload)`` and then reports the outcome.
        Pipecat's own per-tool deadline is set a little after the tool's ``timeout_s``.

        Args:
            llm: A Pipecat ``LLMService`` (e.g. GeminiLiveLLMService,
                OpenAIRealtimeLLMService).
            context_factory: ``context_factory(params) -> ToolContext``, given Pipecat's
                ``FunctionCallParams``.
            on_outcome: Called as ``on_outcome(name, args, outcome)`` (sync or async)
                after each call, e.g. to record it; its errors are logged, not raised.
                A call Pipecat cancels (barge-in, its deadline, the call's end) is
                reported too, with a ``cancelled`` error. Reports run in a task of
                their own, so cancelling the handler never loses one.
            on_slow: Passed to :meth:`call`.
        """
        for spec in self._tools.values():
            llm.register_function(
                spec.name,
                self._pipecat_handler(context_factory, on_outcome, on_slow),
                timeout_secs=spec.timeout_s + _PIPECAT_TIMEOUT_MARGIN_S,
                cancel_on_interruption=spec.cancel_on_interruption,
            )

    def _pipecat_handler(
        self,
        context_factory: Callable[[Any], ToolContext],
        on_outcome: OutcomeHook | None,
        on_slow: SlowHook | None,
    ) -> Callable[[Any], Awaitable[None]]:
        async def report(name: str, args: dict[str, Any], outcome: ToolOutcome) -> None:
            try:
                await _maybe_await(on_outcome(name, args, outcome))
            except Exception as e:
                logger.opt(exception=e).error(f"tool {name}: on_outcome failed")

        def record(name: str, args: dict[str, Any], outcome: ToolOutcome) -> asyncio.Future | None:
            # In a task of its own: Pipecat may cancel the handler (a barge-in, the
            # call's end) while, or before, the record is written.
            if on_outcome is None:
                return None
            return _keep_until_done(asyncio.ensure_future(report(name, args, outcome)))

        async def handler(params: Any) -> None:
            name = params.function_name
            args = dict(params.arguments or {})
            started = time.perf_counter()
            try:
                ctx = context_factory(params)
            except Exception as e:
                logger.opt(exception=e).error(f"tool {name}: building its context failed")
                error = error_payload("tool_failed", f"{name} could not start.")
                outcome = ToolOutcome(result=None, error=error, duration_ms=0.0)
            else:
                try:
                    outcome = await self.call(name, args, ctx, on_slow=on_slow)
                except asyncio.CancelledError:
                    # Pipecat cancels a call when the caller barges in (the tool's
                    # ``cancel_on_interruption``), at its own deadline, or when the call
                    # ends; it tells the model itself.
                    ms = (time.perf_counter() - started) * 1000
                    logger.info(f"tool {name} -> cancelled after {ms:.0f} ms")
                    message = f"{name} was cancelled before it answered (the caller spoke, or the call ended)."
                    record(name, args, ToolOutcome(result=None, error=error_payload("cancelled", message), duration_ms=ms))
                    raise
            await params.result_callback(outcome.payload)
            written = record(name, args, outcome)
            if written is not None:
                await asyncio.shield(written)

        return handler


# -- schema derivation ----------------------------------------------------------------


def portable_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a JSON schema into the subset Gemini Live and OpenAI Realtime both accept.

    ``$ref``s are inlined from ``$defs``; ``anyOf: [X, null]`` becomes ``X``; a ``null``
    default is dropped; keywords outside :data:`_PORTABLE_KEYWORDS` (titles,
    ``additionalProperties``, ``exclusiveMinimum``, ...) and string formats other than
    ``date-time`` are dropped.

    Args:
        schema: A JSON schema, e.g. ``Model.model_json_schema()``.

    Returns:
        A new schema; the input is not modified.
    """
    return _portable(schema, schema.get("$defs", {}))


def _portable(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_portable(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _portable({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return _portable({**_portable(branches[0], defs), **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _PORTABLE_KEYWORDS:
            continue
        if key == "default" and value is None:
            continue
        if key == "format" and value not in _PORTABLE_FORMATS:
            continue
        if key == "properties":
            out[key] = {prop: _portable(sub, defs) for prop, sub in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = _portable(value, defs)
        else:
            out[key] = value
    return out


def _args_model_of(fn: ToolFn) -> type[BaseModel]:
    params = list(inspect.signature(fn).parameters)
    if len(params) == 1:
        return _NoArgs
    if len(params) != 2:
        raise TypeError(f"tool {fn.__name__!r} must take (ctx) or (ctx, args)")
    model = typing.get_type_hints(fn).get(params[1])
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError(f"tool {fn.__name__!r}: annotate {params[1]!r} with a pydantic BaseModel")
    return model


def _ignore_args(fn: Callable[[ToolContext], Awaitable[Any]]) -> ToolFn:
    async def without_args(ctx: ToolContext, _args: Any) -> Any:
        return await fn(ctx)

    return without_args


def _pydantic_parser(model: type[BaseModel]) -> Callable[[dict[str, Any]], BaseModel]:
    def parse(raw: dict[str, Any]) -> BaseModel:
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            raise InvalidArguments(_validation_details(e)) from None

    return parse


def _validation_details(error: ValidationError) -> list[dict[str, Any]]:
    details = []
    for item in error.errors(include_url=False):
        field_path = ".".join(str(part) for part in item["loc"]) or None
        problem = item["msg"].removeprefix("Value error, ")
        details.append({"field": field_path, "problem": problem})
    return details


def _as_result(raw: Any) -> dict[str, Any]:
    jsonable = to_jsonable_python(raw)
    return jsonable if isinstance(jsonable, dict) else {"value": jsonable}


def _start_slow_timer(spec: ToolSpec, args: dict[str, Any], on_slow: SlowHook | None) -> asyncio.Task | None:
    if on_slow is None or spec.slow_after_s is None:
        return None

    async def fire() -> None:
        await asyncio.sleep(spec.slow_after_s)
        try:
            await _maybe_await(on_slow(spec.name, args))
        except Exception as e:
            logger.opt(exception=e).error(f"tool {spec.name}: on_slow failed")

    return asyncio.create_task(fire(), name=f"slow-{spec.name}")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


_background: set[asyncio.Future] = set()


def _keep_until_done(task: asyncio.Future) -> asyncio.Future:
    """Hold a reference to a task nobody awaits until it ends (asyncio keeps only weak ones)."""
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _retrieve_late_outcome(task: asyncio.Future) -> None:
    """Log what a tool that ran past its deadline ended with (nothing is waiting for it)."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning(f"a tool past its deadline ended with {type(task.exception()).__name__}")
