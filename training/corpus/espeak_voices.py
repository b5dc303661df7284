"""New espeak-ng voices: random voice-variant files (pitch, formants, breathiness, roughness).

espeak-ng ships about a hundred voice variants; a model trained on them learns their quirks.
A variant is a small text file (``voices/!v/<name>``) of pitch, formant and voice-quality
settings, so any number of new speakers can be drawn at random. espeak-ng reads variants only
from its data folder, so ``VariantDataDir`` builds a private copy of that folder (symbolic links
to the system's files, plus the generated variants) and espeak-ng is pointed at it with
``--path``. Generated variant names start with ``qv`` (QUADS variant) and are deterministic:
the same name and seed always give the same file.

Klatt-synthesis variants (``klatt``..``klatt6``) are never generated: that family is held out
of training as a proxy for a speech engine the model never heard.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import FSC_SPLITS

GENERATED_PREFIX = "qv"
HELD_OUT_FAMILY = "klatt"  # variants named klatt, klatt2..klatt6


class EspeakDataError(RuntimeError):
    """espeak-ng's data folder cannot be found."""


def is_generated(variant: str) -> bool:
    return variant.startswith(GENERATED_PREFIX) and variant[len(GENERATED_PREFIX) :].isdigit()


def generated_variant_names(count: int, start: int = 0) -> list[str]:
    return [f"{GENERATED_PREFIX}{i:04d}" for i in range(start, start + count)]


def variant_file(name: str, seed: int) -> str:
    """The text of a random variant file: a speaker drawn from (seed, name).

    One vocal-tract scale moves all formants together (longer tract: lower formants), as between
    real speakers; each formant then gets its own small jitter, width and strength.
    """
    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")])
    female = rng.random() < 0.5
    base = rng.uniform(150, 230) if female else rng.uniform(75, 135)
    tract = rng.uniform(100, 118) if female else rng.uniform(86, 104)  # % of espeak's formant frequencies
    lines = [
        "language variant",
        f"name {name}",
        f"gender {'female' if female else 'male'}",
        "",
        f"pitch {int(base)} {int(base * rng.uniform(1.2, 1.9))}",
    ]
    for k in range(9):
        freq = int(tract * rng.uniform(0.96, 1.04))
        strength = int(rng.uniform(70, 130))
        width = int(rng.uniform(70, 160))
        lines.append(f"formant {k} {freq} {strength} {width}")
    if rng.random() < 0.4:
        lines.append("breath " + " ".join(str(int(rng.integers(0, 5))) for _ in range(8)))
    if rng.random() < 0.3:
        lines.append(f"roughness {int(rng.integers(1, 5))}")
    if rng.random() < 0.3:
        lines.append(f"flutter {int(rng.integers(2, 20))}")
    lines.append(f"consonants {int(rng.uniform(80, 130))}")
    return "\n".join(lines) + "\n"


def system_data_dir() -> Path:
    """espeak-ng's installed data folder (the one holding ``phontab``)."""
    result = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/x86_64-linux-gnu/espeak-ng-data"
    _, _, tail = result.stdout.partition("Data at:")
    path = Path(tail.strip())
    if not (path / "phontab").is_file():
        raise EspeakDataError(
            f"espeak-ng's data folder was not found (espeak-ng --version says {result.stdout.strip()!r})"
        )
    return path


def build_variant_data_dir(root: Path, variants: list[str], seed: int) -> Path:
    """Write ``root/espeak-ng-data`` (the system's files, linked, plus ``variants``); returns ``root`` for ``--path``."""
    system = system_data_dir()
    data = root / "espeak-ng-data"
    if data.exists():
        shutil.rmtree(data)
    (data / "voices" / "!v").mkdir(parents=True)
    for entry in system.iterdir():
        if entry.name != "voices":
            (data / entry.name).symlink_to(entry)
    for entry in (system / "voices").iterdir():
        if entry.name != "!v":
            (data / "voices" / entry.name).symlink_to(entry)
    for entry in (system / "voices" / "!v").iterdir():
        (data / "voices" / "!v" / entry.name).symlink_to(entry)
    for name in variants:
        (data / "voices" / "!v" / name).write_text(variant_file(name, seed))
    return root


# -------------------------------------------------------------------- voices of a corpus
# espeak-ng English accents (`espeak-ng --voices=en`; "en" is an alias of en-gb) and voice
# variants (`espeak-ng --voices=variant`, file names; "fast" is a test variant and "Mr serious"
# has a space). A voice spec is "<accent>+<variant>".

ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = (
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "AnxiousAndy",
    "Demonic",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "RicishayMax",
    "RicishayMax2",
    "RicishayMax3",
    "Storm",
    "Tweaky",
    "UniRobot",
    "adam",
    "anika",
    "anikaRobot",
    "announcer",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "croak",
    "david",
    "ed",
    "edward",
    "edward2",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "grandma",
    "grandpa",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "kaukovalta",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "linda",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "robosoft",
    "robosoft2",
    "robosoft3",
    "robosoft4",
    "robosoft5",
    "robosoft6",
    "robosoft7",
    "robosoft8",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "travis",
    "victor",
    "whisper",
    "whisperf",
    "zac",
)

# Variants that training draws from: the stock ones but the held-out Klatt family, plus as many
# generated ones (``training.corpus.espeak_voices``) as there are voices.
TRAINABLE_VARIANTS = tuple(v for v in VARIANTS if not v.startswith(HELD_OUT_FAMILY))
FAMILY_VARIANTS = tuple(v for v in VARIANTS if v.startswith(HELD_OUT_FAMILY))


# 31 intents x (60 + 15 + 15) voices = 2790 clips, every voice a different variant.
DEFAULT_VOICES_PER_SPLIT = {"train": 60, "valid": 15, "test": 15}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng voice spec and its base prosody."""

    spec: str  # espeak-ng -v, e.g. "en-gb-scotland+klatt2"; also the corpus speakerId
    rate: int  # words per minute (-s)
    pitch: int  # 0-99 (-p)
    amplitude: int  # 0-200 (-a)
    word_gap: int  # extra pause between words, in 10 ms (-g)

    @classmethod
    def from_spec(cls, spec: str, seed: int) -> Voice:
        """The voice's base prosody, drawn from (seed, spec): the same spec sounds the same in any split."""
        rng = np.random.default_rng([seed, stable_int(spec)])
        return cls(
            spec=spec,
            rate=int(rng.integers(125, 191)),
            pitch=int(rng.integers(15, 86)),
            amplitude=int(rng.integers(60, 161)),
            word_gap=int(rng.choice([0, 0, 1, 1, 2, 3])),
        )


def default_voices(counts: dict[str, int], seed: int = 0, generated: bool = True) -> dict[str, list[str]]:
    """``counts[split]`` voice specs per split, with disjoint variants (hence voices) across splits.

    The variants are the stock ones outside the held-out Klatt family and, with ``generated``,
    as many random ones (``qv0000``...) as there are voices. They are shuffled by ``seed`` and
    dealt to the splits in proportion to their counts (one variant per voice while there are
    enough); each split's voices cycle through the accents.
    """
    unknown = set(counts) - set(FSC_SPLITS)
    if unknown or any(k < 1 for k in counts.values()):
        raise ValueError(f"voice counts need splits among {FSC_SPLITS} and at least 1 voice each, got {counts}")
    rng = np.random.default_rng([seed, stable_int("voices")])
    pool = list(TRAINABLE_VARIANTS) + (generated_variant_names(sum(counts.values())) if generated else [])
    variants = [pool[j] for j in rng.permutation(len(pool))]
    total = sum(counts.values())
    if total <= len(variants):
        n_variants = dict(counts)
    else:
        n_variants = {split: max(1, len(variants) * k // total) for split, k in counts.items()}
        while sum(n_variants.values()) > len(variants):  # the max(1, ...) of tiny splits overdrew
            n_variants[max(n_variants, key=n_variants.get)] -= 1
    voices, start = {}, 0
    for split, k in counts.items():
        nv = n_variants[split]
        if k > nv * len(ACCENTS):
            raise ValueError(
                f"{k} {split} voices asked for, but disjoint splits allow at most {nv * len(ACCENTS)} "
                f"({len(pool)} variants x {len(ACCENTS)} accents shared among {total} voices)"
            )
        split_variants, start = variants[start : start + nv], start + nv
        accents = [ACCENTS[j] for j in rng.permutation(len(ACCENTS))]
        # Voice i: variant i mod nv with a distinct accent per round, so no spec repeats.
        voices[split] = [f"{accents[(i // nv + i % nv) % len(accents)]}+{split_variants[i % nv]}" for i in range(k)]
    return voices


def family_voices(count: int, seed: int = 0) -> list[str]:
    """``count`` voices of the held-out Klatt family (never in ``default_voices``): an unseen-engine proxy."""
    specs = [f"{accent}+{variant}" for variant in FAMILY_VARIANTS for accent in ACCENTS]
    if not 1 <= count <= len(specs):
        raise ValueError(f"the {HELD_OUT_FAMILY} family has {len(specs)} voices, {count} asked for")
    rng = np.random.default_rng([seed, stable_int("family")])
    return [specs[j] for j in rng.permutation(len(specs))[:count]]


def stable_int(text: str) -> int:
    """A seed from ``text`` that is the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
