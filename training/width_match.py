"""How the student's embedding meets the teacher's in distillation (``WidthMatch``): the loss, a
learned projection or the teacher max-pooled to the student's width, and where the teacher's
targets come from: its embeddings cached once per dataset (``training.teacher.TeacherCache``), or
the teacher run on every batch when the cache is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from core.model import ModelDims
from training.config import Config, ConfigError
from training.distributed import Processes
from training.features import MelDataset
from training.losses import ChannelMaxPool, DistillationLoss, StudentProjection
from training.teacher import Teacher, TeacherCache, TeacherTargets

log = logging.getLogger("quads.train")


@dataclass
class WidthMatch:
    """How the student's embedding meets the teacher's: the distillation loss, with a learned
    ``projection`` or the teacher pooled to the student's width; and where the teacher's targets
    come from, the cache (``targets``, by dataset item) or the teacher itself, per batch."""

    distill_loss: DistillationLoss
    projection: StudentProjection | None = None
    targets: TeacherTargets | None = None
    online_teacher: Callable[[Tensor, Tensor], TeacherTargets] | None = None


def match_widths(
    cfg: Config, teacher: Teacher | None, dims: ModelDims, train_ds: MelDataset, procs: Processes
) -> WidthMatch:
    if cfg.train.strategy == "finetune":
        return WidthMatch(DistillationLoss(cfg.distill.alpha))
    if cfg.distill.kl_weight and teacher.label_order(train_ds.labels) is None:
        raise ConfigError(
            "distill.kl_weight needs the teacher's logits over the student's labels: a QUADS checkpoint "
            f"trained on them, and {teacher.source} is a {teacher.kind} teacher of other labels or none"
        )
    frame_pool, projection = None, None
    if cfg.distill.width_match == "maxpool":
        frame_pool = ChannelMaxPool(teacher.width, dims.n_state)
    else:
        torch.manual_seed(cfg.train.seed + 1)
        projection = StudentProjection(dims.n_state, teacher.width).to(procs.device)
    log.info(
        "width match: %s",
        frame_pool.describe() if frame_pool else f"learned projection {dims.n_state}->{teacher.width}",
    )
    loss = DistillationLoss(cfg.distill.alpha, projection, cfg.distill.kl_weight, cfg.distill.temperature)
    match = WidthMatch(loss, projection)
    if cfg.teacher.cache:
        match.targets = teacher_targets(cfg, teacher, train_ds, frame_pool, procs)
    elif teacher.dims.n_mels != cfg.data.n_mels:
        raise ConfigError(
            f"teacher.cache=false runs the teacher on the student's features, but it takes "
            f"{teacher.dims.n_mels} mel bins and data.n_mels={cfg.data.n_mels}; enable the cache"
        )
    else:
        match.online_teacher = partial(
            teacher.to(procs.device).targets, frame_pool=frame_pool, label_order=teacher.label_order(train_ds.labels)
        )
    return match


def teacher_targets(cfg: Config, teacher: Teacher, dataset: MelDataset, frame_pool, procs: Processes) -> TeacherTargets:
    """Cached teacher embeddings of ``dataset``: rank 0 computes and writes them, the others read them."""
    cache = TeacherCache(cfg.teacher.cache_dir)
    kwargs = dict(batch_size=cfg.teacher.batch_size, device=procs.device, progress=cfg.train.progress and procs.main)
    if procs.main:
        targets = cache.targets(teacher, dataset, frame_pool, **kwargs)
    procs.barrier()
    if not procs.main:
        targets = cache.targets(teacher, dataset, frame_pool, write=False, **kwargs)
    return targets
