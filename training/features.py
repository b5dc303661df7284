"""Training features: every sample decoded once, validated, and served as Whisper log-mels.

``MelDataset`` decodes each file with the service's own ``decode_audio`` (so training sees
exactly what the service will), applies the bad-sample policy (skip with a warning naming the
path and the reason, or raise ``BadSampleError``), and keeps the result in memory: the log-mels,
or the waveforms when augmenting, since augmentation works on the waveform. An optional
on-disk cache (one safetensors file per dataset, keyed by every file's path, size and mtime)
lets a second run skip decoding. Clips are not padded to 30 s unless ``pad_to_30s=True``.

The augmentation itself is ``training.augmentation``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from core.audio import (
    AudioDecodeError,
    decode_audio,
    log_mel_spectrogram,
    pad_mels,
)
from core.tensor_files import read_tensors, write_tensors
from training.augmentation import add_background_talkers, augment_waveform, spec_augment
from training.datasets import Sample

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored representation changes
ON_ERROR_POLICIES = ("skip", "raise")


class BadSampleError(ValueError):
    """A sample cannot be used. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class MelFeatures:
    """What a clip becomes: ``n_mels`` log-mel bins, padded to 30 s or not, from at most ``max_seconds``."""

    n_mels: int = 80
    pad_to_30s: bool = False
    max_seconds: float = 30.0


class MelDataset(torch.utils.data.Dataset):
    """Labelled log-mels of ``samples``; items are ``(mel (n_mels, T) float32, label index, i)``.

    samples: from ``training.datasets``; labels: the class list (a label index is a position in it).
    features: the log-mel settings (default ``MelFeatures()``: Whisper's 80 bins, clips at their length).
    on_error: ``"skip"`` drops a bad sample (missing, unreadable, undecodable, longer than
        ``features.max_seconds``, or with a label not in ``labels``) with a warning, ``"raise"`` raises
        ``BadSampleError``. After construction ``samples`` holds the kept samples and
        ``skipped`` the ``(path, reason)`` of the dropped ones.
    augment_seed: augment (random gain, additive noise, speed perturbation, background talkers
        and SpecAugment masks), drawn from ``(augment_seed, epoch, i)`` so that an epoch is
        reproducible (see ``set_epoch``); ``None`` (the default): no augmentation. Training only.
    cache_dir: where to keep decoded features between runs (``None``: no cache).
    """

    def __init__(
        self,
        samples: list[Sample],
        labels: list[str],
        features: MelFeatures | None = None,
        *,
        on_error: str = "skip",
        augment_seed: int | None = None,
        cache_dir: Path | None = None,
        progress: bool = True,
    ):
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
        self.labels = list(labels)
        features = features or MelFeatures()
        self.n_mels, self.pad_to_30s, self.max_seconds = features.n_mels, features.pad_to_30s, features.max_seconds
        self.on_error = on_error
        self.augment, self.seed = augment_seed is not None, augment_seed
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
        # Its own generator, so that the other draws are those of a run without background talkers.
        wave = add_background_talkers(wave, self._features, np.random.default_rng([self.seed, self.epoch, i, 1]))
        mel = log_mel_spectrogram(wave, self.n_mels, pad_to_30s=self.pad_to_30s)
        return spec_augment(mel, rng), self._targets[i], i

    def clean_view(self, n_mels: int, progress: bool = True) -> MelDataset:
        """This dataset without augmentation and with ``n_mels`` bins (the teacher's view): item i is
        the same clip. The waveforms an augmenting dataset holds are reused; a dataset that holds
        mels of other bins must decode its files again."""
        if not self.augment and n_mels == self.n_mels:
            return self
        if not self.augment:
            features = MelFeatures(n_mels, self.pad_to_30s, self.max_seconds)
            view = MelDataset(self.samples, self.labels, features, on_error="raise", progress=progress)
            if len(view) != len(self):
                raise RuntimeError(f"the clean view of the data has {len(view)} clips, this dataset {len(self)}")
            return view
        view = copy.copy(self)
        view.augment, view.n_mels = False, n_mels
        view._features = [
            log_mel_spectrogram(wave, n_mels, pad_to_30s=self.pad_to_30s).contiguous()
            for wave in tqdm(self._features, desc="clean log-mels", unit="clip", disable=not progress)
        ]
        return view

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
