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
from pathlib import Path

import numpy as np

GENERATED_PREFIX = "qv"
HELD_OUT_FAMILY = "klatt"  # variants named klatt, klatt2..klatt6


class EspeakDataError(RuntimeError):
    """espeak-ng's data folder cannot be found."""


def is_generated(variant: str) -> bool:
    return variant.startswith(GENERATED_PREFIX) and variant[len(GENERATED_PREFIX):].isdigit()


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
        raise EspeakDataError(f"espeak-ng's data folder was not found (espeak-ng --version says {result.stdout.strip()!r})")
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
