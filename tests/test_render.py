"""The graph pictures come from the code that builds the graphs, and cannot drift."""

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from pipecat.transports.base_output import BaseOutputTransport

from pipelines import GRAPHS, render
from processors.barge_in import PlayoutTracker

DOCS = Path(__file__).resolve().parent.parent / "docs" / "graphs"


@pytest.fixture(scope="module")
def realtime_mermaid() -> str:
    """The realtime graph's Mermaid, rendered once for the module."""
    return render.mermaid("realtime")


def _mermaid_classes(text: str) -> list[str]:
    """The class names of the processor nodes, in the order they are declared."""
    return re.findall(r'^\s*p\d+\["([A-Za-z_][A-Za-z0-9_]*)', text, flags=re.MULTILINE)


def test_mermaid_lists_the_classes_build_produces_in_order(realtime_mermaid):
    processors = render.graph_processors("realtime")
    classes = [type(p).__name__ for p in processors]
    assert _mermaid_classes(realtime_mermaid) == classes
    assert realtime_mermaid.splitlines()[1] == "flowchart TD"
    edges = re.findall(r"^\s*(\w+) --> (\w+)$", realtime_mermaid, flags=re.MULTILINE)
    chain = [(f"p{i}", f"p{i + 1}") for i in range(len(processors) - 1)]
    output = next(i for i, p in enumerate(processors) if isinstance(p, BaseOutputTransport))
    assert edges == [("caller_in", "p0"), *chain, (f"p{output}", "caller_out")]


def test_playout_tracker_comes_before_the_output_transport(realtime_mermaid):
    processors = render.graph_processors("realtime")
    tracker = next(i for i, p in enumerate(processors) if isinstance(p, PlayoutTracker))
    output = next(i for i, p in enumerate(processors) if isinstance(p, BaseOutputTransport))
    assert tracker < output
    classes = _mermaid_classes(realtime_mermaid)
    assert classes.index("PlayoutTracker") < classes.index(type(processors[output]).__name__)


def test_labels_carry_the_builders_line_comments(realtime_mermaid):
    assert "PlayoutTracker<br/>20 ms frames + Twilio marks" in realtime_mermaid
    assert '"LLMAssistantAggregator"' in realtime_mermaid  # its line has no comment


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_committed_picture_matches_the_graph(name):
    committed = (DOCS / f"{name}.mmd").read_text(encoding="utf-8")
    assert committed == render.mermaid(name), (
        f"docs/graphs/{name}.mmd is stale: run `make graph NAME={name}`"
    )
    assert (DOCS / f"{name}.svg").is_file(), f"docs/graphs/{name}.svg is missing: run `make graph NAME={name}`"


def test_both_graphs_share_barge_in_transcript_and_tools():
    """The processors that make a call trustworthy are the same classes in every graph."""
    shared = {"EchoCanceller", "_UserTurnTap", "LLMUserAggregator", "DTMFToAgent", "PlayoutTracker",
              "TwilioOutputTransport", "LLMAssistantAggregator"}
    for name in GRAPHS:
        classes = {type(p).__name__ for p in render.graph_processors(name)}
        assert shared <= classes, (name, shared - classes)
    cascade = [type(p).__name__ for p in render.graph_processors("cascade")]
    assert cascade.index("OpenAISTTService") < cascade.index("LLMUserAggregator")
    assert cascade.index("OpenAILLMService") < cascade.index("OpenAITTSService") < cascade.index("PlayoutTracker")


def test_dot_draws_the_same_chain(realtime_mermaid):
    text = render.dot("realtime")
    assert text.splitlines()[1] == 'digraph "realtime" {'
    dot_classes = re.findall(r'^\s*p\d+ \[label="([A-Za-z_][A-Za-z0-9_]*)', text, flags=re.MULTILINE)
    assert dot_classes == _mermaid_classes(realtime_mermaid)
    assert "caller_in -> p0;" in text


def test_building_leaves_no_tasks():
    async def build_inside_a_loop() -> set[asyncio.Task]:
        render.graph_processors("realtime")
        await asyncio.sleep(0)
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(build_inside_a_loop()) == set()


def test_unknown_graph_is_named():
    with pytest.raises(KeyError, match="realtime"):
        render.graph_processors("no-such-graph")


def test_cli_lists_and_prints(capsys, tmp_path):
    assert render.main([]) == 0
    assert "realtime" in capsys.readouterr().out.split()
    out = tmp_path / "g.mmd"
    assert render.main(["realtime", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (DOCS / "realtime.mmd").read_text(encoding="utf-8")


def test_svg_needs_graphviz_and_is_drawn_when_present(monkeypatch):
    if shutil.which("dot") is None:
        with pytest.raises(RuntimeError, match="graphviz"):
            render.svg("realtime")
        pytest.skip("Graphviz's dot is not installed (Debian package graphviz)")
    image = render.svg("realtime").decode()
    assert "<svg" in image and "PlayoutTracker" in image
    committed = DOCS / "realtime.svg"
    if committed.exists():
        for name in _mermaid_classes((DOCS / "realtime.mmd").read_text(encoding="utf-8")):
            assert name in committed.read_text(encoding="utf-8")
    monkeypatch.setattr(render.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="graphviz"):
        render.svg("realtime")
