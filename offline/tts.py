"""Offline text-to-speech for the offline agent, built on the espeak-ng CLI.

``espeak-ng --stdout`` writes a mono 16-bit WAV at 22050 Hz. This module reads
it with :mod:`wave` and resamples it with soxr to the rate the caller asks for
(24000 Hz by default: the PCM16 rate of the OpenAI Realtime API). Results are
cached per ``(text, sample_rate, voice)``, so each scripted line is rendered once
per process.
"""

import asyncio
import functools
import io
import shutil
import subprocess
import wave

import numpy as np
import soxr

ESPEAK = "espeak-ng"
ESPEAK_WORDS_PER_MINUTE = 160


@functools.lru_cache(maxsize=256)
def synthesize(text: str, sample_rate: int = 24000, voice: str = "en-us") -> bytes:
    """Render ``text`` to speech with espeak-ng.

    Args:
        text: The sentence(s) to speak.
        sample_rate: Output sample rate in Hz.
        voice: espeak-ng voice name (``-v``), e.g. ``"en-us"``.

    Returns:
        Mono PCM16 little-endian audio at ``sample_rate`` Hz (2 bytes per sample).

    Raises:
        RuntimeError: If espeak-ng is not installed or fails.
    """
    executable = shutil.which(ESPEAK)
    if executable is None:
        raise RuntimeError(f"{ESPEAK} is not installed (apt-get install espeak-ng); offline TTS needs it")
    # The text goes in on stdin, so text starting with "-" is never read as an option.
    command = [executable, "--stdout", "--stdin", "-v", voice, "-s", str(ESPEAK_WORDS_PER_MINUTE)]
    spoken = " ".join(text.split())  # one line: espeak-ng starts a new clip per stdin line
    result = subprocess.run(command, input=spoken.encode(), capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{ESPEAK} failed (exit {result.returncode}): {stderr}")

    with wave.open(io.BytesIO(result.stdout)) as wav:
        source_rate = wav.getframerate()
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise RuntimeError(f"{ESPEAK} produced unexpected WAV format: {wav.getparams()}")
        # espeak-ng streams to stdout, so the header's frame count is a placeholder:
        # read everything that is there.
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2")
    if source_rate != sample_rate:
        samples = soxr.resample(samples, source_rate, sample_rate, quality="HQ")
    return samples.astype("<i2").tobytes()


async def synthesize_async(text: str, sample_rate: int = 24000, voice: str = "en-us") -> bytes:
    """Run :func:`synthesize` in a worker thread so the event loop keeps running.

    Args:
        text: The sentence(s) to speak.
        sample_rate: Output sample rate in Hz.
        voice: espeak-ng voice name.

    Returns:
        Mono PCM16 audio at ``sample_rate`` Hz.
    """
    return await asyncio.to_thread(synthesize, text, sample_rate, voice)
