"""Training features: every sample decoded once, validated, and served as Whisper log-mels.

``MelDataset`` decodes each file with the service's own ``decode_audio`` (so training sees
exactly what the service will), applies the bad-sample policy (skip with a warning naming the
path and the reason, or raise ``BadSampleError``), and keeps the result in memory: the log-mels,
or the waveforms when augmenting, since augmentation works on the waveform. An optional
on-disk cache (one safetensors file per dataset, keyed by every file's path, size and mtime)
lets a second run skip decoding. Clips are not padded to 30 s unless ``pad_to_30s=True``.

The noise helpers at the bottom are shared with the synthetic corpus generator (``training.corpus.synth``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor
from tqdm import tqdm

from core.audio import (
    SAMPLE_RATE,
    AudioDecodeError,
    decode_audio,
    log_mel_spectrogram,
    pad_mels,
)
from core.tensor_files import read_tensors, write_tensors
from training.datasets import Sample

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored representation changes
ON_ERROR_POLICIES = ("skip", "raise")
NOISE_COLORS = ("white", "pink", "brown")


class BadSampleError(ValueError):
    """A sample cannot be used. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class MelDataset(torch.utils.data.Dataset):
    """Labelled log-mels of ``samples``; items are ``(mel (n_mels, T) float32, label index, i)``.

    samples: from ``training.datasets``; labels: the class list (a label index is a position in it).
    on_error: ``"skip"`` drops a bad sample (missing, unreadable, undecodable, longer than
        ``max_seconds``, or with a label not in ``labels``) with a warning, ``"raise"`` raises
        ``BadSampleError``. After construction ``samples`` holds the kept samples and
        ``skipped`` the ``(path, reason)`` of the dropped ones.
    augment: random gain, additive noise, speed perturbation and SpecAugment masks, drawn from
        ``(seed, epoch, i)`` so that an epoch is reproducible (see ``set_epoch``). Training only.
    cache_dir: where to keep decoded features between runs (``None``: no cache).
    """

    def __init__(
        self,
        samples: list[Sample],
        labels: list[str],
        *,
        n_mels: int = 80,
        pad_to_30s: bool = False,
        on_error: str = "skip",
        augment: bool = False,
        seed: int = 0,
        max_seconds: float = 30.0,
        cache_dir: Path | None = None,
        progress: bool = True,
    ):
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
        self.labels = list(labels)
        self.n_mels, self.pad_to_30s, self.on_error = n_mels, pad_to_30s, on_error
        self.augment, self.seed, self.max_seconds = augment, seed, max_seconds
        self.epoch = 0
        self.skipped: list[tuple[Path, str]] = []
        label_index = {label: k for k, label in enumerate(self.labels)}

        # Cheap checks first (label, file present), so the cache key covers only real files.
        candidates: list[tuple[Sample, os.stat_result]] = []
        for sample in samples:
            if sample.label not in label_index:
                self._reject(sample.path, f"label {sample.label!r} is not one of the {len(self.labels)} labels")
                continue
            try:
                candidates.append((sample, os.stat(sample.path)))
            except FileNotFoundError:
                self._reject(sample.path, "file not found")
            except OSError as e:
                self._reject(sample.path, f"cannot read the file ({e.strerror})")

        features, failures = self._load_features(candidates, cache_dir, progress)
        failed = dict(failures)
        kept = [(c, f) for j, (c, f) in enumerate(zip(candidates, features)) if j not in failed]
        for j, reason in failures:
            self._reject(candidates[j][0].path, reason)
        if samples and not kept:
            path, reason = self.skipped[0]
            raise BadSampleError(path, f"{reason}; and none of the {len(samples)} samples is usable")
        if self.skipped:
            log.warning("skipped %d of %d samples (see the warnings above)", len(self.skipped), len(samples))

        self.samples: list[Sample] = [c[0] for c, _ in kept]
        self._file_stats = [(c[1].st_size, c[1].st_mtime_ns) for c, _ in kept]
        self._features: list[Tensor] = [f for _, f in kept]
        self._targets = [label_index[s.label] for s in self.samples]

    # ------------------------------------------------------------------ construction helpers

    def _reject(self, path: Path, reason: str) -> None:
        if self.on_error == "raise":
            raise BadSampleError(path, reason)
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((path, reason))

    def _feature_kind(self) -> str:
        return "wave" if self.augment else "mel"

    def _load_features(
        self, candidates: list[tuple[Sample, os.stat_result]], cache_dir: Path | None, progress: bool
    ) -> tuple[list[Tensor | None], list[tuple[int, str]]]:
        """One feature per candidate (None where it failed) and the failures as (position, reason)."""
        cache_path = None
        if cache_dir is not None:
            key = hashlib.sha256(
                json.dumps(
                    {
                        "version": CACHE_VERSION,
                        "kind": self._feature_kind(),
                        "n_mels": self.n_mels,
                        "pad_to_30s": self.pad_to_30s,
                        "max_seconds": self.max_seconds,
                        "files": [[str(s.path), st.st_size, st.st_mtime_ns] for s, st in candidates],
                    }
                ).encode()
            ).hexdigest()
            cache_path = Path(cache_dir) / f"{self._feature_kind()}-{key[:32]}.safetensors"
            cached = _read_cache(cache_path, len(candidates))
            if cached is not None:
                log.info("features of %d clips loaded from %s", len(candidates), cache_path)
                return cached

        features: list[Tensor | None] = []
        failures: list[tuple[int, str]] = []
        for j, (sample, _) in enumerate(tqdm(candidates, desc="decoding audio", unit="clip", disable=not progress)):
            try:
                features.append(self._decode(Path(sample.path)))
            except (AudioDecodeError, OSError) as e:
                reason = str(e) if isinstance(e, AudioDecodeError) else f"cannot read the file ({e.strerror})"
                if self.on_error == "raise":
                    raise BadSampleError(sample.path, reason) from None
                features.append(None)
                failures.append((j, reason))
        if cache_path is not None:
            _write_cache(cache_path, features, failures)
        return features, failures

    def _decode(self, path: Path) -> Tensor:
        wave = decode_audio(path.read_bytes(), max_seconds=self.max_seconds)
        if self.augment:
            return wave.contiguous()
        return log_mel_spectrogram(wave, self.n_mels, pad_to_30s=self.pad_to_30s).contiguous()

    # ------------------------------------------------------------------------------ dataset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        if not self.augment:
            return self._features[i], self._targets[i], i
        rng = np.random.default_rng([self.seed, self.epoch, i])
        wave = augment_waveform(self._features[i], rng)
        wave = self._background_talker(wave, np.random.default_rng([self.seed, self.epoch, i, 1]))
        mel = log_mel_spectrogram(wave, self.n_mels, pad_to_30s=self.pad_to_30s)
        return spec_augment(mel, rng), self._targets[i], i

    def _background_talker(self, wave: Tensor, rng: np.random.Generator) -> Tensor:
        """Sometimes other clips of the split under this one: one person or a TV 8-25 dB lower, or the
        babble of two to four, 0-20 dB lower (a kitchen, a cafe: where the model was weakest). Its own
        generator, so the other augmentation draws are those of a run without it."""
        if rng.random() >= BACKGROUND_TALKER_SHARE:
            return wave
        talkers = 1 if rng.random() < 0.5 else int(rng.integers(2, 5))
        others = [self._features[int(j)] for j in rng.integers(len(self._features), size=talkers)]
        others = [o.numpy() for o in others if o is not None and o.numel() > 0]
        if not others:
            return wave
        background = overlay_talkers(others, rng, wave.numel())
        snr_db = rng.uniform(8.0, 25.0) if talkers == 1 else rng.uniform(0.0, 20.0)
        speech = wave.numpy()
        return torch.from_numpy(mix_at_snr(speech, background, snr_db, signal_rms=active_rms(speech)))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw: the same (seed, epoch) always gives the same items."""
        self.epoch = int(epoch)

    def fingerprint(self) -> str:
        """SHA-256 of the kept samples (path, size, mtime, label) and the feature settings."""
        h = hashlib.sha256()
        h.update(json.dumps({"n_mels": self.n_mels, "pad_to_30s": self.pad_to_30s}).encode())
        for sample, (size, mtime_ns) in zip(self.samples, self._file_stats):
            h.update(json.dumps([str(sample.path), size, mtime_ns, sample.label]).encode())
        return h.hexdigest()


def collate(batch: list[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``MelDataset`` items to (mels (B, n_mels, T) zero-padded, lengths (B,), labels (B,), indices (B,))."""
    mels, lengths = pad_mels([item[0] for item in batch])
    labels = torch.tensor([item[1] for item in batch], dtype=torch.long)
    indices = torch.tensor([item[2] for item in batch], dtype=torch.long)
    return mels, lengths, labels, indices


# -------------------------------------------------------------------------------- cache file


def _read_cache(path: Path, n: int) -> tuple[list[Tensor | None], list[tuple[int, str]]] | None:
    """The cached (features, failures), or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = read_tensors(path)
        failures = [(int(j), str(reason)) for j, reason in json.loads(metadata["failures"])]
    except (ValueError, KeyError, TypeError) as e:  # TensorFileError is a ValueError
        log.warning("ignoring the unreadable feature cache %s (%s)", path, e)
        return None
    failed = {j for j, _ in failures}
    if len(tensors) + len(failed) != n or any(str(j) not in tensors for j in range(n) if j not in failed):
        log.warning("ignoring the feature cache %s: it does not match the samples", path)
        return None
    return [None if j in failed else tensors[str(j)] for j in range(n)], failures


def _write_cache(path: Path, features: list[Tensor | None], failures: list[tuple[int, str]]) -> None:
    tensors = {str(j): f for j, f in enumerate(features) if f is not None}
    metadata = {"failures": json.dumps(failures), "version": str(CACHE_VERSION)}
    write_tensors(path, tensors, metadata)
    log.info("feature cache written to %s", path)


# ------------------------------------------------------------------------------ augmentation


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


MAX_TIME_MASK_FRAMES = 8  # 80 ms
BACKGROUND_TALKER_SHARE = 0.4  # of training items that get other clips mixed under them


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
