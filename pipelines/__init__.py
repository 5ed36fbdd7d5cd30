"""Pipeline graphs: each a function from one call to a readable list of processors.

``GRAPHS`` names the graphs a deployment can choose; :mod:`bot` builds the chosen one
(see :mod:`pipelines.selection` for how a call's graph is chosen):

- ``realtime``: speech-to-speech (OpenAI Realtime, Gemini Live), :mod:`pipelines.realtime`;
- ``cascade``: speech-to-text -> LLM -> text-to-speech, :mod:`pipelines.cascade`.

Adding a graph: write a module with ``build(call) -> list[FrameProcessor]`` (one
processor per line of its ``return [...]``, each with a ``# comment`` the picture
shows), add it here, and run ``make graph NAME=<name>``.
"""

from collections.abc import Callable

from pipecat.processors.frame_processor import FrameProcessor

from pipelines import cascade, realtime
from pipelines.base import CallContext

GraphBuilder = Callable[[CallContext], list[FrameProcessor]]

#: The graphs, by name.
GRAPHS: dict[str, GraphBuilder] = {"realtime": realtime.build, "cascade": cascade.build}

__all__ = ["GRAPHS", "CallContext", "GraphBuilder"]
