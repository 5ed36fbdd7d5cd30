"""Which graph a call runs: the deployment's, the dialled number's; bad configuration stops the server."""

import json
import xml.etree.ElementTree as ET

import pytest

from config import ConfigError, load_settings
from pipelines.selection import chosen_graph
from twiml import connect_twiml

FORM = {"From": "+15551230001", "To": "+15559870002", "Direction": "inbound"}
JA_NUMBER = "+15550001111"


def _settings(**overrides):
    return load_settings(_env_file=None, HOST="127.0.0.1", **overrides)


def _parameters(settings, to: str) -> dict[str, str]:
    twiml = connect_twiml(settings, {**FORM, "To": to}, token="tok")
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def test_the_deployment_graph_is_in_every_calls_twiml():
    assert _parameters(_settings(), FORM["To"])["graph"] == "realtime"
    assert _parameters(_settings(GRAPH="cascade"), FORM["To"])["graph"] == "cascade"


def test_a_dialled_number_chooses_its_graph_and_settings():
    numbers = {JA_NUMBER: {"graph": "cascade", "language": "ja", "voice": "nova"}}
    settings = _settings(NUMBER_GRAPHS=numbers)
    mapped = _parameters(settings, JA_NUMBER)
    assert mapped["graph"] == "cascade"
    assert mapped["agent_language"] == "ja" and mapped["agent_voice"] == "nova"
    assert mapped["to"] == JA_NUMBER and mapped["stream_token"] == "tok"
    other = _parameters(settings, FORM["To"])
    assert other["graph"] == "realtime" and "agent_language" not in other


def test_number_graphs_is_read_as_json_from_the_environment(monkeypatch):
    monkeypatch.setenv("NUMBER_GRAPHS", json.dumps({JA_NUMBER: {"graph": "cascade", "language": "ja"}}))
    assert _parameters(_settings(), JA_NUMBER)["agent_language"] == "ja"


def test_the_call_asks_for_its_graph_else_the_deployments():
    assert chosen_graph("realtime", {"graph": "cascade"}) == "cascade"
    assert chosen_graph("cascade", {}) == "cascade"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"GRAPH": "casade"}, "GRAPH='casade' is not a graph; the graphs are: cascade, realtime"),
        ({"NUMBER_GRAPHS": {"5550001111": {"graph": "cascade"}}}, "not an E.164 number"),
        ({"NUMBER_GRAPHS": {"+15550001111": {"graph": "nope"}}}, "needs a 'graph' among: cascade, realtime"),
        ({"NUMBER_GRAPHS": {"+15550001111": {"language": "ja"}}}, "needs a 'graph'"),
        ({"NUMBER_GRAPHS": {"+15550001111": {"graph": "cascade", "colour": "red"}}},
         "unknown settings ['colour']"),
    ],
)
def test_a_graph_configuration_that_cannot_work_stops_the_server(overrides, message):
    with pytest.raises(ConfigError) as error:
        _settings(**overrides)
    assert message in str(error.value)
