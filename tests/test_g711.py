"""G.711 mu-law codec: bit-exact with the ITU tables as implemented by CPython's audioop."""

import warnings

import numpy as np
import pytest

from processors.g711 import ULAW_SILENCE, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the reference; deprecated in 3.11, still present


def test_all_256_codes_decode_like_the_reference():
    codes = bytes(range(256))
    assert ulaw_decode(codes) == audioop.ulaw2lin(codes, 2)


def test_all_65536_pcm_values_encode_like_the_reference():
    pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert ulaw_encode(pcm) == audioop.lin2ulaw(pcm, 2)


def test_round_trip_is_stable_and_silence_is_0xff():
    codes = bytes(range(256))
    # Decoding then encoding gives each code back, except the two zeros (0x7F, 0xFF),
    # which both decode to 0 and encode to 0xFF.
    again = ulaw_encode(ulaw_decode(codes))
    differing = [c for c, d in zip(codes, again) if c != d]
    assert differing == [0x7F]
    assert ulaw_encode(b"\x00\x00") == bytes([ULAW_SILENCE])


def test_odd_sized_pcm_is_refused():
    with pytest.raises(ValueError, match="even number of bytes"):
        ulaw_encode(b"\x00\x00\x00")
