"""Noisy copies of a corpus's test split: every clip mixed with noise or speech babble at a fixed SNR.

For measuring how much accuracy a room costs: the copy has the same clips, labels and index
file, so the same ``quads-eval`` command reads it. The noise is pink (``colored_noise``) or
babble made from the speech clips of another corpus (``babble_from``: voices and sentences
the model never trained on), mixed at ``NoiseMix.snr_db`` below each clip's speech level.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from core.audio import SAMPLE_RATE
from core.refusal import REFUSAL_LABEL
from training.augmentation import colored_noise, mix_at_snr
from training.corpus.espeak_voices import stable_int
from training.corpus.nonspeech import babble
from training.corpus.render import write_wav
from training.datasets import load_fsc

NOISE_KINDS = ("pink", "babble")


@dataclass(frozen=True)
class NoiseMix:
    """What is mixed into every clip: ``kind`` noise at ``snr_db`` dB below its speech level.

    Babble is made from the non-command speech of ``babble_from``'s ``babble_split``: for a
    validation copy, the validation voices, so that no choice made on it has heard a test voice.
    """

    kind: str
    snr_db: float
    seed: int = 0
    babble_from: Path | None = None
    babble_split: str = "test"

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        if self.kind == "babble" and self.babble_from is None:
            raise ValueError("babble noise needs babble_from: a corpus whose speech clips make the babble")


def noisy_copy(src: Path, dst: Path, mix: NoiseMix, *, split: str = "test", progress: bool = True) -> Path:
    """Write ``src``'s ``split`` with ``mix`` into ``dst`` (FSC layout, same index file) and return ``dst``."""
    samples = load_fsc(src, split)
    talkers = _speech_clips(mix.babble_from, mix.babble_split) if mix.kind == "babble" else []
    dst.mkdir(parents=True, exist_ok=True)
    for sample in tqdm(samples, desc=f"{mix.kind} {mix.snr_db:g} dB", unit="clip", disable=not progress):
        relative = sample.path.relative_to(src)
        wave, _ = soundfile.read(sample.path, dtype="float32")
        rng = np.random.default_rng([mix.seed, stable_int(str(relative)), int(mix.snr_db * 10), len(mix.kind)])
        if mix.kind == "pink":
            noise = colored_noise(rng, wave.size, "pink")
        else:
            picks = [talkers[int(i)] for i in rng.integers(len(talkers), size=4)]
            noise = babble([soundfile.read(p, dtype="float32")[0] for p in picks], rng, wave.size / SAMPLE_RATE)
            noise = np.pad(noise, (0, max(0, wave.size - noise.size)))[: wave.size]  # seconds -> samples rounds
        out = dst / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        mixed = mix_at_snr(wave, noise, mix.snr_db, signal_rms=_speech_rms(wave))
        write_wav(out, np.clip(mixed / max(1.0, float(np.abs(mixed).max())), -1, 1))
    (dst / "data").mkdir(exist_ok=True)
    shutil.copyfile(src / "data" / f"{split}_data.csv", dst / "data" / f"{split}_data.csv")
    return dst


def _speech_clips(root: Path, split: str) -> list[Path]:
    """The speech clips of a corpus's ``split`` that are not commands (sounds have "<kind>" transcriptions)."""
    with open(root / "data" / f"{split}_data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    clips = [
        root / r["path"]
        for r in rows
        if "_".join((r["action"], r["object"], r["location"])) == REFUSAL_LABEL
        and not r["transcription"].startswith("<")
    ]
    if not clips:
        raise ValueError(f"{root}: no non-command speech clips to make babble from")
    return clips


def _speech_rms(wave: np.ndarray) -> float:
    """The level of the speech itself: the RMS over the loudest half of 10-ms frames (not the silence around it)."""
    frames = wave[: wave.size // 160 * 160].reshape(-1, 160).astype(np.float64)
    energy = np.sort((frames**2).mean(axis=1))[::-1]
    return float(np.sqrt(energy[: max(1, energy.size // 2)].mean()))
