"""What the Alembic environments of the booking store and the call records share.

Each store keeps its own migrations folder and ``env.py`` (its models, its URL, its
version table); both run the same way, through :func:`run_env`: offline (``alembic
upgrade head --sql``) by emitting SQL, online through the store's async engine
(aiosqlite or asyncpg) with a ``NullPool``. ``render_as_batch`` lets SQLite alter
tables by copying them. Source: https://alembic.sqlalchemy.org/en/latest/cookbook.html
("Using Asyncio with Alembic").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

__all__ = ["run_env"]


def run_env(
    metadata: MetaData,
    resolve_url: Callable[[str | None], str],
    create_engine: Callable[..., AsyncEngine],
    **configure: Any,
) -> None:
    """Run the current Alembic command (called from a store's ``env.py``).

    Args:
        metadata: The store's models' metadata (for autogenerate and type checks).
        resolve_url: Turns the ``sqlalchemy.url`` main option (or None) into the
            async URL to migrate.
        create_engine: The store's engine factory, called as ``create_engine(url,
            poolclass=NullPool)``.
        **configure: More ``context.configure`` options (e.g. ``version_table``).
    """
    config = context.config
    if config.config_file_name is not None:  # the alembic CLI, with alembic.ini's logging
        fileConfig(config.config_file_name)
    url = resolve_url(config.get_main_option("sqlalchemy.url") or None)
    options = {"target_metadata": metadata, "render_as_batch": True, "compare_type": True, **configure}

    def run_sync(connection) -> None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()

    async def run_online() -> None:
        engine = create_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run_sync)
                await connection.commit()
        finally:
            await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **options)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run_online())
