"""Alembic environment of the call records (async engines: aiosqlite, asyncpg).

The URL is the ``sqlalchemy.url`` main option when set (``records.db.migrate`` sets
it), else as :func:`records.db.records_url` chooses (PostgreSQL ``DATABASE_URL``, else
``CALLS_DB_PATH``). The version table is ``records_alembic_version``, so the records
and the booking store can share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

from records.db import VERSION_TABLE, create_engine, records_url
from records.models import Base

config = context.config
if config.config_file_name is not None:  # the alembic CLI, with alembic.ini's logging
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def _url() -> str:
    return records_url(config.get_main_option("sqlalchemy.url") or None)


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
        version_table=VERSION_TABLE,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit the SQL without connecting (``alembic upgrade head --sql``)."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    """Connect with the async engine and run the migrations."""
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
