"""Training-time augmentation, and the noise it draws from (shared with the corpus generators).

The waveform gets a speed change, a gain and coloured noise (``augment_waveform``), sometimes
other clips of the split underneath (``add_background_talkers``), and its log-mel SpecAugment
masks (``spec_augment``). Every draw comes from the generator it is handed, so an epoch is
reproducible from ``(seed, epoch, item)`` (``training.features.MelDataset``). ``colored_noise``,
``mix_at_snr`` and ``overlay_talkers`` also make the synthetic corpora's sounds and noisy copies
(``training.corpus``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from core.audio import SAMPLE_RATE

NOISE_COLORS = ("white", "pink", "brown")
MAX_TIME_MASK_FRAMES = 8  # 80 ms
BACKGROUND_TALKER_SHARE = 0.4  # of training items that get other clips mixed under them


def augment_waveform(wave: Tensor, rng: np.random.Generator) -> Tensor:
    """Random speed perturbation (which also shifts pitch), gain and additive noise. (samples,) -> (samples',)."""
    if rng.random() < 0.5:
        # Resampling from 100 to `percent` and playing back at 16 kHz changes speed by 100/percent.
        percent = int(rng.integers(90, 111))
        if percent != 100:
            wave = AF.resample(wave, 100, percent)
    if rng.random() < 0.8:
        wave = wave * float(10 ** (rng.uniform(-12.0, 6.0) / 20))
    if rng.random() < 0.5:
        bank = noise_bank()[str(rng.choice(NOISE_COLORS))]
        start = int(rng.integers(0, bank.size))
        noise = np.take(bank, np.arange(start, start + wave.numel()), mode="wrap")
        speech = wave.numpy()
        wave = torch.from_numpy(mix_at_snr(speech, noise, snr_db=rng.uniform(0.0, 30.0), signal_rms=active_rms(speech)))
    return wave


def add_background_talkers(wave: Tensor, clips: list[Tensor | None], rng: np.random.Generator) -> Tensor:
    """Sometimes other ``clips`` (of the same split) under ``wave``: one person or a TV 8-25 dB lower,
    or the babble of two to four, 0-20 dB lower (a kitchen, a cafe: where the model was weakest)."""
    if rng.random() >= BACKGROUND_TALKER_SHARE:
        return wave
    talkers = 1 if rng.random() < 0.5 else int(rng.integers(2, 5))
    others = [clips[int(j)] for j in rng.integers(len(clips), size=talkers)]
    others = [o.numpy() for o in others if o is not None and o.numel() > 0]
    if not others:
        return wave
    background = overlay_talkers(others, rng, wave.numel())
    snr_db = rng.uniform(8.0, 25.0) if talkers == 1 else rng.uniform(0.0, 20.0)
    speech = wave.numpy()
    return torch.from_numpy(mix_at_snr(speech, background, snr_db, signal_rms=active_rms(speech)))


def overlay_talkers(voices: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """``voices`` laid over each other in ``n`` samples, each at a random offset (it may start before
    or run past the window) and a level 0-6 dB below the others' unit RMS: people talking at once."""
    mix = np.zeros(n)
    for voice in voices:
        voice = voice / max(float(np.sqrt(np.mean(voice.astype(np.float64) ** 2))), 1e-9)
        start = int(rng.integers(-voice.size // 2, n))
        lo, hi = max(start, 0), min(start + voice.size, n)
        if hi > lo:
            mix[lo:hi] += voice[lo - start : hi - start] * 10 ** (rng.uniform(-6, 0) / 20)
    return mix


def active_rms(wave: np.ndarray, frame: int = 320, floor_db: float = -35.0) -> float:
    """RMS over the 20-ms frames within ``floor_db`` of the loudest: the level of the speech, not of the silence around it.

    An SNR set against the whole clip's RMS puts the noise too high by the share of silence
    (a 1-s command in 3 s of audio: about 5 dB).
    """
    frame = max(1, min(frame, wave.size))
    power = np.mean(wave[: wave.size // frame * frame].astype(np.float64).reshape(-1, frame) ** 2, axis=1)
    active = power[power >= power.max() * 10 ** (floor_db / 10)]
    return float(np.sqrt(active.mean())) if active.size else 0.0


@functools.cache
def noise_bank(seconds: int = 64) -> dict[str, np.ndarray]:
    """A fixed minute of each noise colour, which augmentation slices at random offsets.

    Coloured noise per clip costs an FFT of the clip's (often awkward) length, about a quarter of
    an epoch on 2 cores; slicing a bank costs nothing, and a minute of each colour is plenty.
    """
    rng = np.random.default_rng(20_240_101)
    return {color: colored_noise(rng, seconds * SAMPLE_RATE, color) for color in NOISE_COLORS}


def spec_augment(mel: Tensor, rng: np.random.Generator, n_masks: int = 2) -> Tensor:
    """SpecAugment-style masks: ``n_masks`` frequency bands and time spans set to the mel's mean.

    mel: (n_mels, T); returns a new (n_mels, T) tensor. Bands are at most n_mels/8 bins; spans at
    most T/8 frames and 80 ms, shorter than any word, so the one that decides the label ("on",
    "off", "up") is never erased.
    """
    mel = mel.clone()
    fill = float(mel.mean())
    n_mels, frames = mel.shape
    for _ in range(n_masks):
        width = int(rng.integers(0, n_mels // 8 + 1))
        start = int(rng.integers(0, n_mels - width + 1))
        mel[start : start + width, :] = fill
    for _ in range(n_masks):
        width = int(rng.integers(0, min(frames // 8, MAX_TIME_MASK_FRAMES) + 1))
        start = int(rng.integers(0, frames - width + 1))
        mel[:, start : start + width] = fill
    return mel


def colored_noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    """``n`` samples of unit-RMS float32 noise: white (flat), pink (1/f power) or brown (1/f^2 power)."""
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")
    white = rng.standard_normal(max(n, 2))
    if color != "white":
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(white.size)
        freqs[0] = freqs[1]  # no infinite gain at DC
        spectrum /= np.sqrt(freqs) if color == "pink" else freqs
        white = np.fft.irfft(spectrum, n=white.size)
    noise = white[:n]
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float, signal_rms: float | None = None) -> np.ndarray:
    """``signal + noise`` with the noise scaled to ``snr_db`` below ``signal_rms`` (default: the signal's RMS)."""
    if signal_rms is None:
        signal_rms = float(np.sqrt(np.mean(signal.astype(np.float64) ** 2)))
    noise_rms = max(float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))), 1e-12)
    scale = signal_rms / noise_rms / 10 ** (snr_db / 20)
    return (signal + scale * noise).astype(np.float32)
