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


def test_heard_words_are_cut_at_a_word_in_english_and_a_character_in_japanese():
    from processors.barge_in import heard_text

    assert heard_text("Hello there my friend", 500, 1000) == "Hello"  # "there" was cut in two
    assert heard_text("Hello there my friend", 600, 1000) == "Hello there"
    japanese = "お電話ありがとうございます。"  # 14 characters, no spaces
    assert heard_text(japanese, 500, 1000) == japanese[:7]
    assert heard_text(japanese, 1000, 1000) == japanese


@pytest.mark.asyncio
async def test_a_reply_cut_off_before_the_aggregator_wrote_anything_is_in_the_context():
    """The cascade: text-to-speech had released no text when the caller cut in."""
    context = LLMContext(messages=[{"role": "user", "content": "Greet the caller."}])
    heard = HeardContext(context, PlayoutTracker("MZ"))
    reply = _interrupted_reply()
    await heard._on_reply_finished(None, reply)
    assert context.get_messages()[-1] == {"role": "assistant", "content": reply.heard_text}
    context.add_message({"role": "user", "content": "[caller spoke 1.0 s]"})
    assert heard.apply() == 0 and len(context.get_messages()) == 3  # nothing else to settle


@pytest.mark.asyncio
async def test_the_aggregators_own_message_of_a_cut_off_reply_is_dropped():
    context = LLMContext(messages=[{"role": "user", "content": "Greet the caller."}])
    heard = HeardContext(context, PlayoutTracker("MZ"))
    reply = _interrupted_reply()
    await heard._on_reply_finished(None, reply)
    context.add_message({"role": "assistant", "content": "Hello, and thank you for calling"})  # written later
    assert heard.apply() == 1
    assert [m["content"] for m in context.get_messages()] == ["Greet the caller.", reply.heard_text]
