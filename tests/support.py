"""Test support: the real server as a process, a fake of Twilio's REST API, audio checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"
TOKEN = "e2e-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "7" * 32


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(tmp: Path, **env_overrides: str):
    """Run ``python server.py`` on a free port; yield ``(base_url, log_path)``.

    Args:
        tmp: Folder for the database and the log.
        **env_overrides: Environment variables for the server.
    """
    port = free_port()
    log = tmp / "server.log"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "CALLS_DB_PATH": str(tmp / "calls.db"),
        "AGENT_PROVIDER": "local",
        "LOG_LEVEL": "INFO",
    }
    for key in ("GOOGLE_API_KEY", "OPENAI_API_KEY", "LOCAL_AGENT_BASE_URL", "TWILIO_ACCOUNT_SID"):
        env.pop(key, None)
    env.update(env_overrides)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "server.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


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
