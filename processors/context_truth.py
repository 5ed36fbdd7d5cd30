"""The conversation we keep says only what the caller heard.

Two ways the assistant context aggregator gets an interrupted reply wrong:

- Speech-to-speech models send a reply's text ahead of its audio, so when the caller
  cuts the agent off, the aggregator has written (or will write) more words than were
  played. OpenAI Realtime is corrected on the server side (``conversation.item.truncate``
  from the marks); Gemini Live has no such call, and its server keeps the whole reply
  in the session it resumes. The context we keep is what a new session is seeded with
  when it cannot resume (and what OpenAI gets replayed on a reconnect).
- In the cascade, text-to-speech releases a sentence's text only once its audio has
  been sent, so a reply cut off in its first sentence leaves no assistant message at
  all, and the LLM would not know it had spoken (it would greet the caller again).

:class:`HeardContext` fixes both the same way. When the playout tracker reports a reply
cut off, the words heard are added to the context at once as the assistant's message
(nothing when no word was heard). The aggregator's own message for that reply, written
before or after, is dropped once it is there: at once if it already was, else when the
next reply is reported (finished or interrupted); until then the context holds both.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.processors.aggregators.llm_context import LLMContext

from processors.barge_in import PlayoutTracker, Reply

__all__ = ["HeardContext"]


@dataclass
class _Pending:
    reply: Reply
    heard_message: dict | None  # the message we added with the words heard, if any


class HeardContext:
    """Keeps a call's LLM context to what the caller heard.

    Args:
        context: The call's LLM context (shared with the aggregators).
        playout: The call's playout tracker.
    """

    def __init__(self, context: LLMContext, playout: PlayoutTracker):
        self._context = context
        self._pending: list[_Pending] = []
        playout.add_event_handler("on_reply_finished", self._on_reply_finished)

    async def _on_reply_finished(self, _tracker: PlayoutTracker, reply: Reply) -> None:
        self.apply()  # the aggregator has written the earlier replies by now
        if reply.interrupted:
            heard = reply.heard_text
            message = {"role": "assistant", "content": heard} if heard else None
            if message is not None:
                self._context.add_message(message)
            self._pending.append(_Pending(reply, message))
            self.apply()  # the aggregator may have written this reply already

    def apply(self) -> int:
        """Settle interrupted replies: one assistant message each, holding the words heard.

        Returns:
            How many of the aggregator's messages were corrected or dropped.
        """
        corrected, still_pending = 0, []
        messages = self._context.get_messages()
        for pending in self._pending:
            if pending.heard_message is None:
                done = self._correct(messages, pending.reply)
            else:
                done = self._drop_duplicate(messages, pending)
            corrected += done is True
            if done is None:
                still_pending.append(pending)
        self._pending = still_pending
        return corrected

    @staticmethod
    def _written(message, generated: str) -> bool:
        """Whether a message is the aggregator's (possibly partial) text of a reply."""
        content = message.get("content") if isinstance(message, dict) else None
        return (
            message.get("role") == "assistant"
            and isinstance(content, str)
            and bool(content.strip())
            and generated.startswith(content.strip()[:20])
        )

    def _correct(self, messages: list, reply: Reply) -> bool | None:
        """No words were heard: cut the aggregator's message to the heard text (empty)."""
        heard, generated = reply.heard_text, reply.generated_text.strip()
        for message in reversed(messages):
            if self._written(message, generated):
                if message["content"].strip() == heard:
                    return None
                message["content"] = heard
                return True
        return None

    def _drop_duplicate(self, messages: list, pending: _Pending) -> bool | None:
        """Drop the aggregator's message of a reply whose heard words we added.

        The aggregator writes it just before ours or after it, before the caller's
        interrupting turn is added: a user message after ours settles the reply.
        """
        generated = pending.reply.generated_text.strip()
        ours = next((i for i, m in enumerate(messages) if m is pending.heard_message), None)
        if ours is None:
            return False  # the context was replaced (e.g. a new session): nothing to do
        candidates = list(range(max(0, ours - 1), len(messages)))
        for i in candidates:
            message = messages[i]
            if i > ours and message.get("role") == "user":
                return False
            if i != ours and self._written(message, generated):
                del messages[i]
                return True
        return None
