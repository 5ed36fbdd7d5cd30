"""Test support: the real server as a process, a fake of Twilio's REST API, audio checks."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request

from offline.server_process import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"
TOKEN = "e2e-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "7" * 32


@contextmanager
def running_server(tmp: Path, **env_overrides: str):
    """The real server process, signed webhooks on; yields ``(base_url, log_path)``.

    Args:
        tmp: Folder for the database and the log.
        **env_overrides: Environment variables for the server.
    """
    try:
        with server_process(tmp, TWILIO_AUTH_TOKEN=TOKEN, **env_overrides) as running:
            yield running
    except RuntimeError as e:
        pytest.fail(str(e))


class FakeTwilioRest:
    """A local stand-in for api.twilio.com's Call resource, recording every request."""

    def __init__(self):
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json")
        async def update_call(account_sid: str, call_sid: str, request: Request):
            form = dict(await request.form())
            self.requests.append(
                {"account_sid": account_sid, "call_sid": call_sid, "form": form,
                 "authorization": request.headers.get("authorization")}
            )
            return {"sid": call_sid, "account_sid": account_sid, "status": form.get("Status")}

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "FakeTwilioRest":
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def speech_fraction(pcm: bytes, threshold_dbfs: float = -45.0) -> float:
    """Share of 20 ms frames (8 kHz PCM16) louder than ``threshold_dbfs``."""
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames**2, axis=1)) / 32768
    return float(np.mean(20 * np.log10(rms + 1e-9) > threshold_dbfs))
