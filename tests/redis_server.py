"""A real Redis server for tests: Debian's ``redis-server`` on a free loopback port.

Started per test by :func:`redis_url`, with no persistence, and stopped after it.
``make test`` installs the package (the Makefile's ``test-deps`` target); a missing
binary fails the tests that need it, with a clear message, instead of skipping them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offline.server_process import free_port

__all__ = ["redis_url"]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a fresh redis-server, stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: run `make test` as root, or `sudo apt-get install redis-server`")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="redis-test-"))
    log = folder / "redis.log"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not _ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                pytest.fail(f"redis-server did not start:\n{text[-2000:]}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)
