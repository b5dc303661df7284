"""``quads-synth``: a synthetic spoken-command corpus in the Fluent Speech Commands layout.

Every FSC intent is spoken in several natural phrasings (``PHRASINGS``) by espeak-ng voices:
an English accent combined with a voice variant (``en-gb-scotland+klatt2``), each voice with its
own rate, pitch, amplitude and word gap, jittered per utterance. Each clip then gets random
leading/trailing silence, optionally room reverberation and white/pink/brown background noise at
a random SNR, and a random gain. Train, valid and test use disjoint variants, hence disjoint
voices, so test accuracy measures generalisation to unheard voices.

The output is deterministic for a seed (same seed, same espeak-ng: byte-identical files):
every random draw comes from a generator seeded by (seed, split, voice, intent, repetition),
independent of the order in which the worker threads finish.

Layout written (readable by ``training.datasets.load_fsc``)::

    ROOT/data/{train,valid,test}_data.csv     ,path,speakerId,transcription,action,object,location
    ROOT/wavs/speakers/<voice spec>/<id>.wav  16 kHz mono PCM-16
    ROOT/synth.json, ROOT/README.txt          seed, voices and settings
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from core.audio import SAMPLE_RATE, resample
from core.tensor_files import atomic_write
from training.datasets import FSC_COLUMNS, FSC_INTENTS, FSC_SPLITS
from training.espeak_voices import (
    DEFAULT_VOICES_PER_SPLIT,
    Voice,
    build_variant_data_dir,
    default_voices,
    is_generated,
    stable_int,
)
from training.features import NOISE_COLORS, colored_noise, mix_at_snr
from training.phrasings import PHRASINGS, phrasings_of



class SynthError(RuntimeError):
    """espeak-ng is missing or failed, or the output folder cannot be used."""


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Utterance:
    """One clip to synthesise: who says what, and which repetition of the intent it is."""

    split: str
    voice: Voice
    intent: str
    repetition: int
    text: str

    @property
    def utterance_id(self) -> str:
        return f"{self.intent.replace(' ', '-')}-{self.repetition}"

    @property
    def relative_path(self) -> str:
        return f"wavs/speakers/{self.voice.spec}/{self.utterance_id}.wav"


def espeak_command(voice: Voice, text: str, out_wav: Path, rng: np.random.Generator, data_path: Path | None = None) -> list[str]:
    """espeak-ng arguments for one utterance: the voice's prosody, jittered (``data_path``: generated variants)."""
    return [
        "espeak-ng",
        *([f"--path={data_path}"] if data_path else []),
        "-v", voice.spec,
        "-s", str(int(np.clip(voice.rate + rng.integers(-15, 16), 80, 260))),
        "-p", str(int(np.clip(voice.pitch + rng.integers(-8, 9), 0, 99))),
        "-a", str(voice.amplitude),
        "-g", str(voice.word_gap + int(rng.integers(0, 2))),
        "-w", str(out_wav),
        text,
    ]  # fmt: skip


def render(utt: Utterance, seed: int, noise: bool, tmp_dir: Path, data_path: Path | None = None) -> np.ndarray:
    """The utterance as a float32 16 kHz waveform: espeak-ng speech, silence, reverb, noise, gain."""
    rng = np.random.default_rng(
        [seed, FSC_SPLITS.index(utt.split), stable_int(utt.voice.spec), stable_int(utt.intent), utt.repetition]
    )
    text = utt.text + str(rng.choice(["", ".", "!", "?"], p=[0.4, 0.35, 0.1, 0.15]))  # sets the intonation
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmp_dir) as tmp:
        cmd = espeak_command(utt.voice, text, Path(tmp.name), rng, data_path)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SynthError(f"espeak-ng failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr.strip()}")
        speech, rate = soundfile.read(tmp.name, dtype="float32", always_2d=True)
    speech = resample(torch.from_numpy(speech.mean(axis=1)), rate).numpy()
    if speech.size == 0 or not np.any(speech):
        raise SynthError(f"espeak-ng produced no audio for {text!r} with voice {utt.voice.spec}")
    speech_rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))

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


def _write_wav(path: Path, wave: np.ndarray) -> None:
    """PCM-16 WAV via temp file + rename (no fsync: a half-written corpus is regenerated anyway)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


# -------------------------------------------------------------------------------- corpus


def synthesize_corpus(
    root: Path,
    *,
    intents: list[str] | None = None,
    voices: dict[str, list[str]] | None = None,
    utterances_per_voice: int = 1,
    phrasings: int | None = None,
    phrasing_set: str = "seen",
    seed: int = 0,
    noise: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Write a synthetic corpus in the FSC layout under ``root`` and return ``root``.

    intents: FSC intents to cover (default: all 31). voices: split -> espeak-ng voice specs
    (default: ``default_voices(DEFAULT_VOICES_PER_SPLIT, seed)``); they must not repeat across
    splits. Each voice says each intent ``utterances_per_voice`` times, cycling through the
    first ``phrasings`` phrasings of the intent (default: all) in ``phrasing_set`` ("seen": every
    phrasing but the last, which "held-out" reserves for testing paraphrases). ``noise=False`` writes clean
    speech (silence padding and gain only). ``workers`` espeak-ng processes run at once.
    """
    root = Path(root)
    intents = list(FSC_INTENTS if intents is None else intents)
    voices = default_voices(DEFAULT_VOICES_PER_SPLIT, seed) if voices is None else voices
    _check_arguments(intents, voices, utterances_per_voice, phrasings, workers)
    phrasings_of("change language_none_none", phrasing_set)  # checks the name
    if shutil.which("espeak-ng") is None:
        raise SynthError("espeak-ng is not installed (apt-get install espeak-ng)")
    _prepare_root(root)

    voice_objects = {split: [Voice.from_spec(spec, seed) for spec in specs] for split, specs in voices.items()}
    utterances = plan_utterances(voice_objects, intents, utterances_per_voice, phrasings, phrasing_set)
    metadata = {
        "generator": "quads-synth",
        "seed": seed,
        "espeak_ng": subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip(),
        "sample_rate": SAMPLE_RATE,
        "intents": intents,
        "utterances_per_voice": utterances_per_voice,
        "phrasings": phrasings,
        "phrasing_set": phrasing_set,
        "noise": noise,
        "voices": {split: [asdict(v) for v in vs] for split, vs in voice_objects.items()},
        "clips": {split: len(vs) * len(intents) * utterances_per_voice for split, vs in voice_objects.items()},
    }
    _write_text(root / "synth.json", json.dumps(metadata, indent=2) + "\n")
    _write_text(root / "README.txt", _readme(metadata))

    for voice in {v.spec for vs in voice_objects.values() for v in vs}:
        (root / "wavs" / "speakers" / voice).mkdir(parents=True, exist_ok=True)
    render_all(root, utterances, seed, noise, workers, progress)
    for split in voice_objects:  # the index files last: a corpus with CSVs is complete
        rows = [u for u in utterances if u.split == split]
        _write_text(root / "data" / f"{split}_data.csv", _fsc_csv(rows))
    return root


def plan_utterances(voices: dict[str, list[Voice]], intents: list[str], utterances_per_voice: int,
                    phrasings: int | None, phrasing_set: str) -> list[Utterance]:
    """Every clip of the corpus: each voice says each intent ``utterances_per_voice`` times,
    cycling through the intent's first ``phrasings`` phrasings (voice by voice, so that the
    phrasings spread evenly over the voices)."""
    utterances = []
    for split, split_voices in voices.items():
        for v, voice in enumerate(split_voices):
            for intent in intents:
                choices = phrasings_of(intent, phrasing_set)[:phrasings]
                for r in range(utterances_per_voice):
                    text = choices[(v * utterances_per_voice + r) % len(choices)]
                    utterances.append(Utterance(split, voice, intent, r, text))
    return utterances


def render_all(root: Path, utterances: list[Utterance], seed: int, noise: bool, workers: int, progress: bool) -> None:
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
                _write_wav(root / utt.relative_path, render(utt, seed, noise, Path(tmp), data_path))

            clips = pool.map(make_clip, utterances)
            for _ in tqdm(clips, total=len(utterances), desc="synthesising", unit="clip", disable=not progress):
                pass
    finally:
        torch.set_num_threads(torch_threads)


def _check_arguments(intents, voices, utterances_per_voice, phrasings, workers) -> None:
    unknown = [i for i in intents if i not in PHRASINGS]
    if unknown or not intents:
        raise ValueError(f"no phrasings for intent(s) {unknown}; known intents: {list(PHRASINGS)}")
    if len(set(intents)) != len(intents):
        raise ValueError("intents repeat")
    if set(voices) - set(FSC_SPLITS) or not voices:
        raise ValueError(f"voices must map some of {FSC_SPLITS} to voice specs, got splits {list(voices)}")
    seen: dict[str, str] = {}
    for split, specs in voices.items():
        if not specs:
            raise ValueError(f"no voices for the {split} split")
        for spec in specs:
            if not spec or "/" in spec or spec.startswith((".", "-")) or any(c.isspace() for c in spec):
                raise ValueError(f"{spec!r} is not an espeak-ng voice spec like 'en-us+f3'")
            if spec in seen:
                raise ValueError(f"voice {spec!r} is in both {seen[spec]} and {split}: splits must not share voices")
            seen[spec] = split
    if utterances_per_voice < 1 or (phrasings is not None and phrasings < 1) or workers < 1:
        raise ValueError("utterances_per_voice, phrasings and workers must be at least 1")


def _prepare_root(root: Path) -> None:
    """Create ``root``, or clear the corpus an earlier run left there; never touch anything else."""
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root} is a file, not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not (root / "synth.json").is_file():
            raise SynthError(f"{root} is not empty and holds no synthetic corpus: refusing to write into it")
        for name in ("data", "wavs"):
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)


def _fsc_csv(rows: list[Utterance]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["", *FSC_COLUMNS])
    for index, utt in enumerate(rows):
        action, obj, location = utt.intent.split("_")
        transcription = utt.text[0].upper() + utt.text[1:]
        writer.writerow([index, utt.relative_path, utt.voice.spec, transcription, action, obj, location])
    return buffer.getvalue()


def _readme(metadata: dict) -> str:
    lines = [
        "Synthetic spoken-command corpus written by quads-synth (QUADS), in the Fluent Speech Commands layout.",
        "Speech: espeak-ng voices (accent+variant; speakerId is the voice spec), 16 kHz mono PCM-16.",
        f"Seed {metadata['seed']}; noise {'on' if metadata['noise'] else 'off'}; "
        f"{metadata['utterances_per_voice']} utterance(s) per voice and intent; {metadata['espeak_ng']}.",
        "Splits have disjoint voices. See synth.json for every voice's prosody.",
        "",
    ]
    for split, voices in metadata["voices"].items():
        specs = " ".join(v["spec"] for v in voices)
        lines.append(f"{split}: {metadata['clips'][split]} clips, {len(voices)} voices: {specs}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
