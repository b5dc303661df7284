"""A branch's checkpoints: where they go and how each width is written."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from core.checkpoint import save_checkpoint
from core.codebook import storage
from core.model import IntentClassifier
from training.config import Config
from training.quantize import KMeansQuantizer, quantize_model
from training.schedule import Branch, Plan

log = logging.getLogger("quads.train")


def checkpoint_path(cfg: Config, bits: int, post_hoc: bool = False) -> Path:
    """``<out>/<name>-<bits>bit.safetensors``; ``-ptq-`` before the width for a post-hoc copy of the float branch."""
    return Path(cfg.train.out).expanduser() / f"{cfg.train.name}{'-ptq' if post_hoc else ''}-{bits}bit.safetensors"


def exported_paths(cfg: Config, plan: Plan) -> list[Path]:
    """Every checkpoint the run writes, in plan order."""
    paths = [checkpoint_path(cfg, b) for branch in plan.branches for b in branch.exports]
    has_float = any(not branch.shared and branch.train_bits == 32 for branch in plan.branches)
    return paths + [checkpoint_path(cfg, b, post_hoc=True) for b in cfg.train.post_hoc_bits if has_float]


def export_branch(cfg: Config, model: IntentClassifier, labels: list[str], branch: Branch,
                  quantizer: KMeansQuantizer | None, provenance: dict) -> list[Path]:
    """Write the branch's checkpoints and return their paths.

    The width the branch trained at is written with ``quantizer``'s own codebooks; other widths
    <= 8 bits are k-means quantized post hoc (QaD) from a copy; 16 and 32 bits are the float weights.
    """
    post_hoc = cfg.train.post_hoc_bits if branch.train_bits == 32 and cfg.train.strategy == "mct" else []
    written = []
    for bits, path in [*((b, checkpoint_path(cfg, b)) for b in branch.exports),
                       *((b, checkpoint_path(cfg, b, post_hoc=True)) for b in post_hoc)]:  # fmt: skip
        target, codebooks, how = model, None, "trained"
        if storage(bits) == "codebook" and bits == branch.train_bits:
            codebooks = quantizer.codebooks()
        elif storage(bits) == "codebook":
            target = copy.deepcopy(model).cpu()
            codebooks, how = quantize_model(target, bits, cfg.quant.kmeans_iters).codebooks(), "post-hoc k-means"
        prov = {**provenance, "bits": bits, "branch": branch.name, "quantization": how}
        written.append(save_checkpoint(path, target, labels, bits, provenance=prov, codebooks=codebooks))
        log.info("wrote %s (%s)", path, how)
    return written
