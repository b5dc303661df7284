"""Sounds that are not speech, for teaching a model to refuse them: silence, noise, tones, music, clicks, hum.

Each generator draws everything from the ``rng`` it is given, so a corpus stays deterministic
for its seed. Speech babble (several espeak-ng voices at once) needs the synthesiser and is
made in ``training.corpus.synth``; this module only mixes the voices it is handed (``babble``).
"""

from __future__ import annotations

import numpy as np

from core.audio import SAMPLE_RATE
from training.augmentation import NOISE_COLORS, colored_noise, overlay_talkers

SOUND_KINDS = ("silence", "noise", "tone", "music", "clicks", "hum", "babble")


def nonspeech(kind: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """``seconds`` of one kind of non-speech sound (all of ``SOUND_KINDS`` but babble), float32 at 16 kHz, peak <= 1."""
    n = max(int(seconds * SAMPLE_RATE), 160)
    t = np.arange(n) / SAMPLE_RATE
    if kind == "silence":  # a quiet room: a microphone's hiss far below speech, kept at that level
        return colored_noise(rng, n, str(rng.choice(NOISE_COLORS))) * np.float32(10 ** (rng.uniform(-70, -45) / 20))
    if kind == "noise":
        wave = colored_noise(rng, n, str(rng.choice(NOISE_COLORS))) * _swell(rng, t)
    elif kind == "tone":
        wave = _tones(rng, t)
    elif kind == "music":
        wave = _music(rng, t)
    elif kind == "clicks":
        wave = _clicks(rng, n)
    elif kind == "hum":
        base = rng.choice([50.0, 60.0, 100.0, 120.0])
        wave = sum(
            rng.uniform(0.1, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) for k in range(1, 6)
        )
        wave = wave + 0.05 * colored_noise(rng, n, "pink")
    else:
        raise ValueError(f"sound kind must be one of {SOUND_KINDS[:-1]} (babble needs speech), got {kind!r}")
    return _normalized(np.asarray(wave, np.float64), rng)


def babble(voices: list[np.ndarray], rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Several utterances laid over each other at random offsets and levels: many people talking at once."""
    return _normalized(overlay_talkers(voices, rng, max(int(seconds * SAMPLE_RATE), 160)), rng)


def _normalized(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scaled to a random peak level from -26 to -1 dBFS, as ``training.corpus.synth`` scales speech."""
    peak = max(float(np.abs(wave).max()), 1e-9)
    return (wave * 10 ** (rng.uniform(-26, -1) / 20) / peak).astype(np.float32)


def _swell(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A slow level change, so noise is not always stationary (a passing car, a fan speeding up)."""
    return 1.0 + rng.uniform(0, 0.8) * np.sin(2 * np.pi * rng.uniform(0.1, 1.5) * t + rng.uniform(0, 6.3))


def _tones(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Beeps, a sweep or a held tone: alarms, appliances, phones."""
    style = rng.integers(3)
    if style == 0:  # beeps
        f, rate = rng.uniform(400, 3000), rng.uniform(1, 6)
        return np.sin(2 * np.pi * f * t) * (np.sin(2 * np.pi * rate * t) > 0)
    if style == 1:  # sweep
        f0, f1 = rng.uniform(200, 1000), rng.uniform(1000, 6000)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3)))
        return np.sin(phase)
    return np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)


def _music(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Chords of harmonic notes on a beat, with a drum-like noise burst: music from another room."""
    beat = 60.0 / rng.uniform(70, 160)
    wave = np.zeros_like(t)
    for start in np.arange(0.0, t[-1] + beat, beat * rng.choice([1, 2, 4])):
        root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        chord = [root * 2 ** (i / 12) for i in (0, rng.choice([3, 4]), 7)]
        note = (t >= start) & (t < start + 4 * beat)
        env = np.exp(-(t - start).clip(0) * rng.uniform(0.5, 3)) * note
        for f in chord:
            wave += env * sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3))
    drums = np.zeros_like(t)
    for start in np.arange(0.0, t[-1], beat):
        hit = (t >= start) & (t < start + 0.05)
        drums[hit] = rng.standard_normal(int(hit.sum())) * rng.uniform(0.5, 2)
    return wave + drums


def _clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Taps, knocks and keyboard clicks: short decaying bursts at random times."""
    wave = np.zeros(n)
    for at in rng.integers(0, n, size=int(rng.integers(3, 30))):
        length = int(rng.integers(40, 800))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5))
        wave[at : at + length] += burst[: n - at] * rng.uniform(0.2, 1)
    return wave
