"""What the server shares across calls: stores, the offline agents, pre-rendered audio.

Started once by the server's lifespan (:meth:`Resources.start`) and handed to every
call (``bot.run_bot``); stopped at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from config import Settings
from processors.twilio_serializer import TWILIO_SAMPLE_RATE
from records import CallStore

__all__ = ["APOLOGY_TEXT", "Resources"]

#: What the caller hears if the model fails mid-call (rendered once at start-up).
APOLOGY_TEXT = "I'm sorry, I'm having trouble right now. Please call again in a few minutes. Goodbye."


@dataclass
class Resources:
    """Shared by all calls of one server process.

    Parameters:
        settings: The server's settings.
        store: The call-record store.
        local_agent_url: The offline agent's URL (provider ``local``), or None.
        apology_pcm: ``APOLOGY_TEXT`` as 16-bit PCM at 8000 Hz, or None without espeak-ng.
    """

    settings: Settings
    store: CallStore
    local_agent_url: str | None = None
    apology_pcm: bytes | None = None
    _local_agent: object | None = None

    @classmethod
    async def start(cls, settings: Settings) -> "Resources":
        """Open the stores and start what the provider needs offline.

        Args:
            settings: The server's settings.

        Returns:
            The running resources.
        """
        resources = cls(settings=settings, store=CallStore(settings.CALLS_DB_PATH))
        resources.local_agent_url = settings.LOCAL_AGENT_BASE_URL
        if settings.provider == "local" and not settings.LOCAL_AGENT_BASE_URL:
            from offline.realtime_server import OfflineRealtimeServer

            agent = OfflineRealtimeServer(
                response_delay_ms=settings.LOCAL_AGENT_DELAY_MS,
                event_log=settings.LOCAL_AGENT_EVENT_LOG,
            )
            await agent.start()
            resources._local_agent = agent
            resources.local_agent_url = agent.url
            logger.info(f"offline agent listening at {agent.url}")
        resources.apology_pcm = await _render(APOLOGY_TEXT)
        return resources

    async def stop(self) -> None:
        """Stop the offline agent and close the stores."""
        if self._local_agent is not None:
            await self._local_agent.stop()
        self.store.close()


async def _render(text: str) -> bytes | None:
    try:
        from offline.tts import synthesize_async

        return await synthesize_async(text, sample_rate=TWILIO_SAMPLE_RATE)
    except Exception as e:  # espeak-ng missing: the call still ends, just without words
        logger.warning(f"could not render {text[:30]!r}... ({e}); failures will end calls silently")
        return None
