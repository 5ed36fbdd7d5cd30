"""Database URLs, async engines and migrations of the booking store.

The URL comes from the caller, else ``DATABASE_URL``, else ``sqlite+aiosqlite:///booking.db``.
Plain driver-less URLs are given their async driver: ``sqlite:///x.db`` becomes
``sqlite+aiosqlite:///x.db`` and ``postgresql://`` / ``postgres://`` become
``postgresql+asyncpg://`` (asyncpg is pinned in ``pyproject.toml``; the booking
tests run against SQLite and a real PostgreSQL server).

Migrations are Alembic's, in ``booking/migrations``. :func:`migrate` runs
``alembic upgrade head`` programmatically; from a shell the same is
``.venv/bin/alembic upgrade head`` (``alembic.ini`` at the project root, URL from
``DATABASE_URL``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from loguru import logger
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = [
    "DEFAULT_DATABASE_URL",
    "MIGRATIONS_DIR",
    "create_engine",
    "database_url",
    "migrate",
    "migrate_async",
]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///booking.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
}


def database_url(url: str | None = None) -> str:
    """The database URL to use, with an async driver.

    Args:
        url: An explicit URL; default ``DATABASE_URL``, then :data:`DEFAULT_DATABASE_URL`.

    Returns:
        The URL, its scheme given an async driver if it had none.

    Raises:
        sqlalchemy.exc.ArgumentError: If the URL cannot be parsed.
    """
    chosen = url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    scheme, sep, rest = chosen.partition("://")
    if sep and scheme in _ASYNC_DRIVERS:
        chosen = f"{_ASYNC_DRIVERS[scheme]}://{rest}"
    make_url(chosen)  # fail early on a malformed URL
    return chosen


def create_engine(url: str | None = None, **kwargs) -> AsyncEngine:
    """Create an async engine for the booking database.

    SQLite connections get ``PRAGMA foreign_keys=ON``.

    Args:
        url: Database URL (see :func:`database_url`).
        **kwargs: Passed to ``create_async_engine``.

    Returns:
        The engine (dispose it when done).

    Raises:
        ModuleNotFoundError: If the URL's driver (e.g. asyncpg) is not installed.
    """
    resolved = database_url(url)
    engine = create_async_engine(resolved, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for the booking migrations, independent of the cwd.

    Args:
        url: Database URL (see :func:`database_url`).

    Returns:
        The configuration, ``sqlalchemy.url`` set.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%', which URL-encoded passwords contain.
    config.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return config


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` on the database. Blocks until done.

    Safe to call from inside a running event loop (the migration then runs in a
    worker thread, since Alembic's async environment starts its own loop); prefer
    :func:`migrate_async` there.

    Args:
        url: Database URL (see :func:`database_url`).
        revision: Target revision.

    Raises:
        Exception: Whatever Alembic or the database raise.
    """
    config = alembic_config(url)
    logger.info(f"migrating booking database to {revision}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(config, revision)
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            command.upgrade(config, revision)
        except BaseException as e:  # re-raised in the calling thread
            errors.append(e)

    worker = threading.Thread(target=run, name="booking-migrate")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


async def migrate_async(url: str | None = None, revision: str = "head") -> None:
    """:func:`migrate` without blocking the event loop.

    Args:
        url: Database URL (see :func:`database_url`).
        revision: Target revision.
    """
    await asyncio.to_thread(migrate, url, revision)
