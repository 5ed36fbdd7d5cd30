"""Which graph a call runs: the deployment's, the dialled number's, or the simulated caller's.

- ``GRAPH`` (default ``realtime``) is the deployment's graph.
- ``NUMBER_GRAPHS`` maps a dialled number (the voice webhook's ``To``, E.164) to a
  graph and its settings, e.g.
  ``{"+15550001111": {"graph": "cascade", "language": "ja"}}``. The settings are the
  per-call agent settings of :mod:`pipelines.call_settings` without their ``agent_``
  prefix (``language``, ``voice``, ``model``, ``instructions``, ``temperature``).
- The webhook writes the chosen graph and settings into the TwiML as ``<Parameter>``s
  (``graph``, ``agent_language``, ...); they come back in the media stream's ``start``
  message, and the call builds that graph.
- The simulated caller may override the graph (``make call GRAPH=cascade``) by sending
  another ``graph`` value in its ``start`` message. That is as trusted as every other
  ``<Parameter>``: the stream is only accepted with the one-time stream token that the
  (signature-checked) webhook handed out, so only Twilio, or whoever holds the Twilio
  auth token or runs the server unsigned on loopback, can choose. Real Twilio sends
  exactly the TwiML's parameters.

A configuration naming an unknown graph stops the server at start
(:class:`config.ConfigError`); a call asking for one is refused and recorded
(``end_reason`` ``unknown_graph``).
"""

from __future__ import annotations

import re

__all__ = ["GRAPH_PARAMETER", "NUMBER_SETTINGS", "check_graph_settings", "chosen_graph", "number_parameters"]

#: The ``<Parameter>`` (and ``customParameters`` key) that names a call's graph.
GRAPH_PARAMETER = "graph"
#: Settings a ``NUMBER_GRAPHS`` entry may give besides ``graph``: each becomes the
#: ``agent_<name>`` parameter of :mod:`pipelines.call_settings`.
NUMBER_SETTINGS = frozenset({"language", "voice", "model", "instructions", "temperature"})
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


def check_graph_settings(graph: str, number_graphs: dict[str, dict[str, str]]) -> None:
    """Refuse a graph configuration that cannot work.

    Args:
        graph: ``GRAPH``.
        number_graphs: ``NUMBER_GRAPHS``.

    Raises:
        config.ConfigError: Naming the variable, for an unknown graph, a number that is
            not E.164, an entry without ``graph`` or with an unknown setting.
    """
    from config import ConfigError  # noqa: PLC0415 (config imports this module lazily)
    from pipelines import GRAPHS  # noqa: PLC0415

    known = ", ".join(sorted(GRAPHS))
    if graph not in GRAPHS:
        raise ConfigError(f"GRAPH={graph!r} is not a graph; the graphs are: {known}")
    for number, entry in number_graphs.items():
        if not _E164.fullmatch(number):
            raise ConfigError(f"NUMBER_GRAPHS: {number!r} is not an E.164 number like +15551234567")
        if entry.get("graph") not in GRAPHS:
            raise ConfigError(
                f"NUMBER_GRAPHS[{number!r}] needs a 'graph' among: {known} (got {entry.get('graph')!r})"
            )
        unknown = set(entry) - NUMBER_SETTINGS - {"graph"}
        if unknown:
            raise ConfigError(
                f"NUMBER_GRAPHS[{number!r}]: unknown settings {sorted(unknown)}; "
                f"allowed are graph and {sorted(NUMBER_SETTINGS)}"
            )


def number_parameters(graph: str, number_graphs: dict[str, dict[str, str]], to_number: str | None) -> dict[str, str]:
    """The ``<Parameter>``s that choose a call's graph, from the number dialled.

    Args:
        graph: The deployment's graph (``GRAPH``).
        number_graphs: ``NUMBER_GRAPHS``.
        to_number: The webhook's ``To``.

    Returns:
        ``{"graph": name}`` plus ``agent_<setting>`` for each setting of the number's entry.
    """
    entry = number_graphs.get(to_number or "") or {}
    parameters = {GRAPH_PARAMETER: entry.get("graph") or graph}
    parameters.update({f"agent_{k}": str(v) for k, v in entry.items() if k in NUMBER_SETTINGS})
    return parameters


def chosen_graph(default: str, parameters: dict[str, str]) -> str:
    """The graph a call asks for: its ``graph`` parameter, else the deployment's.

    Args:
        default: ``GRAPH``.
        parameters: The ``start`` message's ``customParameters``.

    Returns:
        The name (not checked here: :func:`bot.run_bot` refuses unknown ones).
    """
    return parameters.get(GRAPH_PARAMETER) or default
