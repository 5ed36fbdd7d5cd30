"""A local stand-in for the OpenAI Realtime API (GA events) that runs offline.

It speaks enough of the Realtime WebSocket protocol for Pipecat's unmodified
``OpenAIRealtimeLLMService`` to hold a whole phone call against it::

    OpenAIRealtimeLLMService(api_key="offline", base_url=server.url)

Event names and shapes follow the OpenAI Realtime API reference
(platform.openai.com/docs/api-reference/realtime-client-events and
realtime-server-events); where the two disagree, the models in
``pipecat/services/openai/realtime/events.py`` win, since every event sent here
must validate against them.

Instead of a model, the server plays a small scripted hotel front-desk agent:
the first reply of a call is a greeting, later replies step through a script.
Every line is spoken with espeak-ng (:mod:`offline.tts`). Caller audio is not
recognised: the transcript of a caller turn only says how long they spoke,
``"[caller spoke 2.4 s]"``, measured by the energy detector below.

Audio is PCM16 mono at 24000 Hz (the Realtime API's ``audio/pcm`` format, the one
Pipecat uses) unless the session's input format is ``audio/pcmu``: then the caller's
audio arrives as G.711 mu-law at 8000 Hz, which the server decodes with CPython's
``audioop`` (an implementation independent of ours) and repeats each sample three
times to 24000 Hz for the energy detector below. Replies are always PCM at 24000 Hz.

Energy detector: audio is cut into 20 ms frames and each frame's RMS level is
taken in dBFS. A frame is speech when its level is 10 dB above the noise floor,
the 20th percentile of the levels of the last 5 s of frames the detector has
seen (including the chunk being judged). Frames below -80 dBFS (digital
silence, e.g. a muted line) stay out of that history, as they say nothing about
the line's noise. The threshold is clamped to [-45, -30] dBFS: a frame below
-45 dBFS is never speech, one above -30 dBFS always is. The speech seconds of a
committed turn are computed by a fresh detector over the committed audio. With
server VAD, a turn starts after 100 ms of consecutive speech frames and ends
after ``silence_duration_ms`` of consecutive non-speech frames.

Replies: ``response.created`` comes at once; the first audio follows after
``response_delay_ms`` (a stand-in for model latency), then the rest of the audio
at ``pace`` times real time, so that a ``response.cancel`` or a barge-in can
stop a reply part way, as with the real service.

Run it standalone with ``python -m offline.realtime_server --port 8765``
(environment: ``OFFLINE_AGENT_DELAY_MS``, default 0, ``OFFLINE_AGENT_PACE``,
default 3.0, and ``OFFLINE_AGENT_CANCEL_LAG_MS``, default 0).
"""

import argparse
import asyncio
import warnings
import base64
import binascii
import json
import os
import re
import signal
import uuid
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import uvloop
from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from offline.booking_script import BOOKING_TOOLS, BookingScript, SayLine, ToolCall
from offline.common import ReceivedLog, wait_unless_cancelled
from offline.tts import synthesize_async

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop leaves CPython in 3.13
    import audioop

SAMPLE_RATE = 24000
"""Audio sample rate in Hz, both directions."""
BYTES_PER_SECOND = SAMPLE_RATE * 2
"""PCM16 mono bytes per second of audio."""
PATH = "/v1/realtime"
PCM_FORMAT = {"type": "audio/pcm", "rate": SAMPLE_RATE}
PCMU = "audio/pcmu"

AUDIO_DELTA_MS = 60
"""Length of the audio in one ``response.output_audio.delta``, in ms."""
"""How many client events :attr:`OfflineRealtimeServer.received` keeps."""
MAX_INPUT_BUFFER_BYTES = 15 * 1024 * 1024
"""Input audio buffer cap in bytes; older audio is dropped beyond it."""
MAX_ITEMS = 1_000
"""Conversation items kept per call for ``conversation.item.retrieve``."""

FRAME_MS = 20
FRAME_BYTES = BYTES_PER_SECOND * FRAME_MS // 1000
NOISE_HISTORY_FRAMES = 5_000 // FRAME_MS
NOISE_PERCENTILE = 20
SPEECH_ABOVE_NOISE_DB = 10.0
THRESHOLD_RANGE_DBFS = (-45.0, -30.0)
DIGITAL_SILENCE_DBFS = -80.0
SPEECH_START_MS = 100
DEFAULT_TURN_DETECTION = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}

GREETING = (
    "Hello, and thank you for calling the Grand Harbor Hotel front desk. "
    "This is your virtual assistant. How can I help you today?"
)
SCRIPT = (
    "I would be glad to help you with a reservation. "
    "Could you tell me your arrival date and how many nights you would like to stay?",
    "Thank you. How many guests will be staying with us, "
    "and would you prefer one king bed or two queen beds?",
    "Perfect, I have noted all of those details, and our reservations team "
    "will send you a confirmation email shortly.",
    "Is there anything else I can help you with today, "
    "such as parking, breakfast, or an airport transfer?",
    "Certainly, I have added that request to your booking, "
    "and the front desk will have everything ready when you arrive.",
)
"""Replies after the greeting, in order; after the last, the final two alternate."""
ALL_LINES = (GREETING, *SCRIPT)


def scripted_reply(index: int) -> str:
    """Return the agent's reply number ``index`` (0-based) after the greeting.

    Args:
        index: How many replies the agent has already given after the caller's
            first turn.

    Returns:
        The line to speak: the script in order, then its last two lines in turn.
    """
    if index < len(SCRIPT):
        return SCRIPT[index]
    return SCRIPT[len(SCRIPT) - 2 + (index - len(SCRIPT)) % 2]


def _replayed_history(item: dict) -> list[dict] | None:
    """The conversation a client replays as one text item on a new session, if it is one.

    Pipecat's OpenAI Realtime adapter sends the history of a reconnected call as a
    single user ``input_text`` holding the messages as a JSON array.
    """
    parts = item.get("content") or []
    text = parts[0].get("text", "") if parts and isinstance(parts[0], dict) else ""
    if "previously saved conversation" not in text:
        return None
    try:
        history = json.loads(text[text.index("[") : text.rindex("]") + 1])
    except ValueError:
        return None
    return [m for m in history if isinstance(m, dict)]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class EnergyDetector:
    """Frame-by-frame speech/non-speech decisions from the RMS level of PCM16 audio.

    See the module docstring for the rule. Audio can arrive in chunks of any
    length; leftover bytes short of a 20 ms frame wait for the next chunk.
    """

    def __init__(self) -> None:
        """Create a detector with an empty level history."""
        self._levels: deque[float] = deque(maxlen=NOISE_HISTORY_FRAMES)
        self._pending = b""

    def feed(self, pcm: bytes) -> list[bool]:
        """Judge every complete 20 ms frame in the audio received so far.

        Args:
            pcm: PCM16 mono audio at 24000 Hz, any number of bytes.

        Returns:
            One bool per new complete frame, True where the frame is speech.
        """
        data = self._pending + pcm
        usable = len(data) // FRAME_BYTES * FRAME_BYTES
        self._pending = data[usable:]
        if not usable:
            return []
        frames = np.frombuffer(data[:usable], dtype="<i2").astype(np.float64)
        frames = frames.reshape(-1, FRAME_BYTES // 2) / 32768.0
        levels = 20.0 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)
        self._levels.extend(level for level in levels.tolist() if level > DIGITAL_SILENCE_DBFS)
        threshold = THRESHOLD_RANGE_DBFS[0]
        if self._levels:
            floor = float(np.percentile(np.fromiter(self._levels, float), NOISE_PERCENTILE))
            threshold = float(np.clip(floor + SPEECH_ABOVE_NOISE_DB, *THRESHOLD_RANGE_DBFS))
        return (levels > threshold).tolist()


def speech_seconds(pcm: bytes) -> float:
    """Measure how much of a recording is speech.

    Args:
        pcm: PCM16 mono audio at 24000 Hz.

    Returns:
        Seconds of 20 ms frames the :class:`EnergyDetector` judges to be speech.
    """
    return sum(EnergyDetector().feed(pcm)) * FRAME_MS / 1000


class ServerVad:
    """Caller turn boundaries from speech decisions, like the API's ``server_vad``."""

    def __init__(self, silence_duration_ms: int) -> None:
        """Create a turn tracker.

        Args:
            silence_duration_ms: Non-speech needed to end a turn, in ms.
        """
        self.silence_duration_ms = silence_duration_ms
        self.in_speech = False
        self._detector = EnergyDetector()
        self._position_ms = 0
        self._run_ms = 0

    def feed(self, pcm: bytes) -> list[tuple[str, int]]:
        """Track turns through a chunk of caller audio.

        Args:
            pcm: PCM16 mono audio at 24000 Hz.

        Returns:
            ``("started", audio_start_ms)`` and ``("stopped", audio_end_ms)``
            boundaries found in the chunk, in order; times are ms since the
            first audio this tracker saw.
        """
        boundaries = []
        for is_speech in self._detector.feed(pcm):
            self._position_ms += FRAME_MS
            self._run_ms = self._run_ms + FRAME_MS if is_speech != self.in_speech else 0
            if not self.in_speech and self._run_ms >= SPEECH_START_MS:
                self.in_speech, self._run_ms = True, 0
                boundaries.append(("started", self._position_ms - SPEECH_START_MS))
            elif self.in_speech and self._run_ms >= self.silence_duration_ms:
                self.in_speech, self._run_ms = False, 0
                boundaries.append(("stopped", self._position_ms - self.silence_duration_ms))
        return boundaries


class _Reply:
    """One scripted response being spoken."""

    def __init__(self, text: str, pcm: bytes, tool: ToolCall | None = None) -> None:
        self.tool = tool
        self.id = _new_id("resp")
        self.item_id = _new_id("item")
        self.text = text
        self.pcm = pcm
        self.cancel_reason: str | None = None
        self.cancelled = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def pause(self, seconds: float) -> bool:
        """Wait, yielding to the event loop; return True if cancelled meanwhile."""
        return await wait_unless_cancelled(self.cancelled, seconds)


class _Call:
    """Protocol state of one WebSocket connection (one phone call)."""

    def __init__(self, server: "OfflineRealtimeServer", ws: ServerConnection, model: str) -> None:
        self.server = server
        self.ws = ws
        self.conversation_id = _new_id("conv")
        self.session: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": _new_id("sess"),
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "audio": {
                "input": {
                    "format": PCM_FORMAT,
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": dict(DEFAULT_TURN_DETECTION),
                },
                "output": {"format": PCM_FORMAT, "voice": "alloy", "speed": 1.0},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        }
        self.input_audio = bytearray()
        self.vad: ServerVad | None = None
        self.pending_user_item_id = _new_id("item")
        self.items: OrderedDict[str, dict] = OrderedDict()
        self.last_item_id: str | None = None
        self.user_turns = 0
        self.replies_after_user = 0
        self.reply: _Reply | None = None
        self.booking: BookingScript | None = None  # the booking scenario, when tools allow
        self.responses = 0  # responses started: text items before the first are context
        self.replayed_replies = 0  # agent replies in a conversation replayed on reconnect
        self.stalled = False  # fault injection: alive but silent (see stall_connections)
        self._configure_turn_detection()

    # -- plumbing ------------------------------------------------------------

    async def send(self, event_type: str, **fields: Any) -> None:
        """Send one server event (never, once stalled)."""
        if self.stalled:
            await asyncio.Event().wait()  # hangs until the connection's tasks are cancelled
        await self.ws.send(json.dumps({"event_id": _new_id("event"), "type": event_type, **fields}))

    async def run(self) -> None:
        """Serve the connection until the client leaves."""
        try:
            await self.send("session.created", session=self.session)
            async for message in self.ws:
                await self._dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            await self._stop_reply(reason=None)

    async def _dispatch(self, message: str | bytes) -> None:
        if self.stalled:
            return
        try:
            event = json.loads(message)
            event_type = event["type"]
            handler = getattr(self, "_on_" + event_type.replace(".", "_"), None)
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.warning(f"Ignoring malformed client message: {str(message)[:200]!r}")
            return
        self.server._record(event)
        if handler is None:
            logger.debug(f"Ignoring unsupported client event {event_type}")
            return
        try:
            await handler(event)
        except ConnectionClosed:
            raise
        except Exception:
            logger.exception(f"Ignoring client event {event_type} that could not be handled")

    def _turn_detection(self) -> dict | None:
        turn_detection = self.session["audio"]["input"].get("turn_detection")
        return turn_detection if isinstance(turn_detection, dict) else None

    def _configure_turn_detection(self) -> None:
        turn_detection = self._turn_detection()
        if turn_detection is None:
            self.vad = None
            return
        silence_ms = int(turn_detection.get("silence_duration_ms") or 500)
        if self.vad is None or self.vad.silence_duration_ms != silence_ms:
            self.vad = ServerVad(silence_ms)

    def _add_item(self, item: dict) -> str | None:
        previous, self.last_item_id = self.last_item_id, item["id"]
        self.items[item["id"]] = item
        while len(self.items) > MAX_ITEMS:
            self.items.popitem(last=False)
        return previous

    # -- session and conversation events ---------------------------------------

    async def _on_session_update(self, event: dict) -> None:
        update = event.get("session") or {}
        for key, value in update.items():
            if key == "audio" and isinstance(value, dict):
                for direction in ("input", "output"):
                    if isinstance(value.get(direction), dict):
                        self.session["audio"][direction].update(value[direction])
            elif key not in ("id", "object", "model"):
                self.session[key] = value
        self._configure_turn_detection()
        names = {t.get("name") for t in self.session.get("tools") or [] if isinstance(t, dict)}
        if self.booking is None and BOOKING_TOOLS <= names:
            self.booking = BookingScript(tools=names)
        for direction, supported in (("input", ("audio/pcm", PCMU)), ("output", ("audio/pcm",))):
            audio_format = self.session["audio"][direction].get("format")
            if audio_format and audio_format.get("type") not in supported:
                logger.warning(f"{direction} audio: only {', '.join(supported)}; ignoring {audio_format}")
        await self.send("session.updated", session=self.session)

    async def _on_conversation_item_create(self, event: dict) -> None:
        item = dict(event["item"])
        item.setdefault("id", _new_id("item"))
        item.update(object="realtime.item", status="completed")
        previous = self._add_item(item)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=item)
        role = item.get("role") if item.get("type") == "message" else None
        history = _replayed_history(item) if role == "user" and not self.responses else None
        if history is not None:
            self._resume(history)
        elif role == "user" and self.responses:
            self.user_turns += 1  # a typed turn (e.g. the keys the caller pressed)
        elif role == "assistant" and not self.responses:
            self.replayed_replies += 1  # a client replaying the conversation on a new session
        elif role == "user" and self.replayed_replies:
            self.user_turns += 1
            if self.booking is not None:
                self.booking.skip_to(self.user_turns)
        if item.get("type") == "function_call_output" and self.booking is not None:
            call = next(
                (i for i in self.items.values()
                 if i.get("type") == "function_call" and i.get("call_id") == item.get("call_id")),
                None,
            )
            if call is not None:
                self.booking.tool_result(call.get("name", ""), item.get("output"))

    def _resume(self, history: list[dict]) -> None:
        """Carry on a conversation a client replayed on a new session."""
        replies = [m for m in history if m.get("role") == "assistant" and m.get("content")]
        self.replayed_replies = len(replies)
        first_reply = next((i for i, m in enumerate(history) if m in replies), len(history))
        self.user_turns = sum(1 for m in history[first_reply:] if m.get("role") == "user")
        if self.booking is not None:
            self.booking.skip_to(self.user_turns)
        logger.info(f"Resuming a replayed conversation: {self.user_turns} caller turns so far")

    async def _on_conversation_item_truncate(self, event: dict) -> None:
        await self.send(
            "conversation.item.truncated",
            item_id=event["item_id"],
            content_index=event.get("content_index", 0),
            audio_end_ms=event["audio_end_ms"],
        )

    async def _on_conversation_item_delete(self, event: dict) -> None:
        self.items.pop(event["item_id"], None)
        await self.send("conversation.item.deleted", item_id=event["item_id"])

    async def _on_conversation_item_retrieve(self, event: dict) -> None:
        item = self.items.get(event["item_id"])
        if item is not None:
            await self.send("conversation.item.retrieved", item=item)
            return
        # Pipecat fails just the pending retrieval on this code (see llm.py).
        await self.send(
            "error",
            error={
                "type": "invalid_request_error",
                "code": "item_retrieve_invalid_item_id",
                "message": f"Item {event['item_id']} does not exist.",
                "event_id": event.get("event_id"),
            },
        )

    # -- caller audio ------------------------------------------------------------

    async def _on_input_audio_buffer_append(self, event: dict) -> None:
        pcm = base64.b64decode(event["audio"], validate=True)
        if (self.session["audio"]["input"].get("format") or {}).get("type") == PCMU:
            linear = np.frombuffer(audioop.ulaw2lin(pcm, 2), dtype="<i2")
            pcm = np.repeat(linear, SAMPLE_RATE // 8000).tobytes()  # 8 kHz -> 24 kHz, for the detector
        self.input_audio += pcm
        if len(self.input_audio) > MAX_INPUT_BUFFER_BYTES:
            del self.input_audio[: len(self.input_audio) - MAX_INPUT_BUFFER_BYTES]
        if self.vad is None:
            return
        for boundary, at_ms in self.vad.feed(pcm):
            if boundary == "started":
                await self._on_speech_started(at_ms)
            else:
                await self._on_speech_stopped(at_ms)
        if not self.vad.in_speech:
            # Between turns keep only the recent audio a turn's onset needs.
            padding_ms = int(self._turn_detection().get("prefix_padding_ms") or 300)
            keep = (padding_ms + SPEECH_START_MS + 500) * BYTES_PER_SECOND // 1000
            del self.input_audio[:-keep]

    async def _on_speech_started(self, audio_start_ms: int) -> None:
        await self.send(
            "input_audio_buffer.speech_started",
            audio_start_ms=audio_start_ms,
            item_id=self.pending_user_item_id,
        )
        if self.reply and self._turn_detection().get("interrupt_response", True) is not False:
            await self._stop_reply(reason="turn_detected")

    async def _on_speech_stopped(self, audio_end_ms: int) -> None:
        await self.send(
            "input_audio_buffer.speech_stopped",
            audio_end_ms=audio_end_ms,
            item_id=self.pending_user_item_id,
        )
        await self._commit()
        if self._turn_detection().get("create_response", True) is not False:
            if self.reply:
                logger.debug("Caller turn ended while a reply is still playing; not starting another")
            else:
                self._start_reply()

    async def _on_input_audio_buffer_commit(self, event: dict) -> None:
        await self._commit()

    async def _on_input_audio_buffer_clear(self, event: dict) -> None:
        self.input_audio.clear()
        await self.send("input_audio_buffer.cleared")

    async def _commit(self) -> None:
        """Turn the input buffer into a user item with a duration-only transcript."""
        seconds = speech_seconds(bytes(self.input_audio))
        self.input_audio.clear()
        item_id, self.pending_user_item_id = self.pending_user_item_id, _new_id("item")
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self._add_item(item)
        self.user_turns += 1
        await self.send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=item)
        transcript = f"[caller spoke {seconds:.1f} s]"
        item["content"][0]["transcript"] = transcript
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=transcript,
        )

    # -- responses -----------------------------------------------------------------

    async def _on_response_create(self, event: dict) -> None:
        if self.reply:
            await self.send(
                "error",
                error={
                    "type": "invalid_request_error",
                    "code": "conversation_already_has_active_response",
                    "message": f"Conversation already has an active response in progress: {self.reply.id}.",
                    "event_id": event.get("event_id"),
                },
            )
            return
        self._start_reply()

    async def _on_response_cancel(self, event: dict) -> None:
        if self.server.cancel_lag_ms:
            # What the real service sent before the cancel reached it is still on its
            # way: the reply goes on this long, and the events after it wait behind it.
            await asyncio.sleep(self.server.cancel_lag_ms / 1000)
        if self.reply:
            await self._stop_reply(reason="client_cancelled")
            return
        await self.send(
            "error",
            error={
                "type": "invalid_request_error",
                "code": "response_cancel_not_active",
                "message": "Cancellation failed: no active response found",
                "event_id": event.get("event_id"),
            },
        )

    def _start_reply(self) -> None:
        self.responses += 1
        action = self.booking.next_action(self.user_turns) if self.booking else None
        if isinstance(action, ToolCall):
            reply = _Reply("", b"", tool=action)
            reply.task = asyncio.create_task(self._speak(reply), name=f"offline-tool-{reply.id}")
            self.reply = reply
            return
        if isinstance(action, SayLine):
            text = action.text
        elif self.user_turns == 0 and not self.replayed_replies:
            text = GREETING
        else:
            text = scripted_reply(self.replies_after_user)
            self.replies_after_user += 1
        reply = _Reply(text, self.server._lines.get(text, b""))
        reply.task = asyncio.create_task(self._speak(reply), name=f"offline-reply-{reply.id}")
        self.reply = reply

    async def _stop_reply(self, reason: str | None) -> None:
        """Stop the active reply, if any, and wait until it has stopped.

        Args:
            reason: ``status_details.reason`` for its ``response.done``
                ("client_cancelled", "turn_detected"); None when the client is
                gone, which cancels the reply's task without sending anything.
        """
        reply = self.reply
        if reply is None or reply.task is None:
            return
        if reason is None:
            reply.task.cancel()
        else:
            reply.cancel_reason = reason
            reply.cancelled.set()
        await asyncio.wait([reply.task])

    def _response(self, reply: _Reply, status: str, output: list[dict], details: Any = None) -> dict:
        voice = self.session["audio"]["output"].get("voice")
        return {
            "object": "realtime.response",
            "id": reply.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": PCM_FORMAT, "voice": voice}},
            "usage": None,
        }

    async def _speak(self, reply: _Reply) -> None:
        """Send one scripted reply the way the Realtime API streams a model response."""
        try:
            if reply.tool is not None:
                await self._stream_function_call(reply)
            else:
                await self._stream_reply(reply)
        except ConnectionClosed:
            logger.debug(f"Client left during {reply.id}")
        except Exception:
            logger.exception(f"Reply {reply.id} failed")
        finally:
            if self.reply is reply:
                self.reply = None

    async def _stream_reply(self, reply: _Reply) -> None:
        ids = {"response_id": reply.id, "item_id": reply.item_id, "output_index": 0, "content_index": 0}
        item = {
            "id": reply.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await self.send("response.created", response=self._response(reply, "in_progress", []))
        if await reply.pause(self.server.response_delay_ms / 1000):
            await self._end_cancelled(reply, item, spoken="")
            return
        if not reply.pcm:
            reply.pcm = await synthesize_async(reply.text, SAMPLE_RATE, self.server.voice)
        previous = self._add_item(item)
        await self.send("response.output_item.added", response_id=reply.id, output_index=0, item=item)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("response.content_part.added", **ids, part={"type": "output_audio", "transcript": ""})

        spoken = await self._stream_audio(reply, ids)
        if reply.cancelled.is_set():
            await self._end_cancelled(reply, item, spoken)
            return

        await self.send("response.output_audio.done", **ids)
        await self.send("response.output_audio_transcript.done", **ids, transcript=reply.text)
        part = {"type": "output_audio", "transcript": reply.text}
        await self.send("response.content_part.done", **ids, part=part)
        item.update(status="completed", content=[part])
        await self.send("response.output_item.done", response_id=reply.id, output_index=0, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=item)
        await self.send("response.done", response=self._response(reply, "completed", [item]))

    async def _stream_function_call(self, reply: _Reply) -> None:
        """Send a response whose output is one function call, as the Realtime API does.

        Events: response.created, response.output_item.added and conversation.item.added
        (a ``function_call`` item), response.function_call_arguments.delta/.done,
        response.output_item.done, conversation.item.done, response.done.
        """
        tool = reply.tool
        assert tool is not None
        arguments = json.dumps(tool.arguments)
        item = {
            "id": reply.item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": _new_id("call"),
            "name": tool.name,
            "arguments": "",
        }
        await self.send("response.created", response=self._response(reply, "in_progress", []))
        if await reply.pause(self.server.response_delay_ms / 1000):
            await self._end_cancelled(reply, item, spoken="")
            return
        previous = self._add_item(item)
        ids = {"response_id": reply.id, "item_id": reply.item_id, "output_index": 0}
        await self.send("response.output_item.added", response_id=reply.id, output_index=0, item=item)
        await self.send("conversation.item.added", previous_item_id=previous, item=item)
        await self.send("response.function_call_arguments.delta", **ids, call_id=item["call_id"], delta=arguments)
        item.update(status="completed", arguments=arguments)
        await self.send(
            "response.function_call_arguments.done", **ids, call_id=item["call_id"], name=tool.name,
            arguments=arguments,
        )
        await self.send("response.output_item.done", response_id=reply.id, output_index=0, item=item)
        await self.send("conversation.item.done", previous_item_id=previous, item=item)
        await self.send("response.done", response=self._response(reply, "completed", [item]))

    async def _stream_audio(self, reply: _Reply, ids: dict) -> str:
        """Send the reply's audio and transcript deltas until done or cancelled.

        Audio goes out in ``AUDIO_DELTA_MS`` deltas: the first at once, the rest
        at ``pace`` times real time. Each sentence of the transcript goes out
        just before the audio delta where its share of the audio begins.

        Returns:
            The transcript sent so far.
        """
        loop = asyncio.get_running_loop()
        chunk_bytes = BYTES_PER_SECOND * AUDIO_DELTA_MS // 1000
        chunks = [reply.pcm[i : i + chunk_bytes] for i in range(0, len(reply.pcm), chunk_bytes)]
        sentences = re.findall(r"[^.?!]+[.?!]*\s*", reply.text) or [reply.text]
        sentence_chunks, offset = [], 0
        for sentence in sentences:
            sentence_chunks.append(offset * len(chunks) // max(1, len(reply.text)))
            offset += len(sentence)
        sent = 0
        started = loop.time()
        for index, chunk in enumerate(chunks):
            wait = 0.0
            if index and self.server.pace > 0:
                wait = started + index * AUDIO_DELTA_MS / 1000 / self.server.pace - loop.time()
            if await reply.pause(wait):
                break
            while sent < len(sentences) and sentence_chunks[sent] <= index:
                await self.send("response.output_audio_transcript.delta", **ids, delta=sentences[sent])
                sent += 1
            await self.send("response.output_audio.delta", **ids, delta=base64.b64encode(chunk).decode())
        return "".join(sentences[:sent]).strip()

    async def _end_cancelled(self, reply: _Reply, item: dict, spoken: str) -> None:
        item.update(status="incomplete", content=[{"type": "output_audio", "transcript": spoken}])
        output = [item] if item["id"] in self.items else []
        details = {"type": "cancelled", "reason": reply.cancel_reason}
        await self.send("response.done", response=self._response(reply, "cancelled", output, details))


class OfflineRealtimeServer:
    """A WebSocket server at ``ws://HOST:PORT/v1/realtime`` imitating the OpenAI Realtime API.

    Each connection is an independent call with its own session, input audio
    buffer, conversation and script position.

    Attributes:
        received: Every client event received on any connection, oldest first,
            at most the last 10,000. ``input_audio_buffer.append`` events are
            stored without their audio as ``{"type": ..., "bytes": n}``, n being
            the decoded PCM size in bytes.
        response_delay_ms: Pause in ms between ``response.created`` and the
            first audio, standing in for model latency.
        pace: How many times faster than real time reply audio is sent after
            its first delta; 0 sends it as fast as possible.
        voice: espeak-ng voice for the agent.
        cancel_lag_ms: How long a reply goes on after its ``response.cancel``, in ms.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        event_log: str | None = None,
        response_delay_ms: int = 0,
        pace: float = 3.0,
        voice: str = "en-us",
        cancel_lag_ms: int = 0,
    ) -> None:
        """Configure the server; nothing runs until :meth:`start`.

        Args:
            host: Interface to listen on.
            port: TCP port; 0 picks a free one (see :attr:`url`).
            event_log: If set, a file to which each received client event
                (stored as in :attr:`received`) is appended as one JSON line.
            response_delay_ms: Model latency stand-in before reply audio, in ms.
            pace: Reply audio send speed as a multiple of real time; 0 = unpaced.
            voice: espeak-ng voice for the agent.
            cancel_lag_ms: How long a reply goes on after its ``response.cancel`` is
                received, in ms: the audio a real service sent before the cancel
                reached it, still in flight (0: none).
        """
        self.host = host
        self.port = port
        self.event_log = event_log
        self.response_delay_ms = response_delay_ms
        self.pace = pace
        self.voice = voice
        self.cancel_lag_ms = cancel_lag_ms
        self.received: list[dict] = []
        self._log = ReceivedLog(self.received)
        self._lines: dict[str, bytes] = {}
        self._server: Server | None = None
        self._calls: set[_Call] = set()

    @property
    def url(self) -> str:
        """The URL to give Pipecat as ``base_url``: ``ws://HOST:PORT/v1/realtime``."""
        if self._server is None:
            raise RuntimeError("OfflineRealtimeServer is not started")
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        """Render every scripted line, then start listening.

        Raises:
            RuntimeError: If espeak-ng is missing.
        """
        renders = (synthesize_async(line, SAMPLE_RATE, self.voice) for line in ALL_LINES)
        rendered = await asyncio.gather(*renders)
        self._lines = dict(zip(ALL_LINES, rendered))
        self._log.open(self.event_log)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_path,
            compression=None,
            max_size=16 * 1024 * 1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(f"Offline Realtime server listening on {self.url}")

    async def stop(self) -> None:
        """Close every connection, stop listening and close the event log."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._log.close()

    def drop_connections(self) -> int:
        """Fault injection: cut every call's socket without a close handshake.

        The client sees the connection fail as a network drop would make it (close
        code 1006), not an orderly close.

        Returns:
            How many connections were dropped.
        """
        if self._server is None:
            return 0
        connections = list(self._server.connections)
        for connection in connections:
            connection.transport.abort()
        return len(connections)

    def stall_connections(self) -> int:
        """Fault injection: every call connected now goes silent, socket open.

        The connections stay up (pings are still answered by the WebSocket layer) but
        no event is sent and client events are ignored, as a hung model would behave.
        New connections are served normally.

        Returns:
            How many connections were stalled.
        """
        for call in self._calls:
            call.stalled = True
        return len(self._calls)

    async def __aenter__(self) -> "OfflineRealtimeServer":
        """Start the server for an ``async with`` block."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the server at the end of an ``async with`` block."""
        await self.stop()

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path.rstrip("/") == PATH:
            return None
        return Response(404, "Not Found", Headers(), b"Only /v1/realtime is served here.\n")

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        model = query.get("model", ["offline"])[0]
        logger.info(f"Call connected from {ws.remote_address} (model={model})")
        self._record({"type": "connection.opened", "model": model})  # a marker, not an event
        call = _Call(self, ws, model)
        self._calls.add(call)
        try:
            await call.run()
        finally:
            self._calls.discard(call)
        logger.info(f"Call from {ws.remote_address} ended")

    def _record(self, event: dict) -> None:
        if event.get("type") == "input_audio_buffer.append":
            try:
                size = len(base64.b64decode(event.get("audio") or "", validate=True))
            except (binascii.Error, TypeError, ValueError):
                size = -1
            event = {"type": "input_audio_buffer.append", "bytes": size}
        self._log.append(event)


async def _serve_forever(args: argparse.Namespace) -> None:
    server = OfflineRealtimeServer(
        args.host,
        args.port,
        event_log=args.event_log,
        response_delay_ms=int(os.environ.get("OFFLINE_AGENT_DELAY_MS", "0")),
        pace=float(os.environ.get("OFFLINE_AGENT_PACE", "3.0")),
        cancel_lag_ms=int(os.environ.get("OFFLINE_AGENT_CANCEL_LAG_MS", "0")),
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Serving {server.url} (Ctrl-C to stop)", flush=True)
    await stop.wait()
    await server.stop()


def main() -> None:
    """Command line entry point: serve until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--event-log", default=None, help="append received client events here as JSON lines")
    uvloop.run(_serve_forever(parser.parse_args()))


if __name__ == "__main__":
    main()
