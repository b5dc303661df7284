"""A synthetic corpus's files: its folder, its index (FSC's CSVs or manifests) and its README.

The index files are written last, through ``atomic_write``, so a folder with them holds a
finished corpus (``corpus_complete``) and an interrupted run is simply started again.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from core.tensor_files import atomic_write
from training.corpus.render import SynthError, Utterance
from training.datasets import FSC_COLUMNS


def write_index(root: Path, utterances: list, splits: list[str]) -> None:
    """The index files, written last (a corpus with them is complete): FSC's CSVs when every label
    is an FSC action_object_location, else a manifest per split."""
    fsc_layout = all(_is_fsc_label(u.intent) for u in utterances)
    for split in splits:
        rows = [u for u in utterances if u.split == split]
        if fsc_layout:
            write_text(root / "data" / f"{split}_data.csv", _fsc_csv(rows))
        else:
            write_text(root / f"{split}.csv", _manifest_csv(rows))


def corpus_complete(root: Path, split: str = "test") -> bool:
    """Whether ``root`` holds a finished corpus with ``split`` (its index file is written last)."""
    return (root / "data" / f"{split}_data.csv").is_file() or (root / f"{split}.csv").is_file()


def prepare_root(root: Path) -> None:
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


def corpus_readme(metadata: dict) -> str:
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


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
