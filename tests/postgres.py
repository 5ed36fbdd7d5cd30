"""A real PostgreSQL server for tests: Debian's ``postgresql`` binaries, a throwaway cluster.

The cluster lives in a temporary folder, listens on 127.0.0.1 on a free port with
``trust`` authentication, and is stopped at the end of the test session. Each test that
asks for :func:`postgres_url` gets a fresh, empty database on it.

PostgreSQL refuses to run as root (``initdb``: "cannot be run as root"), so when the
tests run as root the server runs as the ``postgres`` user that Debian's package
creates, through ``runuser``.

The binaries are installed by ``make test`` (the Makefile's ``postgresql`` target). A
missing server fails the tests that need it with a clear message instead of skipping
them, so a green run always means PostgreSQL was exercised.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offline.server_process import free_port

__all__ = ["PostgresServer", "find_pg_bin"]


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, newest major version first, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1.

    Args:
        bin_dir: Folder with ``initdb``, ``pg_ctl`` and ``createdb``.

    Raises:
        RuntimeError: If the cluster cannot be created or started (stderr included).
    """

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))
        self.data = self.root / "data"
        self._user = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def start(self) -> None:
        """Create the cluster and start the server; returns once it accepts connections."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "start")

    def create_database(self) -> str:
        """Create an empty database; returns its ``postgresql+asyncpg://`` URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the cluster."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed: run `make test` (it installs Debian's "
                    "postgresql) or `sudo apt-get install postgresql`")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except RuntimeError as e:
        server.stop()
        pytest.fail(f"could not start PostgreSQL: {e}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL (``postgresql+asyncpg://...``) of a fresh, empty database on a real PostgreSQL."""
    return postgres_server.create_database()
