"""The conversation we keep says only what the caller heard.

The model's text of a reply arrives ahead of its audio, so when the caller cuts the
agent off, the assistant context aggregator has already written more words than were
played. OpenAI Realtime is corrected on the server side (``conversation.item.truncate``
from the marks); Gemini Live has no such call, and its server keeps the whole reply in
the session it resumes. The context we keep is what a new session is seeded with when
it cannot resume (and what OpenAI gets replayed on a reconnect), so it must hold the
heard text: :class:`HeardContext` replaces an interrupted reply's message with the
words heard, once the aggregator has written it: when the next reply is reported
(finished or interrupted). A session re-seeded before then still gets the longer text.
"""

from __future__ import annotations

from pipecat.processors.aggregators.llm_context import LLMContext

from processors.barge_in import PlayoutTracker, Reply

__all__ = ["HeardContext"]


class HeardContext:
    """Keeps a call's LLM context to what the caller heard.

    Args:
        context: The call's LLM context (shared with the aggregators).
        playout: The call's playout tracker.
    """

    def __init__(self, context: LLMContext, playout: PlayoutTracker):
        self._context = context
        self._pending: list[Reply] = []
        playout.add_event_handler("on_reply_finished", self._on_reply_finished)

    async def _on_reply_finished(self, _tracker: PlayoutTracker, reply: Reply) -> None:
        self.apply()  # the aggregator has written the earlier replies by now
        if reply.interrupted:
            self._pending.append(reply)

    def apply(self) -> int:
        """Cut the messages of interrupted replies down to the words heard.

        Returns:
            How many messages were corrected.
        """
        corrected, still_pending = 0, []
        messages = self._context.get_messages()
        for reply in self._pending:
            heard, generated = reply.heard_text, reply.generated_text.strip()
            for message in reversed(messages):
                content = message.get("content") if isinstance(message, dict) else None
                if message.get("role") == "assistant" and isinstance(content, str) and content.strip():
                    if content.strip() != heard and generated.startswith(content.strip()[:20]):
                        message["content"] = heard
                        corrected += 1
                        break
            else:
                still_pending.append(reply)
        self._pending = still_pending
        return corrected
