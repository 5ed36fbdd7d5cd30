"""Twilio Media Streams serializer that uses our G.711 codec and never resamples.

Pipecat's :class:`~pipecat.serializers.twilio.TwilioFrameSerializer` converts audio with
soxr VHQ stream resamplers that hold back tens of milliseconds per direction. This
subclass keeps its protocol handling (``clear`` on interruption, DTMF, transport
messages) and replaces only the audio path:

- inbound ``media``: base64 -> mu-law -> 16-bit PCM at 8000 Hz, 160 samples per
  20 ms frame, no resampling (the pipeline's :class:`AudioResamplerProcessor` brings
  it to the model's rate with ~3 ms delay);
- outbound audio: 16-bit PCM at 8000 Hz -> mu-law -> base64 ``media`` message.

Inbound ``stop`` (the caller hung up) becomes a ``CancelWorkerFrame`` with the reason
``caller_hung_up``, which ends the call's pipeline at once: nobody is listening any
more, so nothing queued needs to play. Inbound ``mark`` becomes an
:class:`InputTransportMessageFrame` carrying the message.

Malformed input (bad JSON, bad base64, an odd-sized payload, a payload over
:data:`MAX_MEDIA_BYTES`, unknown events) is logged and dropped: it never raises, because an exception here would end the
transport's receive loop and with it the call.

Protocol source: https://www.twilio.com/docs/voice/media-streams/websocket-messages
"""

from __future__ import annotations

import base64
import binascii
import json

from loguru import logger

from pipecat.frames.frames import (
    AudioRawFrame,
    CancelWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
)
from pipecat.serializers.twilio import TwilioFrameSerializer

from diagnostics import CALL_PROBE
from processors.g711 import ulaw_decode, ulaw_encode
from processors.resampler import StreamResampler

__all__ = ["CALLER_HUNG_UP", "MAX_MEDIA_BYTES", "TWILIO_SAMPLE_RATE", "TwilioMediaSerializer"]

#: Twilio Media Streams audio: audio/x-mulaw, 8000 Hz, mono.
TWILIO_SAMPLE_RATE = 8000
#: End reason recorded when Twilio reports the caller hung up (``stop`` or socket close).
CALLER_HUNG_UP = "caller_hung_up"
#: Largest ``media`` payload taken, in mu-law bytes: 1 s of audio. Twilio sends 20 ms
#: (160 bytes) per message; anything far larger is not Twilio and would stall the call.
MAX_MEDIA_BYTES = TWILIO_SAMPLE_RATE


class TwilioMediaSerializer(TwilioFrameSerializer):
    """Twilio Media Streams <-> Pipecat frames, with our codec on the audio path.

    Args:
        stream_sid: The stream SID (``MZ...``) from Twilio's ``start`` message.
        call_sid: The call SID (``CA...``).
        **kwargs: Passed to :class:`TwilioFrameSerializer` (account SID, auth token,
            REST base URL, params). Auto hang-up is off unless ``params`` turns it on:
            the bot completes calls itself, and only when the agent ends them.
    """

    def __init__(self, stream_sid: str, call_sid: str | None = None, **kwargs):
        kwargs.setdefault("params", TwilioFrameSerializer.InputParams(auto_hang_up=False))
        super().__init__(stream_sid, call_sid, **kwargs)
        self._fallback_resamplers: dict[int, StreamResampler] = {}

    @property
    def stream_sid(self) -> str:
        """The Twilio stream SID this serializer speaks for."""
        return self._stream_sid

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """Turn a frame into a Twilio message.

        Args:
            frame: Outbound frame. Audio should already be 16-bit PCM at 8000 Hz
                (the pipeline's resampler sees to it); other rates are converted with
                a low-delay resampler and logged once.

        Returns:
            A JSON ``media`` message for audio; the parent's answer (``clear`` for an
            interruption, transport messages) otherwise; None for frames with no
            Twilio equivalent.
        """
        if not isinstance(frame, AudioRawFrame):
            if isinstance(frame, InterruptionFrame) and (probe := CALL_PROBE.get()):
                probe.cleared()
            return await super().serialize(frame)
        pcm = frame.audio
        if frame.sample_rate != TWILIO_SAMPLE_RATE:
            resampler = self._fallback_resamplers.get(frame.sample_rate)
            if resampler is None:
                logger.warning(
                    f"{self}: output audio at {frame.sample_rate} Hz reached the serializer; "
                    "resampling here (put AudioResamplerProcessor before the output transport)"
                )
                resampler = StreamResampler(frame.sample_rate, TWILIO_SAMPLE_RATE)
                self._fallback_resamplers[frame.sample_rate] = resampler
            pcm = resampler.process(pcm)
        if len(pcm) < 2:
            return None
        payload = base64.b64encode(ulaw_encode(pcm[: len(pcm) & ~1])).decode("ascii")
        if probe := CALL_PROBE.get():
            probe.media_sent()
        return json.dumps(
            {"event": "media", "streamSid": self._stream_sid, "media": {"payload": payload}}
        )

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """Turn a Twilio message into a frame.

        Args:
            data: One WebSocket message from Twilio (JSON text).

        Returns:
            :class:`InputAudioRawFrame` (8000 Hz PCM) for ``media``; the parent's DTMF
            frame for ``dtmf``; ``CancelWorkerFrame`` for ``stop``;
            :class:`InputTransportMessageFrame` for ``mark``; None for anything else, including malformed messages.
        """
        try:
            message = json.loads(data)
        except (ValueError, TypeError):
            logger.warning(f"{self}: ignoring a message that is not JSON ({len(data)} bytes)")
            return None
        if not isinstance(message, dict):
            logger.warning(f"{self}: ignoring a JSON message that is not an object")
            return None
        event = message.get("event")
        if event == "media":
            return self._media_frame(message)
        if event == "stop":
            if probe := CALL_PROBE.get():
                probe.hung_up()
            return CancelWorkerFrame(reason=CALLER_HUNG_UP)
        if event == "mark":
            return InputTransportMessageFrame(message=message)
        if event == "dtmf":
            try:
                return await super().deserialize(data)
            except Exception as e:  # the parent must not end the call on odd input
                logger.warning(f"{self}: ignoring a bad dtmf message: {e}")
                return None
        if event not in ("connected", "start"):
            logger.debug(f"{self}: ignoring Twilio event {event!r}")
        return None

    def _media_frame(self, message: dict) -> InputAudioRawFrame | None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str) or not payload:
            logger.warning(f"{self}: ignoring a media message without a payload")
            return None
        if len(payload) > (MAX_MEDIA_BYTES + 2) // 3 * 4:  # too long to decode at all
            logger.warning(f"{self}: ignoring a media message of {len(payload)} base64 characters")
            return None
        try:
            ulaw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            logger.warning(f"{self}: ignoring a media message with bad base64")
            return None
        if len(ulaw) > MAX_MEDIA_BYTES:
            logger.warning(f"{self}: ignoring a media message of {len(ulaw)} bytes (over 1 s)")
            return None
        if probe := CALL_PROBE.get():
            probe.caller_audio(len(ulaw) / TWILIO_SAMPLE_RATE)
        return InputAudioRawFrame(
            audio=ulaw_decode(ulaw), sample_rate=TWILIO_SAMPLE_RATE, num_channels=1
        )
