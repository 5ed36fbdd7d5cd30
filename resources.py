"""What the server shares across calls: stores, tools, the offline agents, canned audio.

Started once by the server's lifespan (:meth:`Resources.start`) and handed to every
call (``bot.run_bot``); stopped at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger

from agent_settings import AgentSettings
from config import Settings
from events import EventBus
from pipelines.cascade_services import CascadeSettings
from processors.twilio_serializer import TWILIO_SAMPLE_RATE
from records import CallStore
from records.db import records_url
from tools.registry import ToolRegistry

__all__ = ["APOLOGY_TEXT", "Resources"]

#: What the caller hears if the model fails mid-call (rendered once at start-up).
APOLOGY_TEXT = "I'm sorry, I'm having trouble right now. Please call again in a few minutes. Goodbye."


@dataclass
class Resources:
    """Shared by all calls of one server process.

    Parameters:
        settings: The server's settings.
        store: The call-record store (its listeners publish to ``events``).
        agent: The tools' and call control's settings.
        booking: The booking store (:class:`booking.store.BookingStore`), or None.
        tools: The tool registry every call's agent may use (MCP tools join it once
            their servers answer).
        mcp: One background connection per configured MCP server.
        local_agent_url: The offline agent's URL (provider ``local``), or None.
        cascade: The cascade graph's settings.
        local_openai_url: The offline OpenAI HTTP server's ``base_url`` (the cascade
            without ``OPENAI_API_KEY``), or None.
        apology_pcm: ``APOLOGY_TEXT`` as 16-bit PCM at 8000 Hz, or None without espeak-ng.
        ack_pcm: ``agent.TOOL_ACK_TEXT`` as 16-bit PCM at 8000 Hz, or None.
        events: The live event bus (in-process, or through Redis with ``REDIS_URL``).
    """

    settings: Settings
    store: CallStore
    agent: AgentSettings | None = None
    booking: object | None = None
    tools: ToolRegistry | None = None
    mcp: list = field(default_factory=list)
    local_agent_url: str | None = None
    cascade: object | None = None
    local_openai_url: str | None = None
    apology_pcm: bytes | None = None
    ack_pcm: bytes | None = None
    events: EventBus | None = None
    _local_agent: object | None = None
    _local_openai: object | None = None

    @classmethod
    async def start(cls, settings: Settings) -> "Resources":
        """Open the stores and start what the provider needs offline.

        Args:
            settings: The server's settings.

        Returns:
            The running resources.
        """
        agent_settings = AgentSettings()
        # PostgreSQL DATABASE_URL: records beside the bookings; else SQLite CALLS_DB_PATH.
        store = await CallStore.open(records_url(
            database_url_env=agent_settings.DATABASE_URL, sqlite_path=settings.CALLS_DB_PATH))
        resources = cls(settings=settings, store=store, agent=agent_settings,
                        events=EventBus(settings.REDIS_URL))
        await resources.events.start()
        store.listeners.append(resources.events.publish)
        resources.local_agent_url = settings.LOCAL_AGENT_BASE_URL
        if settings.provider == "local" and not settings.LOCAL_AGENT_BASE_URL:
            from offline.realtime_server import OfflineRealtimeServer

            agent = OfflineRealtimeServer(
                response_delay_ms=settings.LOCAL_AGENT_DELAY_MS,
                event_log=settings.LOCAL_AGENT_EVENT_LOG,
                cancel_lag_ms=settings.LOCAL_AGENT_CANCEL_LAG_MS,
            )
            await agent.start()
            resources._local_agent = agent
            resources.local_agent_url = agent.url
            logger.info(f"offline agent listening at {agent.url}")
        resources.cascade = CascadeSettings()
        if not settings.OPENAI_API_KEY:
            from offline.openai_server import OfflineOpenAIServer

            server = OfflineOpenAIServer(
                response_delay_ms=settings.LOCAL_AGENT_DELAY_MS,
                event_log=resources.cascade.LOCAL_OPENAI_EVENT_LOG,
            )
            await server.start()
            resources._local_openai = server
            resources.local_openai_url = server.url
        resources.booking, resources.tools = await _start_tools(resources.agent)
        if resources.agent.MCP_SERVERS:
            from tools.mcp_tools import start_mcp_sources

            resources.mcp = start_mcp_sources(resources.agent.MCP_SERVERS, resources.tools)
        resources.apology_pcm = await _render(APOLOGY_TEXT)
        resources.ack_pcm = await _render(resources.agent.TOOL_ACK_TEXT)
        return resources

    async def stop(self) -> None:
        """Stop the MCP connections and the offline servers; close the stores and the event bus."""
        for source in self.mcp:
            await source.stop()
        if self._local_agent is not None:
            await self._local_agent.stop()
        if self._local_openai is not None:
            await self._local_openai.stop()
        if self.booking is not None:
            await self.booking.close()
        await self.store.close()
        if self.events is not None:
            await self.events.stop()


async def _start_tools(agent: AgentSettings) -> tuple[object, ToolRegistry]:
    """Migrate and open the booking store; build the registry (booking + webhook tools)."""
    from booking.db import migrate_async
    from booking.demo import load_demo
    from booking.store import BookingStore
    from tools.booking_tools import booking_registry
    from tools.http_tool import add_http_tools

    await migrate_async(agent.DATABASE_URL)
    booking = BookingStore.from_url(agent.DATABASE_URL)
    if agent.LOAD_DEMO_DATA:
        added = await load_demo(booking)
        if any(added.values()):
            logger.info(f"booking demo data loaded: {added}")
    registry = booking_registry()
    if agent.TOOL_WEBHOOKS:
        logger.info(f"webhook tools: {add_http_tools(registry, agent.TOOL_WEBHOOKS)}")
    return booking, registry


async def _render(text: str) -> bytes | None:
    try:
        from offline.tts import synthesize_async

        return await synthesize_async(text, sample_rate=TWILIO_SAMPLE_RATE)
    except Exception as e:  # espeak-ng missing: the call still ends, just without words
        logger.warning(f"could not render {text[:30]!r}... ({e}); failures will end calls silently")
        return None
