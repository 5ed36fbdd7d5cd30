"""Twilio Media Streams serializer: our codec on the audio path, and bad input never raises."""

import base64
import json

import numpy as np
import pytest

from pipecat.frames.frames import (
    CancelWorkerFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from processors.g711 import ulaw_decode, ulaw_encode
from processors.twilio_serializer import CALLER_HUNG_UP, TwilioMediaSerializer

STREAM = "MZ" + "a" * 32


@pytest.fixture
def serializer():
    return TwilioMediaSerializer(STREAM, "CA" + "b" * 32)


def _media(payload: bytes) -> str:
    return json.dumps(
        {"event": "media", "streamSid": STREAM, "media": {"payload": base64.b64encode(payload).decode()}}
    )


@pytest.mark.asyncio
async def test_inbound_media_becomes_8khz_pcm_without_resampling(serializer):
    ulaw = bytes(range(96, 256))  # one 20 ms frame: 160 mu-law bytes
    frame = await serializer.deserialize(_media(ulaw))
    assert isinstance(frame, InputAudioRawFrame)
    assert frame.sample_rate == 8000 and frame.num_frames == 160
    assert frame.audio == ulaw_decode(ulaw)


@pytest.mark.asyncio
async def test_outbound_8khz_audio_becomes_one_media_message(serializer):
    pcm = (np.sin(np.arange(160) / 3) * 8000).astype("<i2").tobytes()
    message = json.loads(await serializer.serialize(OutputAudioRawFrame(pcm, 8000, 1)))
    assert message["event"] == "media" and message["streamSid"] == STREAM
    assert base64.b64decode(message["media"]["payload"]) == ulaw_encode(pcm)


@pytest.mark.asyncio
async def test_outbound_audio_at_another_rate_is_still_converted(serializer):
    pcm = np.zeros(480, dtype="<i2").tobytes()  # 20 ms at 24 kHz
    message = json.loads(await serializer.serialize(OutputAudioRawFrame(pcm, 24000, 1)))
    assert len(base64.b64decode(message["media"]["payload"])) == 160


@pytest.mark.asyncio
async def test_interruption_clears_twilios_buffer(serializer):
    message = json.loads(await serializer.serialize(InterruptionFrame()))
    assert message == {"event": "clear", "streamSid": STREAM}


@pytest.mark.asyncio
async def test_stop_ends_the_call_and_mark_is_passed_on(serializer):
    stop = await serializer.deserialize(json.dumps({"event": "stop", "streamSid": STREAM}))
    assert isinstance(stop, CancelWorkerFrame) and stop.reason == CALLER_HUNG_UP
    mark = {"event": "mark", "streamSid": STREAM, "mark": {"name": "m1"}}
    frame = await serializer.deserialize(json.dumps(mark))
    assert isinstance(frame, InputTransportMessageFrame) and frame.message == mark


@pytest.mark.asyncio
async def test_dtmf_reaches_the_pipeline(serializer):
    frame = await serializer.deserialize(json.dumps({"event": "dtmf", "dtmf": {"digit": "5"}}))
    assert isinstance(frame, InputDTMFFrame) and frame.button.value == "5"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "message",
    [
        "not json",
        b"\x00\x01binary",
        "[1, 2, 3]",
        json.dumps({"event": "media", "media": {"payload": "***not base64***"}}),
        json.dumps({"event": "media", "media": {}}),
        json.dumps({"event": "media", "media": "oops"}),
        json.dumps({"event": "dtmf", "dtmf": {"digit": "X"}}),
        json.dumps({"event": "dtmf", "dtmf": None}),
        json.dumps({"event": "no-such-event"}),
        json.dumps({"no": "event"}),
    ],
)
async def test_malformed_messages_are_dropped_not_raised(serializer, message):
    assert await serializer.deserialize(message) is None


def test_fuzzed_messages_never_raise_and_never_end_the_call():
    """Hypothesis: any message, Twilio-shaped or garbage, is a frame or None, never an error.

    2,000 here, in-process (shrinks to a minimal failing message); the fault matrix
    (``test_fault_matrix_e2e.py``) sends 10,000 to the real server over loopback.

    A ``CancelWorkerFrame`` would end the call: only ``stop`` may produce one, and the
    strategy sends none.
    """
    import asyncio

    from hypothesis import HealthCheck, given, settings

    from pipecat.frames.frames import Frame
    from tests.fuzz_messages import messages

    from loguru import logger

    serializer = TwilioMediaSerializer(STREAM, "CA" + "b" * 32)
    loop = asyncio.new_event_loop()
    logger.disable("processors.twilio_serializer")  # 10,000 warnings would only slow it down

    @settings(max_examples=2_000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def deserialize_is_total(message):
        frame = loop.run_until_complete(serializer.deserialize(message))
        assert frame is None or isinstance(frame, Frame)
        assert not isinstance(frame, CancelWorkerFrame)

    try:
        deserialize_is_total()
    finally:
        loop.close()
        logger.enable("processors.twilio_serializer")


@pytest.mark.asyncio
async def test_a_media_payload_over_a_second_is_dropped(serializer):
    from processors.twilio_serializer import MAX_MEDIA_BYTES

    assert await serializer.deserialize(_media(bytes(MAX_MEDIA_BYTES))) is not None
    assert await serializer.deserialize(_media(bytes(MAX_MEDIA_BYTES + 1))) is None
