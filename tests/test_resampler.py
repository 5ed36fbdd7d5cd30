"""Low-delay resampler: delay, passband, stopband, streaming exactness, frame handling."""

import numpy as np
import pytest

from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, TTSAudioRawFrame
from pipecat.audio.resamplers.soxr_stream_resampler import SOXRStreamAudioResampler

from processors.resampler import AudioResamplerProcessor, StreamResampler

PAIRS = [(8000, 24000), (24000, 8000), (8000, 16000), (16000, 8000), (8000, 48000)]


def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 10000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _rms(pcm: bytes, skip: int = 0) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(float)[skip:]
    return float(np.sqrt(np.mean(x**2)))


def _measured_delay_ms(in_rate: int, out_rate: int) -> float:
    """Delay of a band-limited click through the resampler, from the output's peak."""
    clicks = np.zeros(in_rate // 10)
    at = in_rate // 20
    t = (np.arange(len(clicks)) - at) / in_rate
    clicks = 20000 * np.sinc(2 * 3000 * t) * np.hanning(len(clicks))  # band-limited to 3 kHz
    out = np.frombuffer(
        StreamResampler(in_rate, out_rate).process(clicks.astype("<i2").tobytes()), "<i2"
    )
    return (np.argmax(out) / out_rate - at / in_rate) * 1000


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_holds_back_at_most_5_ms(in_rate, out_rate):
    delay = _measured_delay_ms(in_rate, out_rate)
    assert 0 <= delay <= 5.0
    assert StreamResampler(in_rate, out_rate).delay_ms == pytest.approx(delay, abs=0.2)
    # And nothing is buffered: every 20 ms frame comes out whole.
    frame = _tone(1000, in_rate, 0.02)
    out = StreamResampler(in_rate, out_rate).process(frame)
    assert len(out) == len(frame) * out_rate // in_rate


def test_far_less_delay_than_pipecats_stock_stream_resampler():
    """The stock VHQ soxr stream holds back whole frames; ours returns every sample."""

    async def held_back_ms():
        stock = SOXRStreamAudioResampler()
        out = await stock.resample(_tone(1000, 8000, 0.02), 8000, 24000)
        return (480 - len(out) // 2) / 24

    import asyncio

    assert asyncio.run(held_back_ms()) > 5.0  # the stock path's delay we beat
    assert _measured_delay_ms(8000, 24000) <= 5.0


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
@pytest.mark.parametrize("freq", [300, 1000, 2000, 3000, 3400])
def test_telephone_band_passes_flat(in_rate, out_rate, freq):
    out = StreamResampler(in_rate, out_rate).process(_tone(freq, in_rate))
    gain_db = 20 * np.log10(_rms(out, skip=out_rate // 10) / (10000 / np.sqrt(2)))
    assert abs(gain_db) < 0.1


@pytest.mark.parametrize("in_rate", [16000, 24000, 48000])
@pytest.mark.parametrize("freq", [4000, 4500, 6000, 7900])
def test_downsampling_rejects_what_would_alias(in_rate, freq):
    out = StreamResampler(in_rate, 8000).process(_tone(freq, in_rate))
    assert 20 * np.log10(_rms(out, skip=800) / (10000 / np.sqrt(2)) + 1e-12) < -55


@pytest.mark.parametrize("out_rate", [16000, 24000, 48000])
@pytest.mark.parametrize("freq", [1000, 3000, 3400])
def test_upsampling_rejects_images(out_rate, freq):
    out = np.frombuffer(StreamResampler(8000, out_rate).process(_tone(freq, 8000)), "<i2")
    spectrum = np.abs(np.fft.rfft(out[out_rate // 10 :] * np.hanning(len(out) - out_rate // 10)))
    freqs = np.fft.rfftfreq(len(out) - out_rate // 10, 1 / out_rate)
    signal = spectrum[np.abs(freqs - freq) < 20].max()
    images = spectrum[freqs >= 4000].max()
    assert 20 * np.log10(images / signal) < -55


@pytest.mark.parametrize("in_rate,out_rate", PAIRS)
def test_a_stream_cut_anywhere_equals_the_whole(in_rate, out_rate):
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(in_rate) * 3000).astype("<i2").tobytes()
    whole = StreamResampler(in_rate, out_rate).process(pcm)
    streamed, resampler, i = [], StreamResampler(in_rate, out_rate), 0
    while i < len(pcm):
        size = int(rng.integers(1, 500)) * 2
        streamed.append(resampler.process(pcm[i : i + size]))
        i += size
    assert b"".join(streamed) == whole


def test_non_integer_ratio_is_refused():
    with pytest.raises(ValueError, match="integer ratios"):
        StreamResampler(8000, 22050)


@pytest.mark.asyncio
async def test_processor_converts_only_its_frame_type():
    from pipecat.tests.utils import run_test

    processor = AudioResamplerProcessor(8000, OutputAudioRawFrame)
    tts = TTSAudioRawFrame(_tone(1000, 24000, 0.04), 24000, 1)
    caller = InputAudioRawFrame(_tone(1000, 8000, 0.02), 8000, 1)
    down, _ = await run_test(
        processor,
        frames_to_send=[tts, caller],
        # Input audio is a system frame in Pipecat: it overtakes the queued TTS audio.
        expected_down_frames=[InputAudioRawFrame, TTSAudioRawFrame],
    )
    assert isinstance(down[1], TTSAudioRawFrame)  # the type survives, so does interruptibility
    assert down[1].sample_rate == 8000 and len(down[1].audio) == 640 and down[1].num_frames == 320
    assert down[0].sample_rate == 8000 and len(down[0].audio) == 320  # untouched
