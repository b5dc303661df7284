"""``quads-synth``: a synthetic spoken-command corpus in the Fluent Speech Commands layout.

Every intent of a context (``training.context``; by default the FSC one, ``contexts/fsc.yaml``)
is spoken in sentences sampled from its expansions, by espeak-ng voices: an English accent
combined with a voice variant (``en-gb-scotland+klatt2``), each voice with its own rate, pitch,
amplitude and word gap, jittered per utterance. Optionally each voice also says non-commands
(``contexts/not-commands.yaml``) and each split gets non-speech sounds (``training.corpus.nonspeech``:
silence, noise, tones, music, clicks, hum, and babble of several voices at once), all labelled
``REFUSAL_LABEL``, so a model learns to answer "not understood". Each clip then gets random
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

A context whose labels are no FSC action_object_location (frames with slots, ``core.frames``)
is indexed by manifests instead (``training.datasets.load_manifest``)::

    ROOT/{train,valid,test}.csv               path,label,speaker,text
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
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
from core.refusal import REFUSAL_LABEL
from core.tensor_files import atomic_write
from training.augmentation import NOISE_COLORS, colored_noise, mix_at_snr
from training.context import Context, Phrase, load_context, shared_sentences
from training.corpus.espeak_voices import (
    DEFAULT_VOICES_PER_SPLIT,
    Voice,
    build_variant_data_dir,
    default_voices,
    is_generated,
    stable_int,
)
from training.corpus.nonspeech import SOUND_KINDS, babble, nonspeech
from training.datasets import FSC_COLUMNS, FSC_SPLITS

# A sentence is drawn by template first (each template of an intent equally likely), then, this
# often, as the template's plain form ("turn on the lights"), else any expansion ("could you
# please turn on the lighting now"): plain forms are what people say most.
PLAIN_SHARE = 0.35
BABBLE_VOICES = (3, 6)  # how many voices talk at once in a babble clip


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


# -------------------------------------------------------------------------------- corpus


def synthesize_corpus(
    root: Path,
    *,
    context: Context | None = None,
    intents: list[str] | None = None,
    voices: dict[str, list[str]] | None = None,
    utterances_per_voice: int | dict[str, int] = 1,
    not_commands: Context | None = None,
    not_commands_per_voice: int = 0,
    nonspeech_per_voice: int = 0,
    seed: int = 0,
    noise: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Write a synthetic corpus in the FSC layout under ``root`` and return ``root``.

    context: the commands (default: ``contexts/fsc.yaml``); intents: those of its intents to
    speak (default: all). voices: split -> espeak-ng voice specs (default:
    ``default_voices(DEFAULT_VOICES_PER_SPLIT, seed)``); they must not repeat across splits.
    Each voice says each intent ``utterances_per_voice`` times (or ``utterances_per_voice[intent]``),
    each time a frame of the intent (its slot values, ``Context.frames``), the frames in turn
    across the split's voices, and a sentence of that frame (``choose_phrase``); and
    ``not_commands_per_voice`` sentences of
    ``not_commands`` (those the context does not itself say), and each voice's folder gets
    ``nonspeech_per_voice`` sounds, cycling through ``SOUND_KINDS``; both labelled
    ``REFUSAL_LABEL``. ``noise=False`` writes clean speech (silence padding and gain only).
    ``workers`` espeak-ng processes run at once.
    """
    root = Path(root)
    context = load_context("fsc") if context is None else context
    intents = list(context.names if intents is None else intents)
    voices = default_voices(DEFAULT_VOICES_PER_SPLIT, seed) if voices is None else voices
    if isinstance(utterances_per_voice, int):
        utterances_per_voice = dict.fromkeys(intents, utterances_per_voice)
    _check_arguments(
        context, intents, voices, utterances_per_voice, not_commands_per_voice + nonspeech_per_voice, workers
    )
    if not_commands_per_voice and not_commands is None:
        raise ValueError("not_commands_per_voice needs a not_commands context")
    if shutil.which("espeak-ng") is None:
        raise SynthError("espeak-ng is not installed (apt-get install espeak-ng)")
    _prepare_root(root)

    voice_objects = {split: [Voice.from_spec(spec, seed) for spec in specs] for split, specs in voices.items()}
    refusals = refusal_phrases(context, not_commands) if not_commands_per_voice else []
    utterances = plan_utterances(voice_objects, context, intents, utterances_per_voice, seed)
    babble_phrases = refusals or [p for phrases in context.intents.values() for p in phrases]
    utterances += plan_refusals(
        voice_objects, refusals, not_commands_per_voice, nonspeech_per_voice, seed, babble_phrases
    )
    metadata = _corpus_metadata(
        seed, context, not_commands if refusals else None, intents, utterances_per_voice, voice_objects, utterances
    )
    metadata.update(not_commands_per_voice=not_commands_per_voice, nonspeech_per_voice=nonspeech_per_voice, noise=noise)
    _write_text(root / "synth.json", json.dumps(metadata, indent=2) + "\n")
    _write_text(root / "README.txt", _readme(metadata))

    for voice in {v.spec for vs in voice_objects.values() for v in vs}:
        (root / "wavs" / "speakers" / voice).mkdir(parents=True, exist_ok=True)
    render_all(root, utterances, seed, noise, workers, progress)
    _write_index(root, utterances, list(voice_objects))
    return root


def _corpus_metadata(
    seed: int,
    context: Context,
    not_commands: Context | None,
    intents: list[str],
    per_voice: dict[str, int],
    voices: dict[str, list[Voice]],
    utterances: list,
) -> dict:
    """What ``synth.json`` records: the generator, its inputs' hashes, the voices and the clip counts."""
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    counts = set(per_voice.values())
    return {
        "generator": "quads-synth",
        "seed": seed,
        "espeak_ng": espeak,
        "sample_rate": SAMPLE_RATE,
        "context": {"path": str(context.path), "sha256": context.sha256},
        "not_commands": {"path": str(not_commands.path), "sha256": not_commands.sha256} if not_commands else None,
        "intents": intents,
        "refusal_label": REFUSAL_LABEL,
        "utterances_per_voice": next(iter(counts)) if len(counts) == 1 else per_voice,
        "voices": {split: [asdict(v) for v in vs] for split, vs in voices.items()},
        "clips": {split: sum(u.split == split for u in utterances) for split in voices},
    }


def _write_index(root: Path, utterances: list, splits: list[str]) -> None:
    """The index files, written last (a corpus with them is complete): FSC's CSVs when every label
    is an FSC action_object_location, else a manifest per split."""
    fsc_layout = all(_is_fsc_label(u.intent) for u in utterances)
    for split in splits:
        rows = [u for u in utterances if u.split == split]
        if fsc_layout:
            _write_text(root / "data" / f"{split}_data.csv", _fsc_csv(rows))
        else:
            _write_text(root / f"{split}.csv", _manifest_csv(rows))


def corpus_complete(root: Path, split: str = "test") -> bool:
    """Whether ``root`` holds a finished corpus with ``split`` (its index file is written last)."""
    return (root / "data" / f"{split}_data.csv").is_file() or (root / f"{split}.csv").is_file()


def choose_phrase(phrases: list[Phrase], rng: np.random.Generator) -> Phrase:
    """A template of the intent uniformly, then its plain form (``PLAIN_SHARE``) or any of its expansions."""
    templates = sorted({p.template for p in phrases})
    template = templates[int(rng.integers(len(templates)))]
    pool = [p for p in phrases if p.template == template]
    plain = [p for p in pool if p.plain]
    if plain and rng.random() < PLAIN_SHARE:
        pool = plain
    return pool[int(rng.integers(len(pool)))]


def plan_utterances(
    voices: dict[str, list[Voice]],
    context: Context,
    intents: list[str],
    utterances_per_voice: dict[str, int],
    seed: int,
) -> list[Utterance]:
    """Every command clip: each voice says each intent ``utterances_per_voice[intent]`` times.
    Its frames (slot values) take turns across the split's clips of the intent, in an order
    shuffled per intent, so every frame is said about equally often and by different voices; a
    sentence of the frame is drawn for each (voice, intent, repetition) from its own generator.
    The clip's label is the frame's (``core.frames``; an FSC intent is its own only frame)."""
    frames = {intent: list(context.frames(intent).items()) for intent in intents}
    order = {i: np.random.default_rng([seed, stable_int(i), 4]).permutation(len(f)) for i, f in frames.items()}
    utterances = []
    for split, split_voices in voices.items():
        for v, voice in enumerate(split_voices):
            for intent in intents:
                n = utterances_per_voice[intent]
                for r in range(n):
                    label, phrases = frames[intent][order[intent][(v * n + r) % len(frames[intent])]]
                    rng = np.random.default_rng([seed, stable_int(voice.spec), stable_int(intent), r, 1])
                    utterances.append(Utterance(split, voice, label, r, choose_phrase(phrases, rng).text))
    return utterances


def refusal_phrases(context: Context, not_commands: Context) -> list[Phrase]:
    """The non-commands' sentences that the context does not say itself (those stay commands)."""
    own = {text for text, _, _ in shared_sentences(context, not_commands)}
    # Templates renumbered across the not-commands' intents, so choose_phrase weighs them all alike.
    phrases, offset = [], 0
    for intent_phrases in not_commands.intents.values():
        phrases += [Phrase(p.text, {}, offset + p.template, p.plain) for p in intent_phrases if p.text not in own]
        offset += max((p.template for p in intent_phrases), default=0) + 1
    return phrases


def plan_refusals(
    voices: dict[str, list[Voice]],
    phrases: list[Phrase],
    per_voice: int,
    sounds_per_voice: int,
    seed: int,
    babble_phrases: list[Phrase],
) -> list[Utterance]:
    """Each voice's non-command sentences, then its folder's non-speech sounds (kinds in turn
    across the split); a babble clip is voices of the split saying ``babble_phrases`` at once."""
    utterances = []
    for split, split_voices in voices.items():
        for v, voice in enumerate(split_voices):
            for r in range(per_voice):
                rng = np.random.default_rng([seed, stable_int(voice.spec), r, 2])
                utterances.append(Utterance(split, voice, REFUSAL_LABEL, r, choose_phrase(phrases, rng).text))
            for k in range(sounds_per_voice):
                kind = SOUND_KINDS[(v * sounds_per_voice + k) % len(SOUND_KINDS)]
                text, others = f"<{kind}>", ()
                if kind == "babble":
                    rng = np.random.default_rng([seed, stable_int(voice.spec), k, 3])
                    talkers = [
                        split_voices[int(i)] for i in rng.integers(len(split_voices), size=rng.integers(*BABBLE_VOICES))
                    ]
                    text, others = " | ".join(choose_phrase(babble_phrases, rng).text for _ in talkers), tuple(talkers)
                utterances.append(Utterance(split, voice, REFUSAL_LABEL, per_voice + k, text, kind, others))
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
                write_wav(root / utt.relative_path, render(utt, seed, noise, Path(tmp), data_path))

            clips = pool.map(make_clip, utterances)
            for _ in tqdm(clips, total=len(utterances), desc="synthesising", unit="clip", disable=not progress):
                pass
    finally:
        torch.set_num_threads(torch_threads)


def _check_arguments(context, intents, voices, utterances_per_voice, refusals_per_voice, workers) -> None:
    unknown = [i for i in intents if i not in context.intents]
    if unknown or not intents:
        raise ValueError(f"no sentences for intent(s) {unknown} in {context.path}; its intents: {context.names}")
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
    if (
        set(utterances_per_voice) != set(intents)
        or min(utterances_per_voice.values()) < 0
        or refusals_per_voice < 0
        or workers < 1
        or max(utterances_per_voice.values()) + refusals_per_voice < 1
    ):
        raise ValueError(
            "utterances_per_voice and the refusals must not be negative, some clips must be asked for, "
            "and workers must be at least 1"
        )


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
        action, obj, location = fsc_fields(utt.intent)
        transcription = utt.text[0].upper() + utt.text[1:]
        if utt.sound == "babble":
            transcription = f"<babble> {utt.text}"
        writer.writerow([index, utt.relative_path, utt.voice.spec, transcription, action, obj, location])
    return buffer.getvalue()


def _manifest_csv(rows: list[Utterance]) -> str:
    """A ``training.datasets.load_manifest`` CSV, for labels that are no FSC action_object_location."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "speaker", "text"])
    for utt in rows:
        text = f"<babble> {utt.text}" if utt.sound == "babble" else utt.text
        writer.writerow([utt.relative_path, utt.intent, utt.voice.spec, text])
    return buffer.getvalue()


def _is_fsc_label(label: str) -> bool:
    parts = label.split("_")
    return len(parts) == 3 and all(parts)


def fsc_fields(label: str) -> tuple[str, str, str]:
    """FSC's action, object and location columns for a label (``fsc_label``'s inverse)."""
    parts = label.split("_")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"label {label!r} is not action_object_location, so it cannot be written in the FSC layout")
    return parts[0], parts[1], parts[2]


def _readme(metadata: dict) -> str:
    lines = [
        "Synthetic spoken-command corpus written by quads-synth (QUADS), in the Fluent Speech Commands layout.",
        "Speech: espeak-ng voices (accent+variant; speakerId is the voice spec), 16 kHz mono PCM-16.",
        f"Seed {metadata['seed']}; noise {'on' if metadata['noise'] else 'off'}; "
        f"{metadata['utterances_per_voice']} utterance(s) per voice and intent; {metadata['espeak_ng']}.",
        f"Context {metadata['context']['path']} (sha256 {metadata['context']['sha256'][:12]}); "
        f"{metadata['not_commands_per_voice']} non-command(s) and {metadata['nonspeech_per_voice']} non-speech "
        f"sound(s) per voice, labelled {metadata['refusal_label']}.",
        "Splits have disjoint voices. See synth.json for every voice's prosody.",
        "",
    ]
    for split, voices in metadata["voices"].items():
        specs = " ".join(v["spec"] for v in voices)
        lines.append(f"{split}: {metadata['clips'][split]} clips, {len(voices)} voices: {specs}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
