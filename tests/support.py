"""Test support: the real server as a process, a fake of Twilio's REST API, audio checks."""

from __future__ import annotations

import re
import secrets
import threading
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from offline.server_process import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"
TOKEN = "e2e-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "7" * 32


#: The test server's environment: signed webhooks on, and the settings a developer's
#: environment or .env might hold pinned to their defaults.
SERVER_ENV = {"API_KEY": "", "ALLOW_UNSIGNED_WEBHOOKS": "", "TWILIO_FROM_NUMBER": "", "REDIS_URL": "",
              "TWILIO_AUTH_TOKEN": TOKEN}


@contextmanager
def running_server(tmp: Path, **env_overrides: str):
    """The real server process, signed webhooks on; yields ``(base_url, log_path)``.

    Args:
        tmp: Folder for the database and the log.
        **env_overrides: Environment variables for the server.
    """
    env = {**SERVER_ENV, **env_overrides}
    try:
        with server_process(tmp, **env) as running:
            yield running
    except RuntimeError as e:
        pytest.fail(str(e))


async def ended_record(url: str, call_sid: str, timeout_s: float = 2.0) -> dict:
    """``GET /api/calls/{call_sid}`` once the call's end is recorded (or after ``timeout_s``).

    The last writes of a call land while its pipeline is torn down, just after the
    caller's side has finished.
    """
    import asyncio

    import httpx

    async with httpx.AsyncClient(base_url=url) as client:
        deadline = time.monotonic() + timeout_s
        while True:
            record = (await client.get(f"/api/calls/{call_sid}")).json()
            if record.get("ended_at") or time.monotonic() > deadline:
                return record
            await asyncio.sleep(0.1)


class FakeTwilioRest:
    """A local stand-in for api.twilio.com's Call resource, recording every request.

    - ``POST /2010-04-01/Accounts/{sid}/Calls.json`` creates a call (status ``queued``)
      and answers its JSON with a fresh ``CA...`` SID;
    - ``POST /2010-04-01/Accounts/{sid}/Calls/{call_sid}.json`` updates one (``Status``,
      ``Twiml``).

    Each request is appended to :attr:`requests` as ``{kind: "create"|"update",
    account_sid, call_sid, form, form_items, authorization}`` (``form`` keeps the first
    value of a repeated field, ``form_items`` every value). ``fail_with`` makes the
    next creations fail with that ``(HTTP status, Twilio error code, message)``.
    Source: https://www.twilio.com/docs/voice/api/call-resource
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_with: tuple[int, int, str] | None = None
        app = FastAPI()

        async def record(kind: str, account_sid: str, call_sid: str, request: Request) -> dict:
            form = await request.form()
            entry = {"kind": kind, "account_sid": account_sid, "call_sid": call_sid,
                     "form": {k: v for k, v in reversed(form.multi_items())},
                     "form_items": list(form.multi_items()),
                     "authorization": request.headers.get("authorization")}
            self.requests.append(entry)
            return entry

        @app.post("/2010-04-01/Accounts/{account_sid}/Calls.json")
        async def create_call(account_sid: str, request: Request):
            if self.fail_with:
                status, code, message = self.fail_with
                await record("create", account_sid, "", request)
                return JSONResponse(
                    {"code": code, "message": message, "status": status,
                     "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                    status_code=status,
                )
            call_sid = "CA" + secrets.token_hex(16)
            entry = await record("create", account_sid, call_sid, request)
            form = entry["form"]
            return JSONResponse(
                {"sid": call_sid, "account_sid": account_sid, "to": form.get("To"),
                 "from": form.get("From"), "status": "queued", "direction": "outbound-api",
                 "api_version": "2010-04-01",
                 "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"},
                status_code=201,
            )

        @app.post("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json")
        async def update_call(account_sid: str, call_sid: str, request: Request):
            form = (await record("update", account_sid, call_sid, request))["form"]
            return {"sid": call_sid, "account_sid": account_sid, "status": form.get("Status")}

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def of_kind(self, kind: str) -> list[dict]:
        """The requests of one kind (``create`` or ``update``), oldest first."""
        return [r for r in self.requests if r["kind"] == kind]

    def __enter__(self) -> "FakeTwilioRest":
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def server_pid(log: Path, timeout_s: float = 5.0) -> int:
    """The server process's id, from its start-up line in the log ("... (pid 1234, ...")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(r"\(pid (\d+),", log.read_text())
        if match:
            return int(match.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no pid in the server log:\n{log.read_text()[-2000:]}")


def trimmed_wav(folder: Path, seconds: float, source: str = "jfk_8k.wav") -> str:
    """The first ``seconds`` of a shared speech sample, written to ``folder`` as a WAV."""
    from offline.caller import load_wav_8k  # noqa: PLC0415 (numpy-heavy, only when used)

    pcm = load_wav_8k(AUDIO / source)[: int(seconds * 8000)]
    path = folder / f"{Path(source).stem}_first_{seconds:g}s.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm.tobytes())
    return str(path)


def speech_fraction(pcm: bytes, threshold_dbfs: float = -45.0) -> float:
    """Share of 20 ms frames (8 kHz PCM16) louder than ``threshold_dbfs``."""
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames**2, axis=1)) / 32768
    return float(np.mean(20 * np.log10(rms + 1e-9) > threshold_dbfs))
