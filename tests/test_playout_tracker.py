"""The playout tracker over overlapping replies: what the record says each one played.

A reply can be fully sent while Twilio still plays it when the next one begins: the
spoken "one moment" of a slow tool, then the tool's answer. Twilio plays them in order,
echoing each one's marks, so each must be reported with its own words and audio, and a
barge-in then cuts both.
"""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.text.base_text_aggregator import TextType

from processors.barge_in import PlayoutTracker

PAUSE = SleepFrame(sleep=0.05)


def _reply(text: str, ms: int) -> list:
    audio = b"\x10\x00" * (8 * ms)  # 16-bit PCM at 8000 Hz
    return [TTSStartedFrame(), TTSTextFrame(text, text_type=TextType.SENTENCE),
            TTSAudioRawFrame(audio, 8000, 1), TTSStoppedFrame(), PAUSE]


def _echo(reply_id: int, *positions_ms: int) -> list:
    frames = []
    for ms in positions_ms:
        message = {"event": "mark", "streamSid": "MZ1", "mark": {"name": f"r{reply_id}:{ms}"}}
        frames += [InputTransportMessageFrame(message=message), PAUSE]
    return frames


async def _run(frames: list, marks: list | None = None) -> list:
    tracker = PlayoutTracker("MZ1")
    finished = []

    @tracker.event_handler("on_reply_finished")
    async def on_reply_finished(_tracker, reply):
        finished.append(reply)

    down, _up = await run_test(tracker, frames_to_send=frames)
    if marks is not None:
        marks += [f.message["mark"]["name"] for f in down if isinstance(f, OutputTransportMessageFrame)]
    return finished


@pytest.mark.asyncio
async def test_marks_every_60_ms_and_after_the_last_frame():
    marks: list[str] = []
    await _run(_reply("Hello there.", 210) + _reply("Yes.", 120), marks)
    # 210 ms -> 11 frames of 20 ms (the last padded); a mark every third frame, and the last
    assert marks == ["r1:60", "r1:120", "r1:180", "r1:220", "r2:60", "r2:120"]


@pytest.mark.asyncio
async def test_a_reply_still_playing_when_the_next_begins_is_reported_when_it_has_played():
    finished = await _run(
        _reply("One moment.", 100) + _echo(1, 60)
        + _reply("Welcome back.", 60)  # begins while Twilio still plays the first
        + _echo(1, 100) + _echo(2, 60)
    )
    assert [(r.reply_id, r.generated_text, r.interrupted, r.played_ms, r.sent_ms) for r in finished] == [
        (1, "One moment.", False, 100, 100),
        (2, "Welcome back.", False, 60, 60),
    ]
    assert finished[0].heard_text == "One moment."


@pytest.mark.asyncio
async def test_a_barge_in_cuts_both_the_reply_playing_and_the_one_queued_behind_it():
    finished = await _run(
        _reply("One moment while I check.", 100) + _echo(1, 60)
        + _reply("Welcome back to the hotel.", 100)
        + [InterruptionFrame(), PAUSE]
        + _echo(1, 100)  # an echo a clear releases: that audio was dropped, not heard
    )
    assert [(r.reply_id, r.interrupted, r.played_ms) for r in finished] == [(1, True, 60), (2, True, 0)]
    assert finished[0].heard_text == "One moment"
    assert finished[1].heard_text == ""
