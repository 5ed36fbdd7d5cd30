"""Keys the caller presses reach the agent, e.g. to confirm a booking number.

Twilio sends each key press as a ``dtmf`` message
(https://www.twilio.com/docs/voice/media-streams/websocket-messages#dtmf-message),
which the serializer turns into ``InputDTMFFrame``. Pipecat's
:class:`~pipecat.processors.aggregators.dtmf_aggregator.DTMFAggregator` collects the
digits (until ``#`` or a pause) and interrupts the agent at the first one; this
subclass hands the sequence to a speech-to-speech model, which hears no key tones:
it appends a user message saying which keys were pressed and asks for a response
(``LLMMessagesAppendFrame`` with ``run_llm``), and pushes a ``TranscriptionFrame`` so
the transcript logger records the caller's turn.

Place it after the user context aggregator and before the service, so the append
reaches the service first and then the assistant aggregator, which asks for the
response.
"""

from __future__ import annotations

from pipecat.frames.frames import LLMMessagesAppendFrame, TranscriptionFrame
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.utils.time import time_now_iso8601

__all__ = ["DTMFToAgent"]


class DTMFToAgent(DTMFAggregator):
    """Collects the caller's key presses and tells the agent about them.

    Args:
        timeout: Seconds without a key before the sequence is complete.
        **kwargs: Passed to :class:`DTMFAggregator` (e.g. ``termination_digit``).
    """

    def __init__(self, timeout: float = 1.5, **kwargs):
        super().__init__(timeout=timeout, prefix="", **kwargs)

    async def _flush_aggregation(self):
        """Send the collected keys to the model and to the call record."""
        if not self._aggregation:
            return
        keys, self._aggregation = self._aggregation, ""
        spoken_keys = " ".join(keys)
        await self.push_frame(
            TranscriptionFrame(
                text=f"[caller pressed {spoken_keys}]", user_id="", timestamp=time_now_iso8601(), finalized=True
            )
        )
        message = {"role": "user", "content": f"The caller pressed these phone keys: {spoken_keys}"}
        await self.push_frame(LLMMessagesAppendFrame(messages=[message], run_llm=True))
