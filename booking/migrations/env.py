"""Alembic environment of the booking store (async engines: aiosqlite, asyncpg).

The URL is the ``sqlalchemy.url`` main option when set (``booking.db.migrate`` sets
it), else ``DATABASE_URL``, else the default SQLite file; see :mod:`booking.db`.

How it runs is shared with the other store: :func:`migrations_env.run_env`.
"""

from __future__ import annotations

from booking.db import create_engine, database_url
from booking.models import Base
from migrations_env import run_env

run_env(Base.metadata, database_url, create_engine)
