"""Live call events: an in-process bus, fanned out through Redis pub/sub when ``REDIS_URL`` is set.

The call-record store (:mod:`records.store`) tells the bus each thing it records, as
it commits it; ``WS /events`` (``dashboard.py``) streams them to browsers. Every event
is a JSON object with ``type``, ``call_sid`` and ``at`` (ISO 8601 UTC, ms), and:

- ``call_started``: ``stream_sid``, ``from``, ``to``, ``provider``, ``direction``;
- ``turn``: ``role`` (``user``/``assistant``), ``text``, ``started_at``, ``ended_at``,
  ``interrupted``; the agent's also ``audio_played_ms``, ``generated_text`` and
  ``latency_ms`` (caller stopped -> first agent audio sent, ms);
- ``interruption``: the caller cut the agent off: ``audio_played_ms``, ``heard_text``,
  ``generated_text``;
- ``tool_call``: ``name``, ``arguments``, ``result``, ``error``, ``duration_ms``,
  ``started_at``;
- ``status``: a status change (Twilio's callbacks, our ``queued``/``refused``):
  ``status``, ``sequence_number``;
- ``answered_by``: answering machine detection's verdict;
- ``call_ended``: ``end_reason``.

The bus adds ``origin`` (the publishing process, ``host:pid``) and ``seq`` (its counter).

With several server processes, each publishes to the Redis channel
:data:`CHANNEL` and every process delivers what arrives on it to its own subscribers,
so an ``/events`` client of any process sees every call. Without ``REDIS_URL`` events
are delivered in-process. Events are live information only: delivery is at most
once (a slow subscriber's oldest events are dropped; events published while Redis is
unreachable are lost); the call records are the truth.

Redis pub/sub semantics: https://redis.io/docs/latest/develop/interact/pubsub/
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from loguru import logger

__all__ = ["CHANNEL", "EventBus", "SUBSCRIBER_QUEUE"]

#: The Redis channel the server processes share.
CHANNEL = "phone-agent:events"
#: Events a subscriber may fall behind by before its oldest are dropped.
SUBSCRIBER_QUEUE = 1000
#: Events waiting to go to Redis before the oldest are dropped.
OUTBOX_QUEUE = 10000
#: Wait between attempts to reach Redis, in s.
RECONNECT_SECS = 1.0


class EventBus:
    """Publishes call events to this process's subscribers, through Redis when configured.

    Args:
        redis_url: ``redis://host:port/db``; None delivers in-process only.
    """

    def __init__(self, redis_url: str | None = None):
        self.redis_url = redis_url or None
        self.origin = f"{socket.gethostname()}:{os.getpid()}"
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue] = set()
        self._outbox: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._redis = None
        self._listening = asyncio.Event()

    async def start(self) -> None:
        """Connect to Redis and start relaying (no-op without ``redis_url``).

        The first subscription is awaited (up to 5 s) so events published right
        after start-up are not missed; if Redis is unreachable the bus keeps trying
        in the background and logs it.
        """
        if not self.redis_url:
            return
        from redis.asyncio import Redis

        self._redis = Redis.from_url(self.redis_url)
        self._outbox = asyncio.Queue(maxsize=OUTBOX_QUEUE)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="events-redis-send"),
            asyncio.create_task(self._receive_loop(), name="events-redis-receive"),
        ]
        try:
            await asyncio.wait_for(self._listening.wait(), 5.0)
        except TimeoutError:
            logger.warning(f"events: Redis at {_safe(self.redis_url)} not reachable yet; retrying")

    async def stop(self) -> None:
        """Send what is queued for Redis (up to 2 s), then stop relaying and disconnect."""
        if self._outbox is not None and not self._outbox.empty():
            try:
                await asyncio.wait_for(self._outbox.join(), 2.0)
            except TimeoutError:
                logger.warning(f"events: {self._outbox.qsize()} event(s) not sent to Redis at shutdown")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def publish(self, event: dict[str, Any]) -> None:
        """Publish one event; never blocks and never raises for a delivery problem.

        Args:
            event: A JSON-ready dict with ``type`` and ``call_sid`` (see the module doc).
        """
        event = {**event, "origin": self.origin, "seq": next(self._seq)}
        if self._outbox is None:
            self._deliver(event)
            return
        if self._outbox.full():
            self._outbox.get_nowait()
            self._outbox.task_done()
            logger.warning("events: Redis outbox full; dropped the oldest event")
        self._outbox.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue]:
        """Receive every event published from now on, in a queue of dicts.

        Yields:
            A queue; if its reader falls :data:`SUBSCRIBER_QUEUE` events behind, the
            oldest are dropped.
        """
        queue: asyncio.Queue = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def subscriber_count(self) -> int:
        """How many subscribers this process has now."""
        return len(self._subscribers)

    def _deliver(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()  # the slow reader loses its oldest event
            queue.put_nowait(event)

    async def _send_loop(self) -> None:
        assert self._outbox is not None and self._redis is not None
        while True:
            event = await self._outbox.get()
            try:
                while True:
                    try:
                        await self._redis.publish(CHANNEL, json.dumps(event, default=str))
                        break
                    except Exception as e:  # redis.exceptions.ConnectionError and kin
                        logger.warning(f"events: publishing to Redis failed ({e}); retrying")
                        await asyncio.sleep(RECONNECT_SECS)
            finally:
                self._outbox.task_done()

    async def _receive_loop(self) -> None:
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._listening.set()
                logger.info(f"events: relaying through Redis at {_safe(self.redis_url)} ({CHANNEL})")
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        event = json.loads(message["data"])
                    except (TypeError, ValueError):
                        logger.warning("events: ignoring a message on the channel that is not JSON")
                        continue
                    if isinstance(event, dict):
                        self._deliver(event)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning(f"events: Redis subscription lost ({e}); reconnecting")
                await asyncio.sleep(RECONNECT_SECS)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass


def _safe(url: str | None) -> str:
    """The URL without its password, for logs."""
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://[redacted]@{rest.rpartition('@')[2]}"
