"""Alembic environment of the call records (async engines: aiosqlite, asyncpg).

The URL is the ``sqlalchemy.url`` main option when set (``records.db.migrate`` sets
it), else as :func:`records.db.records_url` chooses (PostgreSQL ``DATABASE_URL``, else
``CALLS_DB_PATH``). The version table is ``records_alembic_version``, so the records
and the booking store can share one PostgreSQL database.

How it runs is shared with the other store: :func:`migrations_env.run_env`.
"""

from __future__ import annotations

from migrations_env import run_env
from records.db import VERSION_TABLE, create_engine, records_url
from records.models import Base

run_env(Base.metadata, records_url, create_engine, version_table=VERSION_TABLE)
