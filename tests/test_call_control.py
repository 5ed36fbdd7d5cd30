"""Call control against a local fake of Twilio's REST API: transfer to a person."""

from __future__ import annotations

import pytest

from call_control import TRANSFERRED, CallControl
from config import load_settings
from resources import Resources
from records import CallStore
from tests.support import ACCOUNT_SID, TOKEN

CALL_SID = "CA" + "5" * 32


def _resources(tmp_path, **overrides) -> Resources:
    settings = load_settings(_env_file=None, CALLS_DB_PATH=str(tmp_path / "c.db"), **overrides)
    return Resources(settings=settings, store=CallStore(settings.CALLS_DB_PATH))  # never written


@pytest.mark.asyncio
async def test_transfer_dials_the_configured_number_through_twilio(tmp_path, fake_twilio_rest):
    resources = _resources(
        tmp_path, TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_API_BASE_URL=fake_twilio_rest.url,
    )
    control = CallControl(CALL_SID, "MZ" + "1" * 32, resources)
    await control.transfer("+15550001111")
    (request,) = fake_twilio_rest.requests
    assert request["call_sid"] == CALL_SID and request["account_sid"] == ACCOUNT_SID
    assert "<Dial>+15550001111</Dial>" in request["form"]["Twiml"]
    assert control.reason == TRANSFERRED


@pytest.mark.asyncio
async def test_transfer_without_credentials_is_refused_not_silent(tmp_path):
    control = CallControl(CALL_SID, "MZ" + "1" * 32, _resources(tmp_path))
    with pytest.raises(RuntimeError, match="credentials"):
        await control.transfer("+15550001111")
    assert control.reason is None
