"""What the service tests feed the service: tiny quantized checkpoints, and real speech from espeak-ng
in every encoding the service reads. The fixtures built from them are in ``tests/conftest.py``."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF

from core.audio import decode_audio, log_mel_spectrogram
from core.checkpoint import Checkpoint, save_checkpoint
from core.model import IntentClassifier, ModelDims
from core.refusal import REFUSAL_LABEL
from tests.speech import encode as encode_samples
from tests.speech import espeak_wav_bytes
from training.quantize import quantize_model

LABELS = [
    "activate_lights",
    "deactivate_lights",
    "increase_volume",
    "decrease_volume",
    "activate_music",
    "change_language",
]
TINY_DIMS = ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=2)
PHRASES = ("turn on the lights", "turn the volume down", "switch the language to German")
# (format, subtype, sample rate, channels): every container the service must read, several rates and layouts.
ENCODINGS = [
    ("WAV", "PCM_16", 16000, 1),
    ("WAV", "FLOAT", 44100, 2),
    ("FLAC", "PCM_16", 48000, 2),
    ("FLAC", "PCM_24", 8000, 1),
    ("OGG", "VORBIS", 22050, 1),
    ("OGG", "VORBIS", 48000, 2),
    ("MP3", "MPEG_LAYER_III", 44100, 2),
    ("MP3", "MPEG_LAYER_III", 16000, 1),
]
MEDIA_TYPES = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg", "MP3": "audio/mpeg"}


def write_tiny_checkpoint(
    path: Path, bits: int = 4, seed: int = 0, refusal_bias: float | None = None, threshold: float = 0.0
) -> Path:
    """A random IntentClassifier with TINY_DIMS, k-means quantized to ``bits`` and saved at ``path``.

    ``refusal_bias``: give it a refusal class (``REFUSAL_LABEL`` after ``LABELS``) whose logit is
    pushed by that much, so that it always (large) or never (very negative) wins; ``threshold``
    is then stored as its calibrated threshold."""
    torch.manual_seed(seed)
    labels = LABELS if refusal_bias is None else [*LABELS, REFUSAL_LABEL]
    model = IntentClassifier(TINY_DIMS, len(labels))
    if refusal_bias is not None:
        with torch.no_grad():
            model.head.bias[-1] += refusal_bias
    codebooks = quantize_model(model, bits).codebooks()
    return save_checkpoint(
        path, model.eval(), labels, bits, provenance={"purpose": "tests"}, codebooks=codebooks, threshold=threshold
    )


def espeak(text: str) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng: (mono float32 samples, sample rate)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    samples, rate = soundfile.read(io.BytesIO(espeak_wav_bytes(text)), dtype="float32")
    return samples, rate


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str, to_rate: int, channels: int) -> bytes:
    """Resample mono ``samples`` to ``to_rate``, lay them out on ``channels`` and encode as ``fmt``."""
    wave = torch.from_numpy(samples)
    if to_rate != rate:
        wave = AF.resample(wave, rate, to_rate)
    # The second channel is quieter, so a down-mix that dropped a channel would change the answer.
    layout = np.stack([wave.numpy() * (1.0 - 0.3 * c) for c in range(channels)], axis=1)
    return encode_samples(layout, to_rate, fmt, subtype)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    return encode_samples(samples, rate, "WAV", "PCM_16")


def reference_probabilities(checkpoint: Checkpoint, data: bytes) -> torch.Tensor:
    """What the model says about ``data`` run alone, outside the service: (n_labels,)."""
    mel = log_mel_spectrogram(decode_audio(data), checkpoint.dims.n_mels)
    with torch.inference_mode():
        _, logits = checkpoint.model(mel[None])
    return logits[0].softmax(-1)
