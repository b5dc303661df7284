"""One training epoch and what drives it: the step module, the optimizers and the learning-rate schedule.

``train_epoch`` is the inner loop of ``training.train``: forward, backward, optimizer step, and in
a quantization phase the snap of the weights onto their codebooks (``QuantizationPhase.after_step``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.model import IntentClassifier
from training.config import Config
from training.teacher import TeacherTargets


class TrainStep(nn.Module):
    """The student and its phase's loss as one module, so that DDP sees every trained parameter
    (a learned width projection lives in the distillation loss). Returns (loss, parts for logs)."""

    def __init__(self, model: IntentClassifier, loss: nn.Module, autocast: torch.dtype | None = None):
        super().__init__()
        self.model, self.loss, self.autocast = model, loss, autocast

    def forward(self, mels: Tensor, lengths: Tensor, labels: Tensor, teacher: Tensor | None = None):
        # Mixed precision: the model's matrix products in ``autocast`` (parameters, gradients and
        # optimizer state stay float32); the losses in float32.
        with torch.autocast(mels.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            embedding, logits = self.model(mels, lengths)
        out = self.loss(embedding.float(), logits.float(), labels, teacher)
        return out.total, out.parts


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` steps."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


@dataclass(frozen=True)
class PhaseSchedule:
    """The learning rate through one phase: a linear warm-up over ``warmup`` steps, then constant
    or (``decay``) a cosine decay to 0 at the phase's last step. Scales each group's ``base_lr``."""

    first: int  # the phase step of this epoch's first batch
    total: int  # steps in the whole phase
    warmup: int = 0
    decay: bool = False

    def scale(self, step: int) -> float:
        """The factor at phase step ``step`` (0-based)."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.decay:
            factor *= cosine_lr(1.0, step - self.warmup, self.total - self.warmup) if step >= self.warmup else 1.0
        return factor


@dataclass(frozen=True)
class EpochSettings:
    """How ``train_epoch`` steps: the device, the teacher's targets, the learning rate and what
    follows each step.

    targets: cached teacher targets indexed by dataset item; or ``online_teacher(mels, lengths)``
    runs the teacher on each batch. schedule: sets each group's lr from its ``base_lr`` before
    every step (None: the lr is left as it is). grad_clip: clip the gradient norm to this (0: off).
    snap: called after every optimizer step (Q: ``QuantizationPhase.after_step``).
    """

    device: torch.device = torch.device("cpu")
    targets: TeacherTargets | None = None
    online_teacher: Callable[[Tensor, Tensor], TeacherTargets] | None = None
    schedule: PhaseSchedule | None = None
    grad_clip: float = 0.0
    snap: Callable[[], object] | None = None
    desc: str = ""
    progress: bool = True


def train_epoch(
    step_module: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, settings: EpochSettings
) -> dict[str, float]:
    """One pass over ``loader``: forward, backward, step and (in Q) snap. Returns the mean loss parts."""
    step_module.train()
    sums: dict[str, float] = {}
    n_batches = 0
    bar = tqdm(loader, desc=settings.desc, unit="batch", leave=False, disable=not settings.progress, dynamic_ncols=True)
    for i, (mels, lengths, labels, indices) in enumerate(bar):
        if settings.schedule is not None:
            factor = settings.schedule.scale(settings.schedule.first + i)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        mels, lengths, labels = mels.to(settings.device), lengths.to(settings.device), labels.to(settings.device)
        teacher = None
        if settings.targets is not None:
            teacher = settings.targets[indices].to(settings.device)
        elif settings.online_teacher is not None:
            teacher = settings.online_teacher(mels, lengths)

        loss, parts = step_module(mels, lengths, labels, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(step_module.parameters(), settings.grad_clip)
        optimizer.step()
        if settings.snap is not None:
            settings.snap()

        n_batches += 1
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
    return {key: value / max(n_batches, 1) for key, value in sums.items()}


def distillation_optimizer(model: IntentClassifier, loss: nn.Module, cfg: Config) -> torch.optim.Adam:
    """Adam for D and F phases: the encoder at ``distill.lr_encoder``, the head (and a learned width
    projection, which lives in the loss) at ``distill.lr_head``. Q phases: ``QuantizationPhase.optimizer``."""
    head = [*model.head.parameters(), *loss.parameters()]
    encoder = list(model.encoder.parameters())
    return torch.optim.Adam(
        [
            {"params": encoder, "lr": cfg.distill.lr_encoder, "base_lr": cfg.distill.lr_encoder},
            {"params": head, "lr": cfg.distill.lr_head, "base_lr": cfg.distill.lr_head},
        ]
    )
