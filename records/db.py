"""Where the call records live, their async engine, and their migrations.

Which database (:func:`records_url`):

- ``DATABASE_URL`` naming PostgreSQL: the records share that database with the booking
  store (their own tables and their own Alembic version table,
  ``records_alembic_version``), so every server process writes to one place;
- otherwise (the default): the SQLite file ``CALLS_DB_PATH`` (``calls.db``), apart from
  the booking store's file, so call records and bookings never wait on each other's
  writes.

Migrations are Alembic's, in ``records/migrations`` (an environment of their own: the
booking store keeps its own in ``booking/migrations``). :func:`migrate_async` runs
``alembic upgrade head`` from the server's start-up; from a shell the same is
``.venv/bin/alembic -n records upgrade head`` (the ``[records]`` section of
``alembic.ini``; URL from ``DATABASE_URL`` / ``CALLS_DB_PATH`` as above).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from loguru import logger
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from booking.db import database_url

__all__ = ["MIGRATIONS_DIR", "VERSION_TABLE", "create_engine", "migrate", "migrate_async", "records_url"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Alembic's version table for the records (the booking store uses ``alembic_version``).
VERSION_TABLE = "records_alembic_version"
#: How long a SQLite writer waits for another's lock before failing, in s.
SQLITE_BUSY_TIMEOUT_S = 10.0


def records_url(
    target: str | None = None, *, database_url_env: str | None = None, sqlite_path: str | None = None
) -> str:
    """The async database URL of the call records.

    Args:
        target: A database URL (``scheme://...``) or a SQLite file path (or
            ``:memory:``). None: PostgreSQL ``DATABASE_URL`` if set, else
            ``CALLS_DB_PATH``, else ``calls.db``.
        database_url_env: ``DATABASE_URL`` to consider instead of the environment's.
        sqlite_path: ``CALLS_DB_PATH`` to use instead of the environment's.

    Returns:
        The URL with an async driver (``sqlite+aiosqlite``, ``postgresql+asyncpg``).

    Raises:
        sqlalchemy.exc.ArgumentError: If the URL cannot be parsed.
    """
    if target is None:
        shared = database_url_env if database_url_env is not None else os.environ.get("DATABASE_URL")
        if shared and database_url(shared).startswith("postgresql"):
            return database_url(shared)
        target = sqlite_path or os.environ.get("CALLS_DB_PATH") or "calls.db"
    if "://" in target:
        return database_url(target)
    if target != ":memory:":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{target}"
    make_url(url)
    return url


def create_engine(url: str, **kwargs) -> AsyncEngine:
    """Create an async engine for the call records.

    A SQLite database gets one pooled connection (``pool_size=1``): SQLite takes one
    writer at a time anyway, each write is a short transaction, and aiosqlite runs a
    thread per connection, so one connection keeps the process's thread count fixed
    however many calls write at once. Its connections get WAL mode,
    ``synchronous=NORMAL`` (a commit survives a process crash; a power cut may lose the
    last ones), foreign keys on, and a busy timeout of :data:`SQLITE_BUSY_TIMEOUT_S`.

    Args:
        url: An async URL from :func:`records_url`.
        **kwargs: Passed to ``create_async_engine``.

    Returns:
        The engine (dispose it when done).

    Raises:
        ModuleNotFoundError: If the URL's driver (e.g. asyncpg) is not installed.
    """
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
        if "poolclass" not in kwargs and ":memory:" not in url:
            kwargs.setdefault("pool_size", 1)
            kwargs.setdefault("max_overflow", 0)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the records' migrations, independent of the cwd.

    Args:
        url: An async URL from :func:`records_url`.

    Returns:
        The configuration, ``sqlalchemy.url`` set.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` on the records' database. Blocks; not in an event loop.

    Args:
        url: An async URL from :func:`records_url`.
        revision: Target revision.

    Raises:
        Exception: Whatever Alembic or the database raise.
    """
    logger.info(f"migrating call records database to {revision}")
    command.upgrade(alembic_config(url), revision)


async def migrate_async(url: str, revision: str = "head") -> None:
    """:func:`migrate` in a worker thread (the Alembic environment runs its own event loop).

    Args:
        url: An async URL from :func:`records_url`.
        revision: Target revision.
    """
    await asyncio.to_thread(migrate, url, revision)
