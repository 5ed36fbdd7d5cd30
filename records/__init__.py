"""Call records: what happened on each call, kept in SQLite or PostgreSQL.

- :mod:`records.models`: the tables (SQLAlchemy 2.x).
- :mod:`records.db`: which database, its async engine, Alembic migrations
  (``records/migrations``).
- :mod:`records.store`: :class:`CallStore`, written turn by turn as calls happen.
- :mod:`records.export`: a call as JSON or as plain text.
"""

from records.store import TERMINAL_STATUSES, CallStore, parse_time, utc_now

__all__ = ["CallStore", "TERMINAL_STATUSES", "parse_time", "utc_now"]
