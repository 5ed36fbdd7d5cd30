"""Pipeline graphs: each a function from one call to a readable list of processors.

``GRAPHS`` names the graphs a deployment can choose; :mod:`bot` builds the chosen one.
"""

from collections.abc import Callable

from pipecat.processors.frame_processor import FrameProcessor

from pipelines import realtime
from pipelines.base import CallContext

GraphBuilder = Callable[[CallContext], list[FrameProcessor]]

#: The graphs, by name.
GRAPHS: dict[str, GraphBuilder] = {"realtime": realtime.build}

__all__ = ["GRAPHS", "CallContext", "GraphBuilder"]
