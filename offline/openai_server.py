"""A local stand-in for OpenAI's HTTP audio and chat endpoints, for the cascade graph offline.

It speaks enough of three OpenAI REST endpoints for Pipecat's unmodified
``OpenAISTTService``, ``OpenAILLMService`` and ``OpenAITTSService`` to hold a whole
phone call against it through their ``base_url`` (``http://HOST:PORT/v1``):

- ``POST /v1/audio/transcriptions`` (multipart: ``file`` a WAV, ``model``,
  ``language``): answers ``{"text": ...}``. There is no speech recogniser here: the
  transcript only says how long the caller spoke, ``"[caller spoke 2.4 s]"``,
  measured by the offline Realtime server's energy detector
  (:func:`offline.realtime_server.speech_seconds`). The caller's audio is real speech;
  its words are not recognised.
- ``POST /v1/chat/completions`` with ``stream: true``: Server-Sent Events of
  ``chat.completion.chunk`` objects, ending with ``data: [DONE]``. Text goes out as
  ``delta.content`` pieces, a tool call as ``delta.tool_calls`` with ``finish_reason``
  ``tool_calls``. The "model" is the scripted front desk of the offline Realtime
  server: a greeting, then the booking scenario of :mod:`offline.booking_script` when
  the request declares the booking tools, else the plain script. The script's position
  is worked out from the request's ``messages`` alone (caller turns, tool calls made,
  tool results), as the API is stateless. A system message asking for Japanese gets
  Japanese lines.
- ``POST /v1/audio/speech`` (JSON: ``input``, ``voice``, ``model``,
  ``response_format``): espeak-ng speech of ``input``, as raw 16-bit PCM at 24000 Hz
  for ``pcm`` (what Pipecat asks for) or a WAV for ``wav``; Japanese text is spoken
  with espeak-ng's ``ja`` voice.

Shapes follow the API reference (platform.openai.com/docs/api-reference/audio,
/chat/streaming); the ``openai`` SDK Pipecat uses parses every answer.

Run it standalone with ``python -m offline.openai_server --port 8766``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import time
import uuid
import wave
from typing import Any

import numpy as np
import soxr
import uvicorn
import uvloop
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from loguru import logger

from offline.booking_script import BOOKING_TOOLS, BookingScript, SayLine, ToolCall
from offline.common import ReceivedLog
from offline.realtime_server import GREETING, scripted_reply, speech_seconds
from offline.tts import synthesize_async

__all__ = ["GREETING_JA", "OfflineOpenAIServer", "next_reply"]

#: Rate, in Hz, of the ``pcm`` speech format (OpenAI's: 16-bit mono at 24 kHz).
SPEECH_SAMPLE_RATE = 24000
#: The greeting when the instructions ask for Japanese.
GREETING_JA = "お電話ありがとうございます。グランドハーバーホテルのフロントです。ご用件をお伺いします。"
#: The reply to every caller turn in Japanese (the booking scenario is English only).
REPLY_JA = "かしこまりました。ご予約のお手伝いをいたします。ご到着の日付を教えていただけますか。"
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def next_reply(messages: list[dict], tool_names: set[str]) -> ToolCall | SayLine:
    """What the scripted agent does next, from the conversation so far.

    Caller turns are the user messages after the agent's first reply (the first user
    message is the greeting prompt). Tool calls already made and their results (tool
    messages) replay the booking scenario to its current step.

    Args:
        messages: The request's ``messages`` (OpenAI chat format).
        tool_names: The names of the tools the request declares.

    Returns:
        A tool to call, or a line to say.
    """
    japanese = any(
        m.get("role") == "system" and "Japanese" in str(m.get("content", "")) for m in messages
    )
    first_reply = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
    if first_reply is None:
        return SayLine(GREETING_JA if japanese else GREETING)
    later = messages[first_reply + 1 :]
    user_turns = sum(1 for m in later if m.get("role") == "user")
    if japanese:
        return SayLine(REPLY_JA)
    if BOOKING_TOOLS <= tool_names:
        script = BookingScript()
        names = {
            call.get("id"): (call.get("function") or {}).get("name")
            for m in messages
            if m.get("role") == "assistant"
            for call in (m.get("tool_calls") or [])
        }
        results = [m for m in messages if m.get("role") == "tool"]
        for message in results:
            script.tool_result(names.get(message.get("tool_call_id"), ""), _text(message.get("content")))
            if message is not messages[-1]:
                script.next_action(user_turns)  # reads the result back (and keeps its facts)
        script.skip_to(len(names))
        action = script.next_action(user_turns)
        if action is not None:
            return action
    spoken_after = sum(1 for m in later if m.get("role") == "assistant" and _text(m.get("content")))
    return SayLine(scripted_reply(max(0, spoken_after)))


def _text(content: Any) -> str:
    """A message's content as text (a string, or a list of ``{"type": "text"}`` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _chunk(completion_id: str, model: str, delta: dict, finish: str | None = None) -> str:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


class _NoSignals(uvicorn.Server):
    """uvicorn inside another server's event loop: the host process keeps its signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class OfflineOpenAIServer:
    """An HTTP server at ``http://HOST:PORT/v1`` imitating three OpenAI endpoints.

    Attributes:
        received: A summary of every request, oldest first (the last 10,000):
            ``{"path", ...}`` with the transcription's bytes and language, the chat
            request's messages and tool names, the speech request's input and voice.
        response_delay_ms: Pause before each chat answer's first chunk, in ms (a
            stand-in for model latency).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        event_log: str | None = None,
        response_delay_ms: int = 0,
    ) -> None:
        """Configure the server; nothing runs until :meth:`start`.

        Args:
            host: Interface to listen on.
            port: TCP port; 0 picks a free one (see :attr:`url`).
            event_log: A file each request summary is appended to as a JSON line.
            response_delay_ms: Model latency stand-in, in ms.
        """
        self.host = host
        self.port = port
        self.event_log = event_log
        self.response_delay_ms = response_delay_ms
        self.received: list[dict] = []
        self._log = ReceivedLog(self.received)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.app = self._build_app()

    @property
    def url(self) -> str:
        """The ``base_url`` for Pipecat's OpenAI services: ``http://HOST:PORT/v1``."""
        if self._server is None:
            raise RuntimeError("OfflineOpenAIServer is not started")
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        """Start listening in the running event loop.

        Raises:
            RuntimeError: If the server does not come up within 10 s.
        """
        self._log.open(self.event_log)
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = _NoSignals(config)
        self._task = asyncio.create_task(self._server.serve(), name="offline-openai-server")
        for _ in range(200):
            if self._server.started:
                break
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the offline OpenAI server did not start")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        logger.info(f"offline OpenAI server (transcription, chat, speech) at {self.url}")

    async def stop(self) -> None:
        """Stop listening and close the event log."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        self._log.close()

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="offline OpenAI")

        @app.post("/v1/audio/transcriptions")
        async def transcriptions(request: Request) -> JSONResponse:
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return _error(400, "file is required (a WAV)")
            try:
                pcm = _wav_to_24k(await upload.read())
            except (wave.Error, EOFError, ValueError) as e:
                return _error(400, f"unreadable audio: {e}")
            seconds = await asyncio.to_thread(speech_seconds, pcm)
            language = str(form.get("language") or "")
            self._log.append({"path": "/v1/audio/transcriptions", "bytes": len(pcm),
                              "language": language, "model": str(form.get("model") or "")})
            return JSONResponse({"text": f"[caller spoke {seconds:.1f} s]"})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            try:
                body = await request.json()
                messages = body["messages"]
                assert isinstance(messages, list)
            except (ValueError, KeyError, AssertionError):
                return _error(400, "a JSON body with a 'messages' list is required")
            tools = {
                (t.get("function") or {}).get("name")
                for t in body.get("tools") or []
                if isinstance(t, dict)
            }
            action = next_reply(messages, tools)
            self._log.append({"path": "/v1/chat/completions", "messages": messages,
                              "tools": sorted(n for n in tools if n), "stream": bool(body.get("stream")),
                              "answer": action.text if isinstance(action, SayLine) else action.name})
            model = str(body.get("model") or "offline")
            if not body.get("stream"):
                return _error(400, "this offline server streams only: send stream=true")
            return StreamingResponse(self._stream(action, model), media_type="text/event-stream")

        @app.post("/v1/audio/speech")
        async def speech(request: Request) -> Response:
            try:
                body = await request.json()
                text = str(body["input"])
            except (ValueError, KeyError):
                return _error(400, "a JSON body with 'input' is required")
            fmt = body.get("response_format") or "mp3"
            if fmt not in ("pcm", "wav"):
                return _error(400, f"response_format {fmt!r}: this offline server speaks pcm and wav")
            voice = "ja" if _JAPANESE.search(text) else "en-us"
            self._log.append({"path": "/v1/audio/speech", "input": text, "voice": body.get("voice"),
                              "model": body.get("model"), "response_format": fmt})
            pcm = await synthesize_async(text, SPEECH_SAMPLE_RATE, voice)
            if fmt == "wav":
                return Response(_pcm_to_wav(pcm), media_type="audio/wav")
            return Response(pcm, media_type="audio/pcm")

        return app

    async def _stream(self, action: ToolCall | SayLine, model: str):
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        if self.response_delay_ms:
            await asyncio.sleep(self.response_delay_ms / 1000)
        yield _chunk(completion_id, model, {"role": "assistant", "content": ""})
        if isinstance(action, ToolCall):
            call = {"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                    "function": {"name": action.name, "arguments": ""}}
            yield _chunk(completion_id, model, {"tool_calls": [call]})
            arguments = {"index": 0, "function": {"arguments": json.dumps(action.arguments)}}
            yield _chunk(completion_id, model, {"tool_calls": [arguments]})
            yield _chunk(completion_id, model, {}, "tool_calls")
        else:
            for piece in re.findall(r"\S+\s*", action.text) or [action.text]:
                yield _chunk(completion_id, model, {"content": piece})
            yield _chunk(completion_id, model, {}, "stop")
        yield "data: [DONE]\n\n"


def _error(status: int, message: str) -> JSONResponse:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}},
        status_code=status,
    )


def _wav_to_24k(data: bytes) -> bytes:
    """A mono 16-bit WAV's samples, resampled to 24000 Hz.

    Raises:
        ValueError: If the WAV is not mono 16-bit PCM.
    """
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(f"need mono 16-bit PCM, got {wav.getparams()}")
        rate = wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2")
    if rate != SPEECH_SAMPLE_RATE and len(samples):
        samples = soxr.resample(samples, rate, SPEECH_SAMPLE_RATE).astype("<i2")
    return samples.tobytes()


def _pcm_to_wav(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SPEECH_SAMPLE_RATE)
        wav.writeframes(pcm)
    return out.getvalue()


async def _serve_forever(port: int) -> None:
    server = OfflineOpenAIServer(port=port)
    await server.start()
    print(f"offline OpenAI server at {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> None:
    """Command line: ``python -m offline.openai_server [--port N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve_forever(args.port))


if __name__ == "__main__":
    main()
