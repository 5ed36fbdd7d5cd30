"""A local stand-in for the Gemini Live API (``BidiGenerateContent``) that runs offline.

It speaks the Live API's WebSocket protocol (ai.google.dev/api/live) closely
enough for Pipecat's unmodified ``GeminiLiveLLMService``, through the
google-genai SDK, to hold a whole phone call against it.

How a client reaches it
-----------------------
The SDK (google-genai 2.34, ``live.py`` / ``_api_client.py``) always connects
with TLS: it takes ``http_options.base_url``, replaces its scheme with
``wss`` and appends
``/ws/google.ai.generativelanguage.{api_version}.GenerativeService.BidiGenerateContent``
(``api_version`` is ``v1beta`` unless set), sending the API key in the
``x-goog-api-key`` header. So this server listens with TLS, on a self-signed
certificate for ``127.0.0.1``/``localhost`` that it makes when it starts
(:attr:`OfflineGeminiLiveServer.ca_file`), and the client must trust it in one
of two ways::

    # 1. per client: an SSL context in the SDK's http_options
    HttpOptions(base_url=server.url, async_client_args={"ssl": server.client_ssl_context()})
    # (server.http_options() builds exactly that)

    # 2. per process: SSL_CERT_FILE, read when the genai Client is created
    os.environ["SSL_CERT_FILE"] = server.ca_file
    HttpOptions(base_url=server.url)

Protocol (ai.google.dev/api/live: JSON text frames)
---------------------------------------------------
Client to server: ``setup`` (must come first; answered by ``setupComplete``),
``clientContent`` (``turns``, ``turnComplete``), ``realtimeInput``
(``audio`` / ``mediaChunks`` blobs of ``audio/pcm;rate=N``, ``activityStart``,
``activityEnd``, ``text``, ``audioStreamEnd``, ``video``) and ``toolResponse``
(``functionResponses``). Server to client: ``setupComplete``,
``serverContent`` (``modelTurn.parts[].inlineData``, ``outputTranscription``,
``inputTranscription``, ``generationComplete``, ``turnComplete``,
``interrupted``), ``usageMetadata`` (with ``turnComplete``), ``toolCall``,
``toolCallCancellation``, ``sessionResumptionUpdate`` and ``goAway``. Every
message sent parses as the SDK's ``google.genai.types.LiveServerMessage``.
Client fields are read in either proto3 JSON spelling, lowerCamelCase or
snake_case (the SDK sends ``client_content`` and
``realtimeInputConfig.automatic_activity_detection``, for instance), and bytes
as standard or URL-safe base64 (the SDK sends URL-safe).

Instead of a model it plays the scripted hotel front desk of
:mod:`offline.realtime_server`: the first reply of a call is ``GREETING``, the
reply to caller turn n is ``scripted_reply(n - 1)``, all spoken by espeak-ng
(:mod:`offline.tts`). Caller audio is not recognised; the input transcription
of a caller turn says only how long they spoke, ``"[caller spoke 2.4 s]"``,
measured by that module's energy detector (the caller's audio is resampled to
24000 Hz for it).

Turns
-----
- With ``realtimeInputConfig.automaticActivityDetection.disabled`` (what
  Pipecat sends with ``GeminiVADParams(disabled=True)``), ``activityStart`` and
  ``activityEnd`` delimit a caller turn; audio outside them is dropped, as the
  Live API does, and ``activityEnd`` starts the reply. An ``activityStart``
  during a reply is a barge-in: the audio stops and ``interrupted: true`` is
  sent.
- Otherwise turns are found in the audio by the energy detector
  (:class:`offline.realtime_server.ServerVad`): a turn starts after 100 ms of
  speech and ends after ``silenceDurationMs`` (default 500 ms) without; speech
  during a reply interrupts it.
- ``clientContent`` with ``turnComplete: true`` starts a reply (how Pipecat asks
  for the greeting). ``realtimeInput.text`` starts one too, unless it is blank:
  Pipecat sends a blank text as a nudge after ``turnComplete`` for Gemini 3
  models, which must not make a second reply.
- A ``turnComplete`` or caller turn that arrives while a reply is playing does
  not start another reply.

A reply is ``inputTranscription`` (caller turns only), then ``modelTurn`` audio
chunks of 60 ms (24000 Hz PCM16 mono, base64) with ``outputTranscription``
words interleaved where their share of the audio begins, then
``generationComplete`` and ``turnComplete`` with ``usageMetadata`` (a stand-in
count: 32 tokens per second of audio, ai.google.dev/gemini-api/docs/tokens;
about 4 characters per token of text). The first chunk goes after
``response_delay_ms``, the rest at ``pace`` times real time.

Tool call: if ``setup.tools`` declares a function named ``get_caller_context``,
the second caller turn is answered by ``toolCall`` (one call, no arguments);
the spoken reply follows the ``toolResponse`` (unless the response's
``scheduling`` is ``SILENT``). A barge-in while the call is outstanding cancels
it with ``toolCallCancellation``.

Session resumption: when ``setup`` carries ``sessionResumption``, each finished
(or interrupted) reply is followed by ``sessionResumptionUpdate {newHandle,
resumable: true}``. The handle names a snapshot of the conversation (history,
script position, tool state); a new connection whose ``setup`` carries it goes
on from there. An unknown handle closes the connection (code 1008). If
``max_session_s`` is set, every connection gets ``goAway {timeLeft}`` one second
(at most) before it is closed at that age, like Gemini's session time limit.

Malformed client messages are logged and ignored; a first message that is not
``setup`` closes the connection (code 1007).

Run it standalone with ``python -m offline.gemini_server --port 8766``; it
prints the base URL and the certificate to trust (``SSL_CERT_FILE``).
Environment: ``OFFLINE_AGENT_DELAY_MS`` (default 0), ``OFFLINE_AGENT_PACE``
(default 3.0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import copy
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import soxr
import uvloop
from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from offline.realtime_server import GREETING, SCRIPT, ServerVad, scripted_reply, speech_seconds
from offline.common import ReceivedLog, wait_unless_cancelled
from offline.tts import synthesize_async

OUTPUT_SAMPLE_RATE = 24000
"""Rate of the audio the Live API returns, in Hz (PCM16 mono)."""
OUTPUT_MIME_TYPE = f"audio/pcm;rate={OUTPUT_SAMPLE_RATE}"
DETECTOR_SAMPLE_RATE = 24000
"""Rate in Hz the energy detector of :mod:`offline.realtime_server` works at."""
DEFAULT_INPUT_SAMPLE_RATE = 16000
"""Input rate in Hz assumed for ``audio/pcm`` without ``rate=`` (the Live API's native input rate)."""
AUDIO_CHUNK_MS = 60
"""Length of the audio in one ``modelTurn`` message, in ms."""
DEFAULT_SILENCE_MS = 500
"""Silence that ends a caller turn with automatic activity detection, in ms."""
AUDIO_TOKENS_PER_SECOND = 32
CHARS_PER_TEXT_TOKEN = 4
TOOL_NAME = "get_caller_context"
"""The function that, when declared, is called on the caller's second turn."""
TOOL_TURN = 2
"""How many client messages :attr:`OfflineGeminiLiveServer.received` keeps."""
MAX_TURN_AUDIO_BYTES = 10 * 60 * DETECTOR_SAMPLE_RATE * 2
"""Caller audio kept per turn, in bytes (10 minutes at 24000 Hz)."""
IDLE_KEEP_MS = 1000
"""Audio kept between turns with automatic activity detection, in ms."""
SETUP_TIMEOUT_S = 30.0

PATH_RE = re.compile(
    r"^/ws/google\.ai\.generativelanguage\.(?P<version>v1[a-z0-9]*)"
    r"\.GenerativeService\.(?P<method>BidiGenerateContent(?:Constrained)?)$"
)
"""WebSocket paths served: the SDK's ``BidiGenerateContent`` path for any API version."""

ALL_LINES = (GREETING, *SCRIPT)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _duration(seconds: float) -> str:
    """Format seconds as a protobuf JSON ``Duration`` string, e.g. ``"1s"``."""
    return f"{max(seconds, 0.0):.3f}".rstrip("0").rstrip(".") + "s"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _get(message: Any, name: str, default: Any = None) -> Any:
    """Read a field of a client message by its lowerCamelCase name.

    The Live API parses messages as proto3 JSON, which accepts a field under its
    lowerCamelCase name or its original snake_case name; the SDK sends some
    nested setup fields (e.g. ``realtimeInputConfig.automatic_activity_detection``)
    in snake_case.
    """
    if not isinstance(message, dict):
        return default
    if name in message:
        return message[name]
    return message.get(_snake(name), default)


def _has(message: Any, name: str) -> bool:
    return isinstance(message, dict) and (name in message or _snake(name) in message)


def _b64decode(text: Any) -> bytes:
    """Decode proto3 JSON ``bytes``: standard or URL-safe base64, padded or not.

    The SDK sends blobs URL-safe (``_common.encode_unserializable_types``).

    Raises:
        ValueError: If ``text`` is not base64 of either alphabet.
    """
    if not isinstance(text, str):
        raise ValueError("bytes must be a base64 string")
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _input_rate(mime_type: str | None) -> int | None:
    """Sample rate in Hz of an ``audio/pcm[;rate=N]`` MIME type; None if not PCM audio."""
    if not mime_type:
        return None
    kind, *params = [p.strip() for p in mime_type.split(";")]
    if kind.lower() not in ("audio/pcm", "audio/l16"):
        return None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "rate" and value.strip().isdigit():
            return int(value)
    return DEFAULT_INPUT_SAMPLE_RATE


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def make_certificate(
    directory: str | os.PathLike,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    backend: str = "auto",
) -> tuple[str, str]:
    """Create a self-signed TLS certificate (P-256 key, 30 days) for local servers.

    The certificate is its own CA (``CA:TRUE``), so a client trusts it by
    loading it as a CA file.

    Args:
        directory: Folder to write ``cert.pem`` and ``key.pem`` into.
        hosts: Host names and IP addresses to put in subjectAltName.
        backend: ``"cryptography"`` (the package), ``"openssl"`` (the
            command), or ``"auto"``: the package if importable, else the command.

    Returns:
        ``(cert_path, key_path)``.

    Raises:
        RuntimeError: If the chosen backend is not available.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    x509 = None
    if backend in ("auto", "cryptography"):
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        except ImportError:
            if backend == "cryptography":
                raise RuntimeError("the 'cryptography' package is not installed") from None
    if x509 is not None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offline-gemini-live")])
        alt_names: list[x509.GeneralName] = []
        for host in hosts:
            ip = _is_ip(host)
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)) if ip else x509.DNSName(host))
        now = datetime.datetime.now(datetime.timezone.utc)
        public_key = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(cert_path), str(key_path)

    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("a TLS certificate needs the 'cryptography' package or the openssl command")
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key_path), "-out", str(cert_path), "-days", "30",
            "-subj", "/CN=offline-gemini-live", "-addext", f"subjectAltName={san}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
            "-addext", "extendedKeyUsage=serverAuth",
        ],
        check=True,
        capture_output=True,
    )
    return str(cert_path), str(key_path)


@dataclass
class _Conversation:
    """What a session remembers; snapshots of it are what resumption handles name."""

    history: list[dict] = field(default_factory=list)
    caller_turns: int = 0
    replies_after_caller: int = 0
    tool_called: bool = False


class _Reply:
    """One scripted model turn being spoken."""

    def __init__(self, text: str, pcm: bytes, *, caller_seconds: float = 0.0) -> None:
        self.id = _new_id("turn")
        self.text = text
        self.pcm = pcm
        self.caller_seconds = caller_seconds
        self.spoken_text = ""
        self.cancelled = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def pause(self, seconds: float) -> bool:
        """Wait, yielding to the event loop; return True if cancelled meanwhile."""
        return await wait_unless_cancelled(self.cancelled, seconds)


class _Session:
    """Protocol state of one WebSocket connection."""

    def __init__(self, server: OfflineGeminiLiveServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.id = _new_id("session")
        self.conversation = _Conversation()
        self.setup: dict = {}
        self.resumption = False
        self.auto_activity = True
        self.transcribe_input = False
        self.transcribe_output = False
        self.tool_names: set[str] = set()
        self.vad: ServerVad | None = None
        self.in_activity = False
        self.turn_audio = bytearray()  # caller audio of the current turn, 24000 Hz
        self.dropped_audio_bytes = 0
        self._resampler: soxr.ResampleStream | None = None
        self._resampler_rate: int | None = None
        self.reply: _Reply | None = None
        self.pending_tool_call: dict | None = None
        self._limit_task: asyncio.Task | None = None

    # -- plumbing ------------------------------------------------------------

    async def send(self, message: dict) -> None:
        """Send one server message as a JSON text frame."""
        await self.ws.send(json.dumps(message))

    async def run(self) -> None:
        """Serve the connection: setup first, then client messages until it closes."""
        try:
            try:
                first = await asyncio.wait_for(self.ws.recv(), SETUP_TIMEOUT_S)
            except TimeoutError:
                await self.ws.close(1008, "No setup message received")
                return
            message = self.server._parse(first)
            if message is None or not isinstance(message.get("setup"), dict):
                logger.warning(f"First client message is not setup: {str(first)[:200]!r}")
                await self.ws.close(1007, "The first message must be setup")
                return
            self.server._record(message)
            if not await self._on_setup(message["setup"]):
                return
            async for raw in self.ws:
                message = self.server._parse(raw)
                if message is not None:
                    self.server._record(message)
                    await self._dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            if self._limit_task is not None:
                self._limit_task.cancel()
            await self._stop_reply(send=False)

    async def _dispatch(self, message: dict) -> None:
        handlers = {
            "clientContent": self._on_client_content,
            "realtimeInput": self._on_realtime_input,
            "toolResponse": self._on_tool_response,
        }
        known = [name for name in handlers if _has(message, name)]
        if len(known) != 1 or not isinstance(_get(message, known[0]), dict):
            logger.warning(f"Ignoring client message with no single known field: {list(message)[:5]}")
            return
        try:
            await handlers[known[0]](_get(message, known[0]))
        except ConnectionClosed:
            raise
        except Exception:
            logger.exception(f"Ignoring client message {known[0]} that could not be handled")

    # -- setup -------------------------------------------------------------------

    async def _on_setup(self, setup: dict) -> bool:
        self.setup = setup
        resumption = _get(setup, "sessionResumption")
        self.resumption = isinstance(resumption, dict)
        handle = _get(resumption, "handle")
        if handle:
            snapshot = self.server._handles.get(handle)
            if snapshot is None:
                logger.warning(f"Unknown session resumption handle {handle!r}")
                await self.ws.close(1008, "Invalid session resumption handle")
                return False
            self.conversation = copy.deepcopy(snapshot)
            logger.info(
                f"Session {self.id} resumed from {handle} "
                f"({self.conversation.caller_turns} caller turns so far)"
            )
        activity = _get(_get(setup, "realtimeInputConfig"), "automaticActivityDetection") or {}
        self.auto_activity = not _get(activity, "disabled", False)
        if self.auto_activity:
            self.vad = ServerVad(int(_get(activity, "silenceDurationMs") or DEFAULT_SILENCE_MS))
        self.transcribe_input = isinstance(_get(setup, "inputAudioTranscription"), dict)
        self.transcribe_output = isinstance(_get(setup, "outputAudioTranscription"), dict)
        for tool in _get(setup, "tools") or []:
            for declaration in _get(tool, "functionDeclarations") or []:
                if isinstance(declaration, dict) and declaration.get("name"):
                    self.tool_names.add(declaration["name"])
        modalities = _get(_get(setup, "generationConfig"), "responseModalities") or ["AUDIO"]
        if "AUDIO" not in modalities:
            logger.warning(f"Only AUDIO responses are served; setup asked for {modalities}")
        instruction = _get(setup, "systemInstruction")
        if instruction and not handle:
            self.conversation.history.append({"role": "system", "text": _content_text(instruction)})
        await self.send({"setupComplete": {"sessionId": self.id}})
        if self.server.max_session_s is not None:
            self._limit_task = asyncio.create_task(self._session_limit(), name=f"gemini-limit-{self.id}")
        logger.info(
            f"Session {self.id} set up: model={setup.get('model')} "
            f"automatic_activity_detection={self.auto_activity} tools={sorted(self.tool_names)}"
        )
        return True

    async def _session_limit(self) -> None:
        """Send ``goAway``, then close the connection at ``max_session_s``."""
        limit = float(self.server.max_session_s or 0)
        warn_at = max(limit - 1.0, 0.0)
        try:
            await asyncio.sleep(warn_at)
            await self.send({"goAway": {"timeLeft": _duration(limit - warn_at)}})
            await asyncio.sleep(limit - warn_at)
            logger.info(f"Session {self.id} reached its {limit:g} s limit; closing")
            await self._stop_reply(send=False)
            await self.ws.close(1000, "Session time limit reached")
        except ConnectionClosed:
            pass

    # -- client content and tool responses -----------------------------------------

    async def _on_client_content(self, content: dict) -> None:
        for turn in _get(content, "turns") or []:
            if isinstance(turn, dict):
                self.conversation.history.append(
                    {"role": turn.get("role") or "user", "text": _content_text(turn)}
                )
        if _get(content, "turnComplete"):
            self._start_reply_unless_busy("turnComplete")

    async def _on_tool_response(self, response: dict) -> None:
        for function_response in _get(response, "functionResponses") or []:
            call = self.pending_tool_call
            if call is None or function_response.get("id") not in (call["id"], None):
                logger.warning(f"toolResponse for no outstanding call: {function_response.get('id')!r}")
                continue
            self.pending_tool_call = None
            result = function_response.get("response")
            name = function_response.get("name")
            self.conversation.history.append({"role": "tool", "name": name, "response": result})
            scheduling = _get(function_response, "scheduling") or _get(result, "scheduling")
            if scheduling == "SILENT":
                continue
            self._start_reply_unless_busy("toolResponse", caller_seconds=call["caller_seconds"])

    # -- realtime input ------------------------------------------------------------------

    async def _on_realtime_input(self, realtime: dict) -> None:
        if _has(realtime, "activityStart"):
            await self._activity_start()
        blobs = []
        if isinstance(realtime.get("audio"), dict):
            blobs.append(realtime["audio"])
        blobs += [b for b in _get(realtime, "mediaChunks") or [] if isinstance(b, dict)]
        for blob in blobs:
            rate = _input_rate(_get(blob, "mimeType"))
            if rate is None:
                logger.debug(f"Ignoring non-PCM realtime input {blob.get('mimeType')!r}")
                continue
            try:
                pcm = _b64decode(_get(blob, "data", ""))
            except (binascii.Error, TypeError, ValueError):
                logger.warning("Ignoring realtime audio that is not valid base64")
                continue
            await self._on_audio(pcm[: len(pcm) // 2 * 2], rate)
        if _has(realtime, "activityEnd"):
            await self._activity_end()
        text = realtime.get("text")
        if isinstance(text, str):
            if text.strip():
                self.conversation.history.append({"role": "user", "text": text})
                self.conversation.caller_turns += 1
                await self._answer_caller(0.0)
            else:
                logger.debug("Blank realtime text (a client nudge); no reply of its own")

    def _to_detector_rate(self, pcm: bytes, rate: int, last: bool = False) -> bytes:
        """Resample caller audio to 24000 Hz with a streaming resampler kept per session."""
        if rate == DETECTOR_SAMPLE_RATE:
            return pcm
        if self._resampler is None or self._resampler_rate != rate:
            self._resampler = soxr.ResampleStream(rate, DETECTOR_SAMPLE_RATE, 1, dtype="int16", quality="HQ")
            self._resampler_rate = rate
        samples = np.frombuffer(pcm, dtype="<i2")
        return self._resampler.resample_chunk(samples, last=last).astype("<i2").tobytes()

    def _flush_resampler(self) -> bytes:
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True).astype("<i2").tobytes()
        self._resampler = None
        self._resampler_rate = None
        return tail

    async def _on_audio(self, pcm: bytes, rate: int) -> None:
        if not self.auto_activity:
            if not self.in_activity:
                self.dropped_audio_bytes += len(pcm)
                return
            self._keep(self._to_detector_rate(pcm, rate))
            return
        audio = self._to_detector_rate(pcm, rate)
        assert self.vad is not None
        self._keep(audio)
        for boundary, _at_ms in self.vad.feed(audio):
            if boundary == "started":
                await self._barge_in()
            else:
                await self._end_caller_turn()
        if not self.vad.in_speech:
            keep = IDLE_KEEP_MS * DETECTOR_SAMPLE_RATE * 2 // 1000
            del self.turn_audio[:-keep]

    def _keep(self, audio: bytes) -> None:
        self.turn_audio += audio
        if len(self.turn_audio) > MAX_TURN_AUDIO_BYTES:
            del self.turn_audio[: len(self.turn_audio) - MAX_TURN_AUDIO_BYTES]

    async def _activity_start(self) -> None:
        if self.auto_activity:
            logger.warning("activityStart with automatic activity detection on; ignored")
            return
        if self.dropped_audio_bytes:
            logger.debug(f"Dropped {self.dropped_audio_bytes} bytes of audio sent outside an activity window")
            self.dropped_audio_bytes = 0
        self.in_activity = True
        self.turn_audio.clear()
        self._resampler = None
        await self._barge_in()

    async def _activity_end(self) -> None:
        if self.auto_activity or not self.in_activity:
            logger.warning("activityEnd without a matching activityStart; ignored")
            return
        self.in_activity = False
        self.turn_audio += self._flush_resampler()
        await self._end_caller_turn()

    async def _barge_in(self) -> None:
        """The caller started speaking: stop a reply, cancel an outstanding tool call."""
        if self.reply is not None and self.server.interrupt_lag_ms:
            # What the real service sent before the activityStart reached it is still
            # on its way: the reply goes on this long, later messages wait behind it.
            await asyncio.sleep(self.server.interrupt_lag_ms / 1000)
        if self.reply is not None:
            logger.info(f"Barge-in: interrupting {self.reply.id}")
            await self._stop_reply(send=True)
        if self.pending_tool_call is not None:
            call, self.pending_tool_call = self.pending_tool_call, None
            await self.send({"toolCallCancellation": {"ids": [call["id"]]}})

    async def _end_caller_turn(self) -> None:
        seconds = speech_seconds(bytes(self.turn_audio))
        self.turn_audio.clear()
        transcript = f"[caller spoke {seconds:.1f} s]"
        self.conversation.caller_turns += 1
        self.conversation.history.append({"role": "user", "text": transcript})
        logger.info(f"Session {self.id}: caller turn {self.conversation.caller_turns}: {transcript}")
        if self.transcribe_input:
            await self.send({"serverContent": {"inputTranscription": {"text": transcript}}})
        await self._answer_caller(seconds)

    async def _answer_caller(self, seconds: float) -> None:
        conversation = self.conversation
        tool_turn = TOOL_NAME in self.tool_names and conversation.caller_turns == TOOL_TURN
        if tool_turn and not conversation.tool_called:
            if self.reply is not None:
                logger.debug("Caller turn ended while a reply is playing; no tool call")
                return
            conversation.tool_called = True
            call = {"id": _new_id("call"), "name": TOOL_NAME, "args": {}}
            self.pending_tool_call = {"id": call["id"], "caller_seconds": seconds}
            conversation.history.append({"role": "model", "functionCall": call})
            await self.send({"toolCall": {"functionCalls": [call]}})
            return
        self._start_reply_unless_busy("caller turn", caller_seconds=seconds)

    # -- replies ---------------------------------------------------------------------

    def _start_reply_unless_busy(self, reason: str, caller_seconds: float = 0.0) -> None:
        if self.reply is not None:
            logger.debug(f"{reason} while {self.reply.id} is playing; not starting another reply")
            return
        conversation = self.conversation
        if conversation.caller_turns == 0:
            text = GREETING
        else:
            text = scripted_reply(conversation.replies_after_caller)
            conversation.replies_after_caller += 1
        reply = _Reply(text, self.server._lines.get(text, b""), caller_seconds=caller_seconds)
        reply.task = asyncio.create_task(self._speak(reply), name=f"offline-gemini-reply-{reply.id}")
        self.reply = reply

    async def _stop_reply(self, send: bool) -> None:
        """Stop the active reply and wait for it.

        Args:
            send: True for a barge-in (``interrupted: true`` is sent); False
                when the connection is going away (nothing is sent).
        """
        reply = self.reply
        if reply is None or reply.task is None:
            return
        if send:
            reply.cancelled.set()
        else:
            reply.task.cancel()
        await asyncio.wait([reply.task])

    async def _speak(self, reply: _Reply) -> None:
        try:
            await self._stream_reply(reply)
        except ConnectionClosed:
            logger.debug(f"Client left during {reply.id}")
        except asyncio.CancelledError:
            logger.debug(f"{reply.id} cut off: the connection is closing")
        except Exception:
            logger.exception(f"Reply {reply.id} failed")
        finally:
            if self.reply is reply:
                self.reply = None

    async def _stream_reply(self, reply: _Reply) -> None:
        """Send one reply the way the Live API streams a model turn."""
        loop = asyncio.get_running_loop()
        if not await reply.pause(self.server.response_delay_ms / 1000):
            if not reply.pcm:
                reply.pcm = await synthesize_async(reply.text, OUTPUT_SAMPLE_RATE, self.server.voice)
            chunk_bytes = OUTPUT_SAMPLE_RATE * 2 * AUDIO_CHUNK_MS // 1000
            chunks = [reply.pcm[i : i + chunk_bytes] for i in range(0, len(reply.pcm), chunk_bytes)]
            words = re.findall(r"\S+\s*", reply.text) or [reply.text]
            word_starts, offset = [], 0
            for word in words:
                word_starts.append(offset * len(chunks) // max(1, len(reply.text)))
                offset += len(word)
            sent_words = 0
            started = loop.time()
            for index, chunk in enumerate(chunks):
                wait = 0.0
                if index and self.server.pace > 0:
                    wait = started + index * AUDIO_CHUNK_MS / 1000 / self.server.pace - loop.time()
                if await reply.pause(wait):
                    break
                blob = {"mimeType": OUTPUT_MIME_TYPE, "data": base64.b64encode(chunk).decode()}
                model_turn = {"role": "model", "parts": [{"inlineData": blob}]}
                await self.send({"serverContent": {"modelTurn": model_turn}})
                piece = ""
                while sent_words < len(words) and word_starts[sent_words] <= index:
                    piece += words[sent_words]
                    sent_words += 1
                if piece:
                    reply.spoken_text += piece
                    if self.transcribe_output:
                        await self.send({"serverContent": {"outputTranscription": {"text": piece}}})
        spoken = reply.spoken_text.strip()
        if reply.cancelled.is_set():
            self.conversation.history.append({"role": "model", "text": spoken, "interrupted": True})
            await self.send({"serverContent": {"interrupted": True}})
            await self._resumption_update()
            return
        self.conversation.history.append({"role": "model", "text": reply.text})
        await self.send({"serverContent": {"generationComplete": True}})
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(reply)})
        await self._resumption_update()

    def _usage(self, reply: _Reply) -> dict:
        prompt_text = sum(len(str(m.get("text") or "")) for m in self.conversation.history)
        prompt_text_tokens = prompt_text // CHARS_PER_TEXT_TOKEN
        prompt_audio_tokens = round(reply.caller_seconds * AUDIO_TOKENS_PER_SECOND)
        response_tokens = round(len(reply.pcm) / (OUTPUT_SAMPLE_RATE * 2) * AUDIO_TOKENS_PER_SECOND)
        prompt_details = [{"modality": "TEXT", "tokenCount": prompt_text_tokens}]
        if prompt_audio_tokens:
            prompt_details.append({"modality": "AUDIO", "tokenCount": prompt_audio_tokens})
        return {
            "promptTokenCount": prompt_text_tokens + prompt_audio_tokens,
            "responseTokenCount": response_tokens,
            "totalTokenCount": prompt_text_tokens + prompt_audio_tokens + response_tokens,
            "promptTokensDetails": prompt_details,
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response_tokens}],
        }

    async def _resumption_update(self) -> None:
        if not self.resumption:
            return
        handle = self.server._save_handle(self.conversation)
        await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})


def _content_text(content: Any) -> str:
    """The text parts of a ``Content`` object (or a plain string), joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, dict):
        return ""
    return "".join(str(p.get("text") or "") for p in content.get("parts") or [] if isinstance(p, dict))


class OfflineGeminiLiveServer:
    """A TLS WebSocket server imitating the Gemini Live API's ``BidiGenerateContent``.

    Each connection is a session with its own conversation; a session
    resumption handle carries a conversation over to a new connection.

    Attributes:
        received: Client messages from every connection, oldest first, at most
            the last 10,000, with their keys as sent (the SDK sends some in
            snake_case, e.g. ``client_content``). Blobs in ``realtimeInput`` are
            stored without their data, as ``{"mimeType": ..., "bytes": n}``, n
            being the decoded size in bytes (-1 if not valid base64).
        handshakes: One entry per WebSocket handshake: ``path``, ``query`` and
            ``headers`` (the API key's value replaced by ``"<redacted>"``).
        response_delay_ms: Pause before the first audio of a reply, in ms.
        pace: How many times faster than real time reply audio is sent after
            its first chunk; 0 sends it as fast as possible.
        max_session_s: Age in seconds at which a connection gets ``goAway`` and
            is closed; None for no limit.
        voice: espeak-ng voice of the agent.
        interrupt_lag_ms: How long a reply goes on after a barge-in's ``activityStart``, in ms.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        response_delay_ms: int = 0,
        pace: float = 3.0,
        event_log: str | None = None,
        max_session_s: float | None = None,
        cert_dir: str | None = None,
        voice: str = "en-us",
        interrupt_lag_ms: int = 0,
    ) -> None:
        """Configure the server; nothing runs until :meth:`start`.

        Args:
            host: Interface to listen on.
            port: TCP port; 0 picks a free one (see :attr:`url`).
            response_delay_ms: Model latency stand-in before reply audio, in ms.
            pace: Reply audio send speed as a multiple of real time; 0 = unpaced.
            event_log: If set, a file to which each received client message
                (stored as in :attr:`received`) is appended as one JSON line.
            max_session_s: Session age limit in seconds (``goAway`` then close);
                None for none.
            cert_dir: Folder for the TLS certificate and key; a temporary
                folder (removed by :meth:`stop`) if None. An existing
                ``cert.pem``/``key.pem`` pair there is reused.
            voice: espeak-ng voice for the agent.
            interrupt_lag_ms: How long a reply goes on after the ``activityStart``
                that interrupts it is received, in ms: the audio a real service sent
                before that message reached it, still in flight (0: none).
        """
        self.host = host
        self.port = port
        self.interrupt_lag_ms = interrupt_lag_ms
        self.response_delay_ms = response_delay_ms
        self.pace = pace
        self.event_log = event_log
        self.max_session_s = max_session_s
        self.cert_dir = cert_dir
        self.voice = voice
        self.received: list[dict] = []
        self._log = ReceivedLog(self.received)
        self.handshakes: list[dict] = []
        self._handles: dict[str, _Conversation] = {}
        self._sessions: set[_Session] = set()
        self._lines: dict[str, bytes] = {}
        self._server: Server | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self.ca_file: str | None = None
        """PEM certificate a client must trust (also usable as ``SSL_CERT_FILE``)."""

    @property
    def url(self) -> str:
        """The base URL to give the SDK as ``http_options.base_url``: ``https://HOST:PORT``."""
        if self._server is None:
            raise RuntimeError("OfflineGeminiLiveServer is not started")
        return f"https://{self.host}:{self.port}"

    @property
    def sessions(self) -> int:
        """How many connections are open right now."""
        return len(self._sessions)

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only this server's certificate."""
        if self.ca_file is None:
            raise RuntimeError("OfflineGeminiLiveServer is not started")
        return ssl.create_default_context(cafile=self.ca_file)

    def http_options(self, **overrides: Any) -> Any:
        """``google.genai.types.HttpOptions`` that reach this server.

        Args:
            **overrides: Further ``HttpOptions`` fields (e.g. ``api_version``).

        Returns:
            ``HttpOptions(base_url=self.url, async_client_args={"ssl": ...})``.
        """
        from google.genai.types import HttpOptions

        ssl_args = {"ssl": self.client_ssl_context()}
        return HttpOptions(base_url=self.url, async_client_args=ssl_args, **overrides)

    async def start(self) -> None:
        """Render every scripted line, make the TLS certificate and start listening.

        Raises:
            RuntimeError: If espeak-ng is missing, or no way to make a certificate exists.
        """
        renders = (synthesize_async(line, OUTPUT_SAMPLE_RATE, self.voice) for line in ALL_LINES)
        self._lines = dict(zip(ALL_LINES, await asyncio.gather(*renders)))
        if self.cert_dir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="offline-gemini-tls-")
            folder = Path(self._tmpdir.name)
        else:
            folder = Path(self.cert_dir)
        cert_path, key_path = folder / "cert.pem", folder / "key.pem"
        if not (cert_path.exists() and key_path.exists()):
            hosts = tuple(dict.fromkeys(("127.0.0.1", "localhost", self.host)))
            await asyncio.to_thread(make_certificate, folder, hosts)
        self.ca_file = str(cert_path)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert_path), str(key_path))
        self._log.open(self.event_log)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=tls,
            process_request=self._check_request,
            compression=None,
            max_size=16 * 1024 * 1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(f"Offline Gemini Live server listening on {self.url} (certificate {self.ca_file})")

    async def stop(self) -> None:
        """Close every connection, stop listening, close the event log, remove a temporary certificate."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._log.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> OfflineGeminiLiveServer:
        """Start the server for an ``async with`` block."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the server at the end of an ``async with`` block."""
        await self.stop()

    async def drop_connections(self) -> int:
        """Fault injection: abort every live session's TCP connection, with no close frame.

        Returns:
            How many connections were dropped.
        """
        sessions = list(self._sessions)
        for session in sessions:
            logger.info(f"Dropping session {session.id}")
            session.ws.transport.abort()
        for session in sessions:
            await session.ws.wait_closed()
        return len(sessions)

    # -- internals -------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        headers = {
            name: "<redacted>" if name.lower() == "x-goog-api-key" else value
            for name, value in request.headers.raw_items()
        }
        recorded_query = {name: values[0] for name, values in query.items() if name != "key"}
        self.handshakes.append({"path": parts.path, "query": recorded_query, "headers": headers})
        if not PATH_RE.match(parts.path):
            body = b"Only the BidiGenerateContent WebSocket is served here.\n"
            return Response(404, "Not Found", Headers(), body)
        key = request.headers.get("x-goog-api-key") or query.get("key", [""])[0]
        token = request.headers.get("Authorization", "")
        if not key and not token:
            body = b"Missing API key (x-goog-api-key header or key= query).\n"
            return Response(403, "Forbidden", Headers(), body)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = _Session(self, ws)
        self._sessions.add(session)
        logger.info(f"Session {session.id} connected from {ws.remote_address}")
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            logger.info(f"Session {session.id} ended")

    def _save_handle(self, conversation: _Conversation) -> str:
        handle = _new_id("resume")
        self._handles[handle] = copy.deepcopy(conversation)
        return handle

    def _parse(self, raw: str | bytes) -> dict | None:
        try:
            message = json.loads(raw)
        except (ValueError, TypeError):
            logger.warning(f"Ignoring client message that is not JSON: {str(raw)[:200]!r}")
            return None
        if not isinstance(message, dict):
            logger.warning(f"Ignoring client message that is not an object: {str(raw)[:200]!r}")
            return None
        return message

    def _record(self, message: dict) -> None:
        for key in ("realtimeInput", "realtime_input"):
            realtime = message.get(key)
            if not isinstance(realtime, dict):
                continue
            realtime = dict(realtime)
            for name in ("audio", "video"):
                if isinstance(realtime.get(name), dict):
                    realtime[name] = _blob_summary(realtime[name])
            for name in ("mediaChunks", "media_chunks"):
                if isinstance(realtime.get(name), list):
                    realtime[name] = [_blob_summary(b) for b in realtime[name]]
            message = {**message, key: realtime}
        self._log.append(message)


def _blob_summary(blob: Any) -> Any:
    if not isinstance(blob, dict):
        return blob
    try:
        size = len(_b64decode(_get(blob, "data", "")))
    except (binascii.Error, TypeError, ValueError):
        size = -1
    return {"mimeType": _get(blob, "mimeType"), "bytes": size}


async def _serve_forever(args: argparse.Namespace) -> None:
    server = OfflineGeminiLiveServer(
        args.host,
        args.port,
        event_log=args.event_log,
        response_delay_ms=int(os.environ.get("OFFLINE_AGENT_DELAY_MS", "0")),
        pace=float(os.environ.get("OFFLINE_AGENT_PACE", "3.0")),
        max_session_s=args.max_session_s,
        cert_dir=args.cert_dir,
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Serving the Gemini Live protocol at {server.url} (Ctrl-C to stop)", flush=True)
    print(f"Trust its certificate: SSL_CERT_FILE={server.ca_file}", flush=True)
    print(f"Then: GEMINI_BASE_URL={server.url} GOOGLE_API_KEY=offline", flush=True)
    await stop.wait()
    await server.stop()


def main() -> None:
    """Command line entry point: serve until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--event-log", help="append received client messages here as JSON lines")
    parser.add_argument("--max-session-s", type=float, help="session age limit in s (goAway, then close)")
    parser.add_argument("--cert-dir", help="keep the TLS certificate here, reused across runs")
    uvloop.run(_serve_forever(parser.parse_args()))


if __name__ == "__main__":
    main()
