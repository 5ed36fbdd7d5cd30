"""Pictures of the pipeline graphs, drawn from the same code that builds them.

A graph in :data:`pipelines.GRAPHS` is built for a stand-in call that never touches
the network: settings without ``.env``, an in-memory call store, a transport on a
socket that refuses every use, and the offline servers' URLs on a closed port. Services
connect only in ``setup()``, which is never called here, so building is safe. The
processors that come back are drawn in order, each labelled with its class name and
the trailing ``# ...`` comment of its line in the builder's ``return [...]``.

Usage::

    python -m pipelines.render                      # list the graphs
    python -m pipelines.render realtime             # Mermaid
    python -m pipelines.render realtime --format svg --out docs/graphs/realtime.svg
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import shutil
import subprocess
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport

import config
import records
from pipelines import GRAPHS, CallContext
from processors.twilio_serializer import TwilioMediaSerializer
from processors.twilio_transport import twilio_transport

__all__ = ["dot", "graph_processors", "mermaid", "svg"]

#: The stand-in call's settings; ``settings_overrides`` win. ``AGENT_PROVIDER=local``
#: keeps the picture the same whatever provider keys the environment holds, and a
#: loopback ``HOST`` keeps a server's ``HOST`` from failing the settings' checks.
STAND_IN_SETTINGS = {
    "HOST": "127.0.0.1",
    "LOCAL_AGENT_BASE_URL": "ws://127.0.0.1:9/v1/realtime",  # discard port: nothing listens
    "CALLS_DB_PATH": ":memory:",
    "AGENT_PROVIDER": "local",
}
#: The stand-in call's offline OpenAI HTTP server (the cascade's services): nothing listens.
STAND_IN_OPENAI_URL = "http://127.0.0.1:9/v1"
#: The label of the caller's end of the line, drawn at both ends of a graph.
CALLER = "Twilio caller"


class _NoSocket:
    """A stand-in for FastAPI's WebSocket: building a transport reads nothing from it.

    Any use beyond construction (receiving, sending, closing) raises, so a picture can
    never talk to anything.
    """

    headers: dict[str, str] = {}

    def __getattr__(self, name: str):
        raise RuntimeError(f"the stand-in socket of a rendered graph has no {name!r}")


@dataclass(frozen=True)
class _Node:
    """One processor as drawn: its class name and the comment of its line, if any."""

    name: str
    note: str
    output: bool


def graph_processors(name: str, **settings_overrides) -> list[FrameProcessor]:
    """Build a named graph for a stand-in call, without any network.

    Args:
        name: A graph in :data:`pipelines.GRAPHS`.
        **settings_overrides: Settings that win over the stand-in's and the
            environment's (e.g. ``AGENT_PROVIDER="openai"``, ``OPENAI_API_KEY="x"``).

    Returns:
        The graph's processors in pipeline order, never set up.

    Raises:
        KeyError: If no graph has that name.
    """
    builder = _builder(name)
    settings = config.load_settings(_env_file=None, **{**STAND_IN_SETTINGS, **settings_overrides})
    stream_sid, call_sid = "MZ" + "0" * 32, "CA" + "0" * 32
    transport = twilio_transport(_NoSocket(), TwilioMediaSerializer(stream_sid, call_sid))
    call = CallContext(
        call_sid=call_sid,
        stream_sid=stream_sid,
        settings=settings,
        store=records.CallStore(":memory:"),
        transport=transport,
        local_agent_url=settings.LOCAL_AGENT_BASE_URL,
        local_openai_url=STAND_IN_OPENAI_URL,
        resources=None,
        control=None,
    )
    processors = builder(call)
    logger.debug(f"graph {name!r}: {len(processors)} processors")
    return processors


def mermaid(name: str) -> str:
    """Draw a named graph as a Mermaid flowchart (top to bottom).

    Args:
        name: A graph in :data:`pipelines.GRAPHS`.

    Returns:
        The Mermaid text, ending with a newline.
    """
    nodes = _nodes(name)
    lines = [f"%% {name}: rendered by `python -m pipelines.render {name}`; do not edit", "flowchart TD"]
    lines.append(f'    caller_in(["{CALLER}"])')
    for i, node in enumerate(nodes):
        label = _mermaid_text(node.name) + (f"<br/>{_mermaid_text(node.note)}" if node.note else "")
        lines.append(f'    p{i}["{label}"]')
    lines.append(f'    caller_out(["{CALLER}"])')
    lines.append("    caller_in --> p0")
    lines.extend(f"    p{i} --> p{i + 1}" for i in range(len(nodes) - 1))
    lines.extend(f"    p{i} --> caller_out" for i, node in enumerate(nodes) if node.output)
    return "\n".join(lines) + "\n"


def dot(name: str) -> str:
    """Draw a named graph as Graphviz DOT (top to bottom).

    Args:
        name: A graph in :data:`pipelines.GRAPHS`.

    Returns:
        The DOT text, ending with a newline.
    """
    nodes = _nodes(name)
    lines = [
        f"// {name}: rendered by `python -m pipelines.render {name} --format dot`; do not edit",
        f"digraph {_dot_text(name)} {{",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded", fontname="Helvetica"];',
        f'    caller_in [label={_dot_text(CALLER)}, shape=ellipse];',
    ]
    for i, node in enumerate(nodes):
        label = node.name + (f"\n{node.note}" if node.note else "")
        lines.append(f"    p{i} [label={_dot_text(label)}];")
    lines.append(f'    caller_out [label={_dot_text(CALLER)}, shape=ellipse];')
    lines.append("    caller_in -> p0;")
    lines.extend(f"    p{i} -> p{i + 1};" for i in range(len(nodes) - 1))
    lines.extend(f"    p{i} -> caller_out;" for i, node in enumerate(nodes) if node.output)
    lines.append("}")
    return "\n".join(lines) + "\n"


def svg(name: str) -> bytes:
    """Draw a named graph as SVG with Graphviz's ``dot`` program.

    Args:
        name: A graph in :data:`pipelines.GRAPHS`.

    Returns:
        The SVG document.

    Raises:
        RuntimeError: If Graphviz's ``dot`` is not installed, or it fails.
    """
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(
            "rendering SVG needs Graphviz's 'dot' program: install the Debian package "
            "graphviz (sudo apt-get install graphviz)"
        )
    result = subprocess.run([program, "-Tsvg"], input=dot(name).encode(), capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"graphviz 'dot' failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _builder(name: str):
    """The builder of a named graph.

    Raises:
        KeyError: If no graph has that name; the message lists the graphs.
    """
    try:
        return GRAPHS[name]
    except KeyError:
        raise KeyError(f"no graph {name!r}; the graphs are: {', '.join(sorted(GRAPHS))}") from None


def _nodes(name: str) -> list[_Node]:
    """The processors of a named graph, as drawn."""
    processors = graph_processors(name)
    notes = _line_comments(_builder(name), len(processors))
    return [
        _Node(type(p).__name__, note, isinstance(p, BaseOutputTransport))
        for p, note in zip(processors, notes, strict=True)
    ]


def _line_comments(builder, count: int) -> list[str]:
    """The trailing comment of each element of the builder's returned list.

    Only the builder's last ``return [...]`` is read, and only when it has exactly
    ``count`` elements, each ending on a line of its own; otherwise (a graph built some
    other way) every note is empty, and the picture shows class names only.

    Args:
        builder: A graph builder.
        count: How many processors the builder returned.

    Returns:
        ``count`` notes, in order; empty where a line has no comment.
    """
    empty = [""] * count
    try:
        source = textwrap.dedent(inspect.getsource(builder))
        tree = ast.parse(source)
        comments = {
            token.start[0]: token.string.lstrip("#").strip()
            for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT
        }
    except (OSError, TypeError, SyntaxError, tokenize.TokenError) as e:
        logger.debug(f"no source comments for {builder!r}: {e}")
        return empty
    returns = [
        node for node in ast.walk(tree) if isinstance(node, ast.Return) and isinstance(node.value, ast.List)
    ]
    if not returns:
        return empty
    elements = max(returns, key=lambda node: node.lineno).value.elts
    ends = [element.end_lineno for element in elements]
    if len(elements) != count or len(set(ends)) != count:
        return empty
    return [comments.get(end, "") for end in ends]


def _mermaid_text(text: str) -> str:
    """Escape a label for a double-quoted Mermaid node."""
    return text.replace('"', "#quot;").replace("<", "#lt;")


def _dot_text(text: str) -> str:
    """Quote a string for DOT."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def main(argv: list[str] | None = None) -> int:
    """Command line: print or write one graph's picture, or list the graphs.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m pipelines.render", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="a graph; without one, the graphs are listed")
    parser.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    parser.add_argument("--out", type=Path, help="write to this file instead of standard output")
    args = parser.parse_args(argv)
    if args.name is None:
        print("\n".join(sorted(GRAPHS)))
        return 0
    if args.name not in GRAPHS:
        parser.error(f"no graph {args.name!r}; the graphs are: {', '.join(sorted(GRAPHS))}")
    try:
        if args.format == "svg":
            data = svg(args.name)
        else:
            data = (mermaid if args.format == "mermaid" else dot)(args.name).encode()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(data)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    sys.exit(main())
