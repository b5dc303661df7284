"""Real speech for tests, spoken by espeak-ng (a Debian package that .ci/run installs)."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile

from core.audio import SAMPLE_RATE, resample

requires_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def espeak_wav_bytes(text: str, voice: str = "en-us", rate: int = 160) -> bytes:
    """WAV bytes (espeak-ng's native 22.05 kHz, 16-bit mono) of ``text`` spoken by ``voice``."""
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text], check=True, capture_output=True
    ).stdout


def espeak_16k(text: str, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 mono samples at 16 kHz."""
    wave, sr = soundfile.read(io.BytesIO(espeak_wav_bytes(text, voice)), dtype="float32")
    import torch

    return resample(torch.from_numpy(wave), sr).numpy()


def encode(wave: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    """Encode float samples (frames,) or (frames, channels) to bytes in a soundfile format."""
    buf = io.BytesIO()
    soundfile.write(buf, wave, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_container(wave: np.ndarray, fmt: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    """16-kHz float samples encoded with PyAV: ``("webm", "libopus", 48000)`` is what a browser's
    MediaRecorder sends, ``("ipod", "aac", 44100, "stereo")`` an M4A from a phone."""
    import av

    channels = 2 if layout == "stereo" else 1
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(np.tile(wave[None, :].astype(np.float32), (channels, 1))), format="fltp", layout=layout
    )
    frame.rate = SAMPLE_RATE
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
        fifo = av.AudioFifo()
        for converted in resampler.resample(frame) + resampler.resample(None):
            fifo.write(converted)
        size = stream.codec_context.frame_size or 1024
        while fifo.samples:
            for packet in stream.encode(fifo.read(min(size, fifo.samples))):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


__all__ = ["requires_espeak", "espeak_wav_bytes", "espeak_16k", "encode", "encode_container", "SAMPLE_RATE"]
