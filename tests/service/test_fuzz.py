"""Property-based fuzzing of decode -> features -> model: a result or the documented error, nothing else."""

import io
import struct

import numpy as np
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.audio import AudioDecodeError, decode_audio, log_mel_spectrogram
from core.model import IntentClassifier, ModelDims

MODEL = IntentClassifier(ModelDims(n_mels=80, n_ctx=1500, n_state=32, n_head=2, n_layer=1), 4).eval()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def classify(data: bytes) -> torch.Tensor | None:
    """The service's path; None when the input is refused with the documented error."""
    try:
        audio = decode_audio(data, max_seconds=5)
    except AudioDecodeError as e:
        assert str(e)  # a reason a person can read
        return None
    with torch.no_grad():
        _, logits = MODEL(log_mel_spectrogram(audio)[None])
    assert torch.isfinite(logits).all()
    return logits


def wav_header(channels: int, rate: int, bits: int, fmt: int, data_len: int) -> bytes:
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_len) % 2**32)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, fmt, channels, rate, (rate * block) % 2**32, block, bits)
        + b"data"
        + struct.pack("<I", data_len)
    )


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes(data):
    classify(data)


@FUZZ
@given(
    channels=st.integers(0, 8),
    rate=st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1]),
    bits=st.sampled_from([0, 8, 16, 24, 32, 64, 7]),
    fmt=st.sampled_from([1, 3, 0, 0xFFFE, 85]),
    claimed=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=2048),
)
def test_wav_headers_that_lie(channels, rate, bits, fmt, claimed, body):
    classify(wav_header(channels, rate, bits, fmt, claimed) + body)


@FUZZ
@given(
    seconds=st.floats(0.0005, 4.0),
    rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
    channels=st.integers(1, 6),
    subtype=st.sampled_from(["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]),
    scale=st.sampled_from([0.0, 1e-6, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_valid_wavs_of_any_shape_classify(seconds, rate, channels, subtype, scale, seed):
    frames = max(1, int(seconds * rate))
    wave = (np.random.default_rng(seed).uniform(-1, 1, (frames, channels)) * scale).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="WAV", subtype=subtype)
    assert classify(buf.getvalue()) is not None
