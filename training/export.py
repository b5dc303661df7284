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
from training.schedule import Branch

log = logging.getLogger("quads.train")


def checkpoint_path(cfg: Config, bits: int) -> Path:
    return Path(cfg.train.out).expanduser() / f"{cfg.train.name}-{bits}bit.safetensors"


def export_branch(cfg: Config, model: IntentClassifier, labels: list[str], branch: Branch,
                  quantizer: KMeansQuantizer | None, provenance: dict) -> list[Path]:
    """Write the branch's checkpoints and return their paths.

    The width the branch trained at is written with ``quantizer``'s own codebooks; other widths
    <= 8 bits are k-means quantized post hoc (QaD) from a copy; 16 and 32 bits are the float weights.
    """
    written = []
    for bits in branch.exports:
        target, codebooks, how = model, None, "trained"
        if storage(bits) == "codebook" and bits == branch.train_bits:
            codebooks = quantizer.codebooks()
        elif storage(bits) == "codebook":
            target = copy.deepcopy(model).cpu()
            codebooks, how = quantize_model(target, bits, cfg.quant.kmeans_iters).codebooks(), "post-hoc k-means"
        prov = {**provenance, "bits": bits, "branch": branch.name, "quantization": how}
        path = save_checkpoint(checkpoint_path(cfg, bits), target, labels, bits, provenance=prov, codebooks=codebooks)
        log.info("wrote %s (%s)", path, how)
        written.append(path)
    return written
