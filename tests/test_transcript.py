"""The transcript logger's caller side: turns stored in order, the model never held up by the store."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from pipecat.frames.frames import Frame, TranscriptionFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test

from processors.barge_in import PlayoutTracker
from processors.transcript import TranscriptLogger
from records import CallStore, utc_now

SID = "CA" + "5" * 32


class _LockHolder(FrameProcessor):
    """Upstream of the logger, where the model's transcripts go on to: frees the database once all have passed."""

    def __init__(self, lock: sqlite3.Connection, expected: int):
        super().__init__()
        self._lock = lock
        self._expected = expected
        self.passed: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.UPSTREAM:
            self.passed.append(frame.text)
            if len(self.passed) == self._expected:
                self._lock.rollback()  # the database is free again
        await self.push_frame(frame, direction)


@pytest.mark.asyncio
async def test_caller_turns_wait_for_a_busy_database_not_the_model(tmp_path):
    """A slow call record never holds the model's transcripts; the turns are still stored, in order.

    The model service pushes the caller's transcripts upstream from the task that
    receives its audio. Here the database stays locked until both transcripts have
    gone past the logger: a logger that waited for the store would wait for ever (the
    busy timeout, then the write fails).
    """
    path = tmp_path / "calls.db"
    store = await CallStore.open(str(path))
    try:
        await store.start_call(SID, stream_sid="MZ" + "1" * 32, account_sid="AC" + "2" * 32,
                               from_number="+15551230001", to_number="+15557654321", provider="local")
        lock = sqlite3.connect(path, isolation_level=None, timeout=0)
        lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        transcript = TranscriptLogger(store, SID, PlayoutTracker("MZ" + "1" * 32))
        holder = _LockHolder(lock, expected=2)
        said = ["I need a room in Lisbon.", "For two nights."]
        frames = [TranscriptionFrame(text, "", utc_now(), finalized=True) for text in said]

        _down, up = await asyncio.wait_for(
            run_test(Pipeline([holder, transcript.user()]), frames_to_send=frames,
                     frames_to_send_direction=FrameDirection.UPSTREAM),
            timeout=8,  # under the store's busy timeout: a logger that waits fails here
        )
        lock.close()

        assert holder.passed == said
        assert [f.text for f in up if isinstance(f, TranscriptionFrame)] == said
        record = await store.get_call(SID)  # the call's end (EndFrame) waited for the writes
        assert [(t["role"], t["text"]) for t in record["turns"]] == [("user", text) for text in said]
    finally:
        await store.close()
