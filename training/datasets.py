"""Dataset loaders: Fluent Speech Commands, SLURP and plain manifests, all as lists of ``Sample``.

A loader only reads the index files (CSV/JSONL) and resolves audio paths; it does not open the
audio. Checking that each file exists and decodes, and what to do when it does not, is
``training.features.MelDataset``'s job. Malformed index files raise ``DatasetError`` naming the
file and line.

Layouts (see docs/data.md):

- FSC: ``ROOT/data/{train,valid,test}_data.csv`` with the header
  ``,path,speakerId,transcription,action,object,location`` (the first column is an unnamed
  index) and audio paths relative to ``ROOT``. Label: ``f"{action}_{object}_{location}"``.
- SLURP: ``ROOT/dataset/slurp/{train,devel,test,train_synthetic}.jsonl``, audio in
  ``ROOT/audio/slurp_real`` and ``ROOT/audio/slurp_synth`` (or directly under ``ROOT``).
  Label: ``f"{scenario}_{action}"``; every recording of an entry is one sample.
- Manifest: a CSV (header) or JSONL file with ``path,label`` and optionally ``speaker,text``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.refusal import REFUSAL_LABEL

# The 31 Fluent Speech Commands intents, f"{action}_{object}_{location}". The service returns
# these exact strings, so keep the spelling (including the space in "change language").
FSC_INTENTS: list[str] = [
    "change language_none_none",
    "activate_music_none",
    "activate_lights_none",
    "deactivate_lights_none",
    "increase_volume_none",
    "decrease_volume_none",
    "increase_heat_none",
    "decrease_heat_none",
    "deactivate_music_none",
    "activate_lamp_none",
    "deactivate_lamp_none",
    "activate_lights_kitchen",
    "activate_lights_bedroom",
    "activate_lights_washroom",
    "deactivate_lights_kitchen",
    "deactivate_lights_bedroom",
    "deactivate_lights_washroom",
    "increase_heat_kitchen",
    "increase_heat_bedroom",
    "increase_heat_washroom",
    "decrease_heat_kitchen",
    "decrease_heat_bedroom",
    "decrease_heat_washroom",
    "bring_newspaper_none",
    "bring_juice_none",
    "bring_socks_none",
    "bring_shoes_none",
    "change language_Chinese_none",
    "change language_Korean_none",
    "change language_English_none",
    "change language_German_none",
]

FSC_COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
FSC_SPLITS = ("train", "valid", "test")
SLURP_SPLITS = ("train", "devel", "test")
MANIFEST_SUFFIXES = (".csv", ".jsonl")

# Splits are spelled "valid" in FSC and "devel" in SLURP; either name works with either corpus.
_SPLIT_ALIASES = {"valid": "devel", "devel": "valid", "dev": "valid", "validation": "valid"}


class DatasetError(ValueError):
    """An index file is missing or malformed. The message names the file (and line)."""


@dataclass(frozen=True)
class Sample:
    """One labelled recording. ``path`` is absolute (or relative to the working directory)."""

    path: Path
    label: str
    speaker: str = ""
    text: str = ""


def fsc_label(action: str, obj: str, location: str) -> str:
    """FSC intent label, e.g. ``fsc_label("activate", "lights", "kitchen") == "activate_lights_kitchen"``."""
    return f"{action}_{obj}_{location}"


def _split_name(split: str, valid: tuple[str, ...], corpus: str) -> str:
    if split in valid:
        return split
    alias = _SPLIT_ALIASES.get(split)
    if alias in valid:
        return alias
    raise DatasetError(f"unknown {corpus} split {split!r}; expected one of {', '.join(valid)}")


# --------------------------------------------------------------------------------------- FSC


def find_fsc_root(root: str | os.PathLike) -> Path | None:
    """The folder holding ``data/*_data.csv``: ``root`` itself or ``root/fluent_speech_commands_dataset``."""
    root = Path(root)
    for candidate in (root, root / "fluent_speech_commands_dataset"):
        if any((candidate / "data" / f"{s}_data.csv").is_file() for s in FSC_SPLITS):
            return candidate
    return None


def load_fsc(root: str | os.PathLike, split: str) -> list[Sample]:
    """Samples of one FSC split (``train``, ``valid`` or ``test``) in file order.

    ``root`` is the folder that contains ``data/`` and ``wavs/`` (or its parent).
    """
    split = _split_name(split, FSC_SPLITS, "FSC")
    base = find_fsc_root(root) or Path(root)
    csv_path = base / "data" / f"{split}_data.csv"
    samples = []
    for line_no, row in _read_csv(csv_path, required=FSC_COLUMNS):
        where = f"{csv_path}:{line_no}"
        values = {c: (row.get(c) or "").strip() for c in FSC_COLUMNS}
        for column in ("path", "action", "object", "location"):
            if not values[column]:
                raise DatasetError(f"{where}: empty {column!r}")
        samples.append(
            Sample(
                path=base / values["path"],
                label=fsc_label(values["action"], values["object"], values["location"]),
                speaker=values["speakerId"],
                text=values["transcription"],
            )
        )
    return samples


# ------------------------------------------------------------------------------------- SLURP


def find_slurp_root(root: str | os.PathLike) -> Path | None:
    """The folder holding ``dataset/slurp/*.jsonl``: ``root`` itself or ``root/slurp``."""
    root = Path(root)
    for candidate in (root, root / "slurp"):
        if (candidate / "dataset" / "slurp").is_dir():
            return candidate
    return None


def _slurp_audio_dir(root: Path, name: str) -> Path:
    """``root/audio/<name>`` or ``root/<name>``: where the SLURP download script put the FLACs."""
    for candidate in (root / "audio" / name, root / name):
        if candidate.is_dir():
            return candidate
    return root / "audio" / name  # missing audio is reported per sample by MelDataset


def load_slurp(root: str | os.PathLike, split: str, *, headset: bool = True, synthetic: bool = False) -> list[Sample]:
    """Samples of one SLURP split (``train``, ``devel``/``valid`` or ``test``): one per recording.

    ``headset=False`` drops the close-talk ``*-headset.flac`` recordings. ``synthetic=True`` adds
    ``train_synthetic.jsonl`` (audio in ``slurp_synth``) to the train split.
    """
    split = _split_name(split, SLURP_SPLITS, "SLURP")
    base = find_slurp_root(root) or Path(root)
    index_dir = base / "dataset" / "slurp"
    sources = [(index_dir / f"{split}.jsonl", _slurp_audio_dir(base, "slurp_real"))]
    if synthetic and split == "train":
        sources.append((index_dir / "train_synthetic.jsonl", _slurp_audio_dir(base, "slurp_synth")))
    samples = []
    for jsonl_path, audio_dir in sources:
        for line_no, entry in _read_jsonl(jsonl_path):
            where = f"{jsonl_path}:{line_no}"
            missing = [k for k in ("scenario", "action", "recordings") if k not in entry]
            if missing:
                raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
            if not isinstance(entry["recordings"], list):
                raise DatasetError(f"{where}: 'recordings' must be a list")
            label = f"{entry['scenario']}_{entry['action']}"
            for recording in entry["recordings"]:
                if not isinstance(recording, dict) or not recording.get("file"):
                    raise DatasetError(f"{where}: a recording without a 'file'")
                file = str(recording["file"])
                if not headset and file.endswith("-headset.flac"):
                    continue
                samples.append(Sample(path=audio_dir / file, label=label, text=str(entry.get("sentence", ""))))
    return samples


# ---------------------------------------------------------------------------------- manifest


def load_manifest(path: str | os.PathLike) -> list[Sample]:
    """Samples listed in a CSV (with a header) or JSONL manifest: ``path,label[,speaker,text]``.

    Relative audio paths resolve against the manifest's folder.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows: Iterable[tuple[int, dict]] = _read_csv(path, required=("path", "label"))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    else:
        raise DatasetError(f"{path}: a manifest must be a .csv or .jsonl file")
    samples = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        audio, label = str(row.get("path") or "").strip(), str(row.get("label") or "").strip()
        if not audio or not label:
            raise DatasetError(f"{where}: every entry needs a non-empty 'path' and 'label'")
        samples.append(
            Sample(
                path=path.parent / audio,  # an absolute ``audio`` replaces the folder
                label=label,
                speaker=str(row.get("speaker") or ""),
                text=str(row.get("text") or ""),
            )
        )
    return samples


# ------------------------------------------------------------------------------ autodetection


def load_samples(source: str | os.PathLike, split: str, **kw) -> list[Sample]:
    """Load ``split`` from whatever ``source`` is.

    - a manifest file (``.csv``/``.jsonl``): its samples (``split`` is not used);
    - an FSC root (``data/*_data.csv``): ``load_fsc``;
    - a SLURP root (``dataset/slurp/``): ``load_slurp``;
    - a folder holding ``{split}.csv`` or ``{split}.jsonl`` manifests.

    ``**kw`` are SLURP's options (``headset``, ``synthetic``); other corpora ignore them, so one
    configuration serves every source.
    """
    unknown = set(kw) - {"headset", "synthetic"}
    if unknown:
        raise TypeError(f"load_samples() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    source = Path(source)
    if source.is_file():
        return load_manifest(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such file or folder")
    if find_fsc_root(source):
        return load_fsc(source, split)
    if find_slurp_root(source):
        return load_slurp(source, split, **kw)
    names = [split] + ([_SPLIT_ALIASES[split]] if split in _SPLIT_ALIASES else [])
    for name in names:
        for suffix in MANIFEST_SUFFIXES:
            if (source / f"{name}{suffix}").is_file():
                return load_manifest(source / f"{name}{suffix}")
    raise DatasetError(
        f"{source}: not a dataset: expected data/{split}_data.csv (FSC), dataset/slurp/ (SLURP) "
        f"or a {split}.csv / {split}.jsonl manifest"
    )


def label_set(samples: Iterable[Sample]) -> list[str]:
    """The distinct labels: in ``FSC_INTENTS`` order if all are FSC intents, else sorted;
    ``REFUSAL_LABEL`` (speech and sounds that are no command) last either way."""
    labels = {s.label for s in samples}
    refusal = [REFUSAL_LABEL] if REFUSAL_LABEL in labels else []
    labels.discard(REFUSAL_LABEL)
    if labels <= set(FSC_INTENTS):
        return [label for label in FSC_INTENTS if label in labels] + refusal
    return sorted(labels) + refusal


# ------------------------------------------------------------------------------------ readers


def _open_text(path: Path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) for each data row; checks the header has ``required`` columns."""
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
        try:
            for row in reader:
                if None in row:  # more fields than the header
                    raise DatasetError(f"{path}:{reader.line_num}: more fields than the header has")
                yield reader.line_num, row
        except csv.Error as e:
            raise DatasetError(f"{path}:{reader.line_num}: {e}") from None
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    with _open_text(path) as f:
        try:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
                if not isinstance(entry, dict):
                    raise DatasetError(f"{path}:{line_no}: expected a JSON object")
                yield line_no, entry
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None
