"""A branch's checkpoints: where they go and how each width is written."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from core.checkpoint import save_checkpoint
from core.codebook import Codebook, storage
from core.frames import FrameTable
from core.model import IntentClassifier
from core.refusal import REFUSAL_LABEL
from training.config import Config
from training.context import load_context
from training.evaluate import calibrate_threshold, predict
from training.features import MelDataset
from training.quantize import quantize_model
from training.schedule import Branch, Plan

log = logging.getLogger("quads.train")


def checkpoint_path(cfg: Config, bits: int, post_hoc: bool = False) -> Path:
    """``<out>/<name>-<bits>bit.safetensors``; ``-ptq-`` before the width for a post-hoc copy of the float branch."""
    return Path(cfg.train.out).expanduser() / f"{cfg.train.name}{'-ptq' if post_hoc else ''}-{bits}bit.safetensors"


def post_hoc_widths(cfg: Config, branch: Branch) -> list[int]:
    """The widths of ``train.post_hoc_bits`` that ``branch`` also writes as k-means copies of itself:
    all of them for MCT's float branch (the one that trains at 32 or 16 bits), none elsewhere.
    (``Config.check`` refuses post-hoc widths in a run that has no such branch.)"""
    is_float = not branch.shared and storage(branch.train_bits) != "codebook"
    return list(cfg.train.post_hoc_bits) if cfg.train.strategy == "mct" and is_float else []


def exported_paths(cfg: Config, plan: Plan) -> list[Path]:
    """Every checkpoint the run writes, in plan order."""
    return [
        checkpoint_path(cfg, b, post_hoc)
        for branch in plan.branches
        for post_hoc, widths in ((False, branch.exports), (True, post_hoc_widths(cfg, branch)))
        for b in widths
    ]


def export_branch(
    cfg: Config,
    model: IntentClassifier,
    labels: list[str],
    branch: Branch,
    trained: dict[str, Codebook] | None,
    provenance: dict,
    valid_ds: MelDataset | None = None,
) -> list[Path]:
    """Write the branch's checkpoints and return their paths.

    The width the branch trained at is written with its own ``trained`` codebooks; other widths
    <= 8 bits are k-means quantized post hoc (QaD) from a copy; 16 and 32 bits are the float weights.
    A model with a refusal class gets its threshold calibrated on ``valid_ds``, file by file.
    """
    post_hoc = post_hoc_widths(cfg, branch)
    frames = context_frames(cfg.data.context, labels) if cfg.data.context else None
    written = []
    for bits, path in [
        *((b, checkpoint_path(cfg, b)) for b in branch.exports),
        *((b, checkpoint_path(cfg, b, post_hoc=True)) for b in post_hoc),
    ]:
        target, codebooks, how = model, None, "trained"
        if storage(bits) == "codebook" and bits == branch.train_bits:
            codebooks = trained
        elif storage(bits) == "codebook":
            target = copy.deepcopy(model).cpu()
            codebooks, how = quantize_model(target, bits, cfg.quant.kmeans_iters).codebooks(), "post-hoc k-means"
        prov = {**provenance, "bits": bits, "branch": branch.name, "quantization": how}
        threshold = refusal_threshold(target, labels, valid_ds)
        written.append(
            save_checkpoint(
                path, target, labels, bits, provenance=prov, codebooks=codebooks, threshold=threshold, frames=frames
            )
        )
        log.info("wrote %s (%s)%s", path, how, f", refusal threshold {threshold:.3f}" if threshold else "")
    return written


def refusal_threshold(model: IntentClassifier, labels: list[str], valid_ds: MelDataset | None) -> float:
    """The threshold ``calibrate_threshold`` picks on the validation split; 0 for a model that cannot
    refuse, or when there is no validation split (then only the refusal class refuses)."""
    if REFUSAL_LABEL not in labels or valid_ds is None:
        return 0.0
    probs, targets = predict(model, valid_ds, device=next(model.parameters()).device)
    return calibrate_threshold(probs, targets, labels)


def context_frames(context: str, labels: list[str]) -> FrameTable:
    """The frames of ``labels`` in ``context`` (the refusal class has none); a label the context
    does not say means the corpus came from another context, and is refused."""
    table = load_context(context).frame_table
    answered = [label for label in labels if label != REFUSAL_LABEL]
    if unknown := [label for label in answered if label not in table.frames]:
        raise ValueError(f"labels {unknown[:5]} are no frame of {context}: was the corpus made from another context?")
    return FrameTable({label: table.frames[label] for label in answered}, table.context)
