"""Hypothesis strategies for what a Media Streams socket might carry, well-formed or not.

Shared by the serializer's property test and the end-to-end fault matrix. Messages
are Twilio-shaped (the real event names with fields of any type and content), any
JSON, any text, or binary frames. ``stop`` is left out: it ends a call, correctly.
Source for the shapes: https://www.twilio.com/docs/voice/media-streams/websocket-messages
"""

from __future__ import annotations

import base64
import json

from hypothesis import strategies as st

EVENTS = ["connected", "start", "media", "mark", "dtmf", "clear", "no-such-event", "", "MEDIA"]

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
any_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_payload = st.one_of(
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),  # good base64, any size
    st.text(max_size=40),  # mostly not base64
    any_json,
)
_media = st.fixed_dictionaries(
    {"event": st.just("media")},
    optional={
        "streamSid": st.text(max_size=34),
        "sequenceNumber": any_json,
        "media": st.fixed_dictionaries({}, optional={"payload": _payload, "track": any_json,
                                                     "chunk": any_json, "timestamp": any_json})
        | any_json,
    },
)
_twilio_shaped = st.fixed_dictionaries(
    {"event": st.sampled_from(EVENTS)},
    optional={"streamSid": any_json, "sequenceNumber": any_json, "mark": any_json,
              "dtmf": any_json | st.fixed_dictionaries({"digit": st.text(max_size=2)}),
              "media": any_json, "start": any_json},
)

#: One WebSocket message: a str (usually JSON) or bytes.
messages = st.one_of(
    _media.map(json.dumps),
    _twilio_shaped.map(json.dumps),
    any_json.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
)
