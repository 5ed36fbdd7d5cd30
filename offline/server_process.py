"""Run the real server (``python server.py``) as a child process on a free loopback port.

Used by the end-to-end tests and the benchmarks, so both drive exactly what
``make run`` starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["free_port", "server_process", "serving"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(
    command: list[str], url: str, log: Path, *, name: str, start_timeout_s: float = 60.0, **popen
) -> Iterator[subprocess.Popen]:
    """Run a server program for the block's duration, once its ``GET /health`` answers 200.

    Args:
        command: The program and its arguments.
        url: Its base URL, polled every 0.2 s.
        log: Where its output goes (quoted when it fails to start).
        name: What to call it in the error.
        start_timeout_s: How long to wait for ``/health``, in s.
        **popen: Passed to :class:`subprocess.Popen` (``cwd``, ``env``, ``stdout``, ...).

    Yields:
        The process; it is terminated (killed after 10 s) when the block ends.

    Raises:
        RuntimeError: If it exits or does not answer in time (with the end of its log).
    """
    process = subprocess.Popen(command, **popen)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"{name} did not start:\n{text[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def server_process(
    workdir: Path, *, start_timeout_s: float = 60.0, **env_overrides: str
) -> Iterator[tuple[str, Path]]:
    """Start the server with the offline agent; yield ``(base_url, log_path)``.

    Args:
        workdir: Folder for the call database and the server's log.
        start_timeout_s: How long to wait for ``GET /health`` to answer, in s.
        **env_overrides: Environment variables for the server (they win).

    Raises:
        RuntimeError: If the server exits or does not answer in time (with its log).
    """
    port = free_port()
    log = workdir / "server.log"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "CALLS_DB_PATH": str(workdir / "calls.db"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'booking.db'}",
        "AGENT_PROVIDER": "local",
        "LOG_LEVEL": "INFO",
    }
    for key in ("GOOGLE_API_KEY", "OPENAI_API_KEY", "LOCAL_AGENT_BASE_URL", "TWILIO_ACCOUNT_SID",
                "TWILIO_AUTH_TOKEN"):
        env.pop(key, None)
    env.update(env_overrides)
    with open(log, "w") as out, serving(
        [sys.executable, "server.py"], f"http://127.0.0.1:{port}", log, name="server",
        start_timeout_s=start_timeout_s, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    ):
        yield f"http://127.0.0.1:{port}", log
