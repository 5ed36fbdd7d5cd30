"""Fixtures shared by the tests."""

import pytest

import wait_for
from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.redis_server import redis_url  # noqa: F401  (fixture)
from tests.support import FakeTwilioRest

wait_for.install()  # as the server does at start-up: every test runs Pipecat the way calls do


@pytest.fixture
def fake_twilio_rest():
    """A running local fake of Twilio's REST API (Call resource: create and update)."""
    with FakeTwilioRest() as fake:
        yield fake
