"""Fixtures shared by the test modules: tiny checkpoints of the service's kind, and espeak-ng speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.checkpoint import Checkpoint, load_checkpoint
from tests.service_inputs import PHRASES, espeak, wav_bytes, write_tiny_checkpoint


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A directory holding ``quads-fsc-4bit.safetensors`` and ``quads-fsc-8bit.safetensors``."""
    directory = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(directory / "quads-fsc-4bit.safetensors", bits=4)
    write_tiny_checkpoint(directory / "quads-fsc-8bit.safetensors", bits=8)
    return directory


@pytest.fixture(scope="session")
def checkpoint_path(model_dir) -> Path:
    return model_dir / "quads-fsc-4bit.safetensors"


@pytest.fixture(scope="session")
def speech() -> dict[str, tuple[np.ndarray, int]]:
    """espeak-ng recordings of PHRASES: phrase -> (mono float32 samples, sample rate)."""
    return {phrase: espeak(phrase) for phrase in PHRASES}


@pytest.fixture(scope="session")
def speech_wav(speech) -> bytes:
    """ "turn on the lights" as espeak-ng wrote it (16-bit WAV)."""
    return wav_bytes(*speech[PHRASES[0]])


@pytest.fixture(scope="session")
def checkpoint(checkpoint_path) -> Checkpoint:
    """The 4-bit checkpoint of ``model_dir``, loaded."""
    return load_checkpoint(checkpoint_path)


@pytest.fixture
def served_checkpoint(checkpoint_path) -> Checkpoint:
    """A fresh load of ``checkpoint_path`` for an ``InferenceEngine``, which prepares its model in
    place for the compute dtype (``service.precision``); ``checkpoint`` stays the plain reference."""
    return load_checkpoint(checkpoint_path)


class FakeClock:
    """A ``time.monotonic`` stand-in that moves only when a test sets ``now``."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
