"""The kept conversation holds what the caller heard of an interrupted reply."""

import pytest

from pipecat.processors.aggregators.llm_context import LLMContext
from processors.barge_in import PlayoutTracker, Reply
from processors.context_truth import HeardContext

TEXT = "Hello, and thank you for calling the Grand Harbor Hotel front desk. How can I help?"


def _interrupted_reply() -> Reply:
    reply = Reply(reply_id=1, generated_text=TEXT, interrupted=True, sent_ms=2000, played_ms=2000)
    reply.audio = bytearray(8000 * 2 * 8)  # 8 s generated, 2 s heard
    return reply


@pytest.mark.asyncio
async def test_an_interrupted_reply_is_cut_to_the_words_heard_once_written():
    context = LLMContext(messages=[{"role": "user", "content": "Greet the caller."}])
    heard = HeardContext(context, PlayoutTracker("MZ"))
    reply = _interrupted_reply()
    await heard._on_reply_finished(None, reply)
    assert heard.apply() == 0  # the aggregator has not written it yet: kept pending
    context.add_message({"role": "assistant", "content": TEXT})
    assert heard.apply() == 1
    assert context.get_messages()[-1]["content"] == reply.heard_text
    assert reply.heard_text and len(reply.heard_text) < len(TEXT)
    assert heard.apply() == 0  # done once


@pytest.mark.asyncio
async def test_a_reply_heard_to_its_end_is_left_alone():
    context = LLMContext(messages=[{"role": "assistant", "content": TEXT}])
    heard = HeardContext(context, PlayoutTracker("MZ"))
    reply = _interrupted_reply()
    reply.interrupted = False
    await heard._on_reply_finished(None, reply)
    assert heard.apply() == 0 and context.get_messages()[-1]["content"] == TEXT
