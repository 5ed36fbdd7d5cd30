"""The call's WebSocket transport: Pipecat's FastAPI transport, with no stale audio after a ``clear``.

A barge-in makes the output transport drop the audio it has queued and send Twilio a
``clear`` (our serializer turns the ``InterruptionFrame`` into one). But Pipecat's audio
task takes a chunk from its queue and writes it a few event-loop turns apart: both steps
go through ``asyncio.wait_for``, which on Python 3.11 runs its awaitable in a new task.
An interruption handled in between empties the queue, not the chunk in hand, and sends
the ``clear`` before that chunk. Twilio then plays a piece of the reply the caller has
just cut off: ``clear`` empties what Twilio holds, not what comes next. Source:
https://www.twilio.com/docs/voice/media-streams/websocket-messages ("clear"). Seen in the
barge-in e2e test about one run in five; ``tests/test_twilio_transport.py`` lands the
interruption at each loop turn in turn. (The server's ``wait_for.py`` runs those
awaitables in the audio task itself, which narrows the window to the awaits left
between the two steps; the guard below does not depend on how wide it is.)

:class:`TwilioWebsocketTransport` is :class:`FastAPIWebsocketTransport` with an output
that refuses, once an interruption has been handled, every interruptible audio chunk
created before it. Audio of the next reply is created after the interruption and goes
out as usual.

It also lets the agent's audio run a little ahead of Twilio's playout. Pipecat's output
paces audio at exactly real time, as if it were the loudspeaker; then any hiccup on the
way (a busy event loop, a busy machine, the network) is a gap the caller hears. Twilio
keeps a playout buffer of its own (it discards what it holds on a ``clear``, and warns
only past 10 minutes of it: https://www.twilio.com/docs/api/errors/31931), so the
output sends up to :data:`PLAYOUT_LEAD_MS` ahead of where playout is, and paces at real
time beyond that. A barge-in loses nothing by it: the ``clear`` empties Twilio's buffer
at once, and what the caller heard comes from mark echoes, not from what was sent.

And a reply's first audio does not wait behind its text. Pipecat's output keeps frames
other than audio (the reply's start, its transcript, marks) in order with the audio by
putting them in the same queue, which its audio task empties one item per two or more
event-loop turns. A reply's start and first transcript come just before its first
audio, so that audio waited four items: 4-15 ms at 10 calls, more on a busier loop.
Here a frame with nothing queued or being sent ahead of it is handled at once, as it
would have been next anyway: the order is Pipecat's, and the first audio waits only
for its own turn in the queue.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import WebSocket
from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    MixerControlFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    SpriteFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.utils.utils import obj_id

from processors.twilio_serializer import TWILIO_SAMPLE_RATE

__all__ = ["PLAYOUT_LEAD_MS", "TwilioOutputTransport", "TwilioWebsocketTransport", "twilio_transport"]

#: How far the agent's audio may be sent ahead of Twilio's playout, in ms.
PLAYOUT_LEAD_MS = 200

#: Frames Pipecat's media sender does more with than keep in order (chunking audio,
#: flushing it, interruptions, mixing): these always take Pipecat's path.
_SENDER_FRAMES = (
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    SpriteFrame,
    MixerControlFrame,
    TTSStoppedFrame,
)


def _sender_idle(sender) -> bool:
    """Whether a Pipecat media sender has nothing queued and nothing taken from its queue in hand.

    Its audio task calls ``task_done()`` once it has written and pushed an item, so the
    queue's count of unfinished items covers both. Unknown internals read as busy.
    """
    queue = getattr(sender, "_audio_queue", None)
    return getattr(queue, "_unfinished_tasks", 1) == 0


class TwilioOutputTransport(FastAPIWebsocketOutputTransport):
    """Pipecat's WebSocket output, which never writes audio a barge-in has cut off.

    Frame ids come from one process-wide increasing counter (``pipecat.utils.utils.obj_id``),
    so "created before the interruption" is ``frame.id`` below an id drawn when the
    interruption reached this processor.
    """

    def __init__(self, *args, **kwargs):
        """Same arguments as ``FastAPIWebsocketOutputTransport``."""
        super().__init__(*args, **kwargs)
        self._cut_before_id = -1

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Note the interruption, then let Pipecat handle the frame (and send the ``clear``)."""
        if isinstance(frame, InterruptionFrame):
            self._cut_before_id = obj_id()
        await super().process_frame(frame, direction)

    async def _handle_frame(self, frame: Frame):
        """Hand a frame to its media sender, or send it now if it would be the sender's next.

        A frame with no audio (a transcript, a mark, a reply's start) goes to the
        sender's queue only to keep its place behind audio. When nothing is queued or
        being sent, it is handled here at once, as the sender's audio task would: its
        message written (a mark), then pushed on.

        Args:
            frame: A frame for the output (not a system or upstream frame: Pipecat's
                ``process_frame`` handles those).
        """
        if isinstance(frame, _SENDER_FRAMES) or frame.pts:  # every 20 ms audio chunk: Pipecat's path
            await super()._handle_frame(frame)
            return
        sender = self._media_senders.get(frame.transport_destination)
        handle = getattr(sender, "_handle_frame", None)
        if handle is None or not _sender_idle(sender):
            await super()._handle_frame(frame)
            return
        await handle(frame)
        await self.push_frame(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Write one chunk of audio, unless an interruption handled since it was made cut it.

        Args:
            frame: A chunk from the output's audio queue (20 ms at 8 kHz for our calls).

        Returns:
            Whether the chunk was written (False for a dropped one, so it goes no further).
        """
        if frame.interruptible and frame.id < self._cut_before_id:
            logger.debug(f"{self}: dropped a chunk of interrupted audio that was on its way out")
            return False
        return await super().write_audio_frame(frame)

    async def _write_audio_sleep(self):
        """Pace the audio: up to :data:`PLAYOUT_LEAD_MS` ahead of Twilio's playout, then real time.

        Pipecat's clock ``_next_send_time`` becomes the time at which Twilio will have
        played everything sent so far (0 after an interruption, whose ``clear`` emptied
        Twilio's buffer; a clock in the past means Twilio's buffer ran dry).
        """
        now = time.monotonic()
        self._next_send_time = max(self._next_send_time, now) + self._send_interval
        ahead_s = self._next_send_time - now - PLAYOUT_LEAD_MS / 1000
        if ahead_s > 0:
            await asyncio.sleep(ahead_s)


class TwilioWebsocketTransport(FastAPIWebsocketTransport):
    """``FastAPIWebsocketTransport`` whose output is a :class:`TwilioOutputTransport`."""

    def __init__(
        self,
        websocket: WebSocket,
        params: FastAPIWebsocketParams,
        input_name: str | None = None,
        output_name: str | None = None,
    ):
        """Build the transport for one Twilio media stream.

        Args:
            websocket: The stream's WebSocket (FastAPI).
            params: Transport parameters (audio rates, the Twilio serializer, ...).
            input_name: Name of the input processor.
            output_name: Name of the output processor.

        Raises:
            ValueError: As ``FastAPIWebsocketTransport`` (an origin not allowed).
        """
        super().__init__(websocket, params, input_name=input_name, output_name=output_name)
        # Pipecat builds its output in __init__ and has no hook to choose the class; the
        # one built there is replaced before anything has started or referenced it.
        # Direct mode: a frame reaches the media sender's queue in the pusher's task, not
        # a loop turn later (egress p95 at 20 calls: about 30 ms before, 3-5 ms with the
        # playout tracker direct too); the sender's audio task paces the audio as before.
        self._output = TwilioOutputTransport(
            self, self._client, self._params, name=self._output_name, enable_direct_mode=True
        )


def twilio_transport(websocket: WebSocket, serializer: FrameSerializer) -> TwilioWebsocketTransport:
    """The transport of one call's media stream, as the server and ``make graph`` build it.

    Audio is 8000 Hz mono both ways; the output sends 20 ms chunks (one Twilio media
    frame of 160 bytes each) and no trailing silence (the end-of-call mark already
    waits for playout).

    Args:
        websocket: The stream's WebSocket.
        serializer: The Twilio Media Streams serializer of the call.

    Returns:
        The transport; put its ``input()`` first and ``output()`` near the end of the graph.
    """
    return TwilioWebsocketTransport(
        websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_in_sample_rate=TWILIO_SAMPLE_RATE,
            audio_out_enabled=True,
            audio_out_sample_rate=TWILIO_SAMPLE_RATE,
            audio_out_10ms_chunks=2,
            audio_out_end_silence_secs=0,
            serializer=serializer,
        ),
    )
