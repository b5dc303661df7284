"""The report of ``quads-demo --context``: each checkpoint of the build on held-out voices and out-of-domain speech."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core.checkpoint import Checkpoint, load_checkpoint
from core.cpu_features import cpu_model
from core.refusal import REFUSAL_LABEL
from core.tensor_files import atomic_write
from training.context import Context

log = logging.getLogger("quads.build")
MB = 2**20


def intent_accuracy(result: dict, checkpoint: Checkpoint) -> float:
    """Share of command clips answered with the right intent, whatever their slots (from the confusion matrix)."""
    labels, confusion = result["label_names"], result["confusion"]
    intent = [checkpoint.frame(label).intent for label in labels]
    rows = [i for i, label in enumerate(labels) if label != REFUSAL_LABEL]
    total = sum(sum(confusion[i]) for i in rows)
    right = sum(confusion[i][j] for i in rows for j in range(len(labels)) if intent[j] == intent[i])
    return right / total if total else 0.0


def evaluate_build(out: Path, progress: bool) -> list[dict]:
    """Every checkpoint of ``out/model`` on the test split of ``corpus`` and of ``corpus-ood``."""
    from training.evaluate import checkpoint_split, evaluate_checkpoint

    rows = []
    for path in sorted((out / "model").glob("*bit.safetensors"), key=lambda p: -int(p.stem.rsplit("-", 1)[1][:-3])):
        checkpoint = load_checkpoint(path)
        row = {
            "checkpoint": path.name,
            "bits": checkpoint.bits,
            "file_bytes": checkpoint.file_bytes,
            "threshold": checkpoint.threshold,
        }
        test = evaluate_checkpoint(
            checkpoint, checkpoint_split(checkpoint, out / "corpus", "test", progress=progress), "test"
        )
        ood = evaluate_checkpoint(
            checkpoint, checkpoint_split(checkpoint, out / "corpus-ood", "test", progress=progress), "test"
        )
        if (out / "corpus-held-out").is_dir():
            held = evaluate_checkpoint(
                checkpoint, checkpoint_split(checkpoint, out / "corpus-held-out", "test", progress=progress), "test"
            )
            row.update(
                held_out_commands=held["n"],
                held_out_exact_match=held["accuracy"],
                held_out_intent_accuracy=intent_accuracy(held, checkpoint),
            )
        row.update(
            commands=test["commands"],
            exact_match=test["command_accuracy"],
            intent_accuracy=intent_accuracy(test, checkpoint),
            refused=test["refused"],
            not_commands=test["not_commands"] + ood["not_commands"],
            false_accepts_test=test["false_accepts"],
            ood=ood["not_commands"],
            false_accepts_ood=ood["false_accepts"],
        )
        rows.append(row)
    return rows


def write_build_report(out: Path, context: Context, preset, seconds: float, progress: bool = True) -> Path:
    """``out/report.md`` and ``out/report.json``: the held-out figures and where the time went."""
    rows = evaluate_build(out, progress)
    history = json.loads((out / "model" / "report.json").read_text()).get("history", [])
    synth = json.loads((out / "corpus" / "synth.json").read_text())
    frames = context.frame_table
    lines = [
        f"# {context.path.name}: the model built by quads-demo --context",
        "",
        f"Context `{os.path.relpath(context.path)}` (sha256 `{context.sha256[:16]}`): {len(context.names)} intents, "
        f"{len(frames.frames)} frames (intent and slot values), {len(context)} sentences; slots "
        f"{', '.join(f'{k} ({len(v)})' for k, v in frames.slot_values.items()) or 'none'}.",
        "",
        f"Corpus: espeak-ng voices per split {preset.voices} (disjoint), clips per split {synth['clips']}; "
        f"schedule `{preset.schedule}`, bits {preset.bits}.",
        "",
        "Held-out voices (test split of `corpus`): *exact match*: command clips answered with the right intent and "
        'every slot right; *intent*: the right intent; *refused*: commands answered "not understood". '
        "*Held-out sentences* (`corpus-held-out`): the test voices saying sentences of the context that training "
        "never says (a tenth of each frame's that has at least 20). "
        "*False accepts*: out-of-domain clips answered with a command, on the test voices' training kinds of "
        "non-command (`corpus`) and on held-out ones (`corpus-ood`: other sentences, other wordings of the FSC "
        "commands, sounds).",
        "",
        f"Command: `quads-eval --model {out}/model/<checkpoint> --data {out}/corpus --split test` (and "
        f"`--data {out}/corpus-ood`).",
        "",
        "| Checkpoint | Bits | Size (MB) | Commands | Exact match (%) | Intent (%) | Refused (%) | "
        "Held-out sentences | Exact match (%) | False accepts, test (%) | Out-of-domain clips | "
        "False accepts, held-out (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        held = (
            f"{r['held_out_commands']} | {100 * r['held_out_exact_match']:.1f}" if "held_out_commands" in r else "- | -"
        )
        lines.append(
            f"| {r['checkpoint']} | {r['bits']} | {r['file_bytes'] / MB:.2f} | {r['commands']} | "
            f"{100 * r['exact_match']:.1f} | {100 * r['intent_accuracy']:.1f} | {100 * r['refused']:.1f} | "
            f"{held} | {100 * r['false_accepts_test']:.1f} | {r['ood']} | {100 * r['false_accepts_ood']:.1f} |"
        )
    train_minutes = sum(h.get("seconds", 0.0) for h in history) / 60
    lines += [
        "",
        f"Time: {seconds / 60:.1f} min for the build, over every invocation of the command (a run "
        f"that finds a step done skips it); training epochs {train_minutes:.1f} min in all. Host: {cpu_model()}, {os.cpu_count()} CPUs.",
        "",
    ]
    path = out / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
    atomic_write(
        out / "report.json",
        lambda tmp: tmp.write_text(
            json.dumps({"rows": rows, "seconds": seconds, "train_minutes": train_minutes}, indent=1)
        ),
    )
    log.info("wrote %s", path)
    return path
