"""The booking backend: customers, hotels, rooms and bookings in SQL (SQLAlchemy 2.x).

- :mod:`booking.models`: the tables.
- :mod:`booking.db`: URLs, async engines, Alembic migrations (:func:`booking.db.migrate`).
- :mod:`booking.store`: :class:`booking.store.BookingStore`, the operations the tools use.
- :mod:`booking.demo`: ``python -m booking.demo`` loads demo data.
"""
