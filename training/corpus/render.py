"""Rendering a planned clip: espeak-ng speech (or a non-speech sound), then the room around it.

Each clip gets random leading/trailing silence, optionally room reverberation and white, pink or
brown background noise at a random SNR, and a random gain. Every random draw comes from a
generator seeded by (seed, split, voice, intent, repetition), so a clip is the same whichever
worker thread renders it and whenever it finishes.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from core.audio import SAMPLE_RATE, resample
from training.augmentation import NOISE_COLORS, colored_noise, mix_at_snr
from training.corpus.espeak_voices import Voice, build_variant_data_dir, is_generated, stable_int
from training.corpus.nonspeech import babble, nonspeech
from training.datasets import FSC_SPLITS


class SynthError(RuntimeError):
    """espeak-ng is missing or failed, or the output folder cannot be used."""


@dataclass(frozen=True)
class Utterance:
    """One clip to synthesise: who says what, and which repetition of the intent it is."""

    split: str
    voice: Voice
    intent: str
    repetition: int
    text: str
    sound: str = ""  # a non-speech kind of training.corpus.nonspeech; "" for speech
    others: tuple[Voice, ...] = ()  # babble: the voices that say ``text``'s " | "-separated sentences

    @property
    def utterance_id(self) -> str:
        name = self.intent.replace(" ", "-")
        if not re.fullmatch(r"[\w-]+", name):  # a frame label, "SetChannel(channel=four)": a file-name form
            safe = re.sub(r"[^\w-]+", "-", name).strip("-")
            name = f"{safe}-{stable_int(self.intent) % 16**6:06x}"
        return f"{name}-{self.repetition}"

    @property
    def relative_path(self) -> str:
        return f"wavs/speakers/{self.voice.spec}/{self.utterance_id}.wav"


def espeak_command(
    voice: Voice, text: str, out_wav: Path, rng: np.random.Generator, data_path: Path | None = None
) -> list[str]:
    """espeak-ng arguments for one utterance: the voice's prosody, jittered (``data_path``: generated variants)."""
    return [
        "espeak-ng",
        *([f"--path={data_path}"] if data_path else []),
        "-v",
        voice.spec,
        "-s",
        str(int(np.clip(voice.rate + rng.integers(-15, 16), 80, 260))),
        "-p",
        str(int(np.clip(voice.pitch + rng.integers(-8, 9), 0, 99))),
        "-a",
        str(voice.amplitude),
        "-g",
        str(voice.word_gap + int(rng.integers(0, 2))),
        "-w",
        str(out_wav),
        text,
    ]


def speak(
    voice: Voice, text: str, rng: np.random.Generator, tmp_dir: Path, data_path: Path | None = None
) -> np.ndarray:
    """espeak-ng saying ``text`` in ``voice``, float32 at 16 kHz."""
    text = text + str(rng.choice(["", ".", "!", "?"], p=[0.4, 0.35, 0.1, 0.15]))  # sets the intonation
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmp_dir) as tmp:
        cmd = espeak_command(voice, text, Path(tmp.name), rng, data_path)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SynthError(f"espeak-ng failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr.strip()}")
        speech, rate = soundfile.read(tmp.name, dtype="float32", always_2d=True)
    speech = resample(torch.from_numpy(speech.mean(axis=1)), rate).numpy()
    if speech.size == 0 or not np.any(speech):
        raise SynthError(f"espeak-ng produced no audio for {text!r} with voice {voice.spec}")
    return speech


def render(utt: Utterance, seed: int, noise: bool, tmp_dir: Path, data_path: Path | None = None) -> np.ndarray:
    """The utterance as a float32 16 kHz waveform: speech (or a sound), silence, reverb, noise, gain."""
    rng = np.random.default_rng(
        [seed, FSC_SPLITS.index(utt.split), stable_int(utt.voice.spec), stable_int(utt.intent), utt.repetition]
    )
    if utt.sound == "babble":
        voices = [speak(v, t, rng, tmp_dir, data_path) for v, t in zip(utt.others, utt.text.split(" | "))]
        speech = babble(voices, rng, seconds=rng.uniform(1.0, 4.0))
    elif utt.sound:
        speech = nonspeech(utt.sound, rng, seconds=rng.uniform(0.5, 4.0))
        if utt.sound == "silence":  # kept at its own tiny level: no noise, no gain
            return speech
    else:
        speech = speak(utt.voice, utt.text, rng, tmp_dir, data_path)
    speech_rms = max(float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))), 1e-9)

    lead, trail = (int(rng.uniform(0.05, 0.7) * SAMPLE_RATE) for _ in range(2))
    wave = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    if noise:
        if rng.random() < 0.35:
            wave = reverberate(wave, rng)
        background = colored_noise(rng, wave.size, str(rng.choice(NOISE_COLORS)))
        wave = mix_at_snr(wave, background, snr_db=rng.uniform(5.0, 35.0), signal_rms=speech_rms)
    peak = max(float(np.abs(wave).max()), 1e-9)
    wave = wave * (10 ** (rng.uniform(-26.0, -1.0) / 20) / peak)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def reverberate(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room impulse response (exponentially decaying noise, RT60 0.15-0.6 s)."""
    rt60 = rng.uniform(0.15, 0.6)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    impulse = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60) * rng.uniform(0.1, 0.5)
    impulse[0] = 1.0  # the direct path
    n = wave.size + impulse.size - 1
    wet = np.fft.irfft(np.fft.rfft(wave, n) * np.fft.rfft(impulse, n), n)[: wave.size]
    return wet.astype(np.float32)


def write_wav(path: Path, wave: np.ndarray) -> None:
    """PCM-16 WAV via temp file + rename (no fsync: a half-written corpus is regenerated anyway)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def render_all(
    root: Path, utterances: list[Utterance], *, seed: int, noise: bool, workers: int, progress: bool
) -> None:
    """Render and write every clip, ``workers`` espeak-ng processes at a time."""
    # Parallelism comes from the worker threads; torch's own threads would only contend with
    # them (a 2-s resample takes ~1 ms on one thread, ~50 ms with two busy cores oversubscribed)
    # and a fixed thread count keeps the float results identical from run to run.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="quads-synth-") as tmp, ThreadPoolExecutor(workers) as pool:
            generated = sorted({u.voice.spec.partition("+")[2] for u in utterances} - {""})
            generated = [v for v in generated if is_generated(v)]
            data_path = build_variant_data_dir(Path(tmp), generated, seed) if generated else None

            def make_clip(utt: Utterance) -> None:
                write_wav(root / utt.relative_path, render(utt, seed, noise, Path(tmp), data_path))

            clips = pool.map(make_clip, utterances)
            for _ in tqdm(clips, total=len(utterances), desc="synthesising", unit="clip", disable=not progress):
                pass
    finally:
        torch.set_num_threads(torch_threads)
