"""One quantization (Q) phase, in one place: what ``training.train`` does from a Q phase's first
step to the checkpoint it exports.

A phase begins by clustering the weights (k-means per matrix, ``training.quantize``) or, under
``quant.labels: fixed``, by keeping the assignments of the branch's earlier Q phase with centroids
re-estimated from the current weights; either way the weights are snapped onto their codebooks.
It trains with ``QuantizationLoss`` (``centroid_weight * L_centroid + CE``) and SGD with momentum;
under eq. 4 (``quant.centroid_update: sum``) the optimizer steps the centroids, fed by a pre-step
hook that hands each centroid the sum of its weights' gradients, and the other parameters at
``quant.lr``. After every optimizer step ``after_step`` snaps the weights back (``mean``:
re-estimating each centroid as its cluster's mean first). ``state_dict`` is what the resume file
keeps; ``codebooks`` is what the checkpoint stores.

Under ``quant.method: ste`` the phase keeps the float weights it began with as latent weights.
The model's weights stay snapped for every forward pass; before each optimizer step a hook puts
the latent weights in their place, so the step applies the gradient taken at the snapped weights
to the latent ones (straight-through: the snap's gradient taken as 1). After the step the latent
weights are kept, re-assigned to their nearest centroids every ``quant.reassign_every`` steps
(each centroid then its cluster's mean), and the model's weights snapped again. Unlike the
centroid rules, a weight can move to another cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from core.codebook import Codebook
from training.config import QuantConfig
from training.losses import QuantizationLoss
from training.quantize import KMeansQuantizer


class QuantizationPhase:
    """The codebooks, loss and optimizer of one Q phase at ``bits`` (see the module docstring)."""

    def __init__(self, model: nn.Module, bits: int, cfg: QuantConfig):
        self.model, self.cfg = model, cfg
        self.quantizer = KMeansQuantizer(model, bits, cfg.kmeans_iters, cfg.centroid_update)
        self.loss = QuantizationLoss(self.quantizer, cfg.centroid_weight)
        self.latent: dict[str, torch.Tensor] | None = None  # ste: the float weights behind the snapped ones
        self.steps = 0

    @property
    def straight_through(self) -> bool:
        return self.cfg.method == "ste" and self.quantizer.clusters

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    @classmethod
    def begin(
        cls,
        model: nn.Module,
        bits: int,
        cfg: QuantConfig,
        previous: QuantizationPhase | None = None,
        calibration: Iterable[Tensor] = (),
    ) -> QuantizationPhase:
        """A new phase: k-means on the current weights, or ``previous``'s assignments when the labels
        are ``fixed``; the weights are on their codebooks when it returns. Under
        ``quant.codebook_fit: sensitivity`` the k-means is weighted by ``squared_gradients`` of the
        ``calibration`` losses (scalars of the current model, computed lazily)."""
        phase = cls(model, bits, cfg)
        if phase.straight_through:
            phase.latent = {n: p.detach().clone() for n, p in phase.quantizer.params.items()}
        keep = previous.quantizer if previous is not None and cfg.labels == "fixed" else None
        importance = None
        if keep is None and cfg.codebook_fit == "sensitivity" and phase.quantizer.clusters:
            importance = squared_gradients(phase.quantizer.params, calibration)
        phase.loss.fit(keep, importance)
        return phase

    @classmethod
    def restore(cls, model: nn.Module, cfg: QuantConfig, state: dict, device: torch.device) -> QuantizationPhase:
        """The phase whose codebooks a resume file saved (``state_dict()``), on ``device``; the model's
        weights come back from the same file, already on those codebooks."""
        phase = cls(model, state["bits"], cfg)
        phase.quantizer.load_state_dict(
            {
                "bits": state["bits"],
                "centroids": {n: t.to(device) for n, t in state["centroids"].items()},
                "labels": {n: t.to(device) for n, t in state["labels"].items()},
            }
        )
        if phase.straight_through:
            latent = state.get("latent") or {n: p.detach() for n, p in phase.quantizer.params.items()}
            phase.latent = {n: t.to(device).clone() for n, t in latent.items()}
        return phase

    def optimizer(self) -> torch.optim.SGD:
        """SGD with momentum over the model (and, under eq. 4, the centroids in a group of their own)."""
        cfg, quantizer = self.cfg, self.quantizer
        centroids = quantizer.centroid_parameters()
        coded = {id(p) for p in quantizer.params.values()} if centroids else set()
        others = [p for p in self.model.parameters() if id(p) not in coded]
        groups = [{"params": others, "lr": cfg.lr, "base_lr": cfg.lr}]
        if centroids:
            groups.append({"params": centroids, "lr": cfg.centroid_lr, "base_lr": cfg.centroid_lr})
        optimizer = torch.optim.SGD(groups, momentum=cfg.momentum)
        if centroids:
            optimizer.register_step_pre_hook(lambda *_: quantizer.accumulate_centroid_grads())
        if self.straight_through:
            optimizer.register_step_pre_hook(lambda *_: self._load_latent())
        return optimizer

    @torch.no_grad()
    def _load_latent(self) -> None:
        """Before a step: the latent weights in the snapped ones' place, their gradients kept."""
        for name, p in self.quantizer.params.items():
            p.copy_(self.latent[name])

    def after_step(self) -> None:
        """Snap the weights onto their codebooks (after every optimizer step); under ``ste`` keep the
        stepped latent weights first, and re-assign their clusters when it is time."""
        self.steps += 1
        if not self.straight_through:
            self.loss.snap()
            return
        with torch.no_grad():
            for name, p in self.quantizer.params.items():
                self.latent[name].copy_(p)
        if self.steps % self.cfg.reassign_every == 0:
            self.quantizer.reassign(self.latent)
        self.quantizer.snap(update=False)
        self.loss.mark_snapped()

    def state_dict(self) -> dict:
        state = self.quantizer.state_dict()
        if self.latent is not None:
            state["latent"] = {n: t.detach() for n, t in self.latent.items()}
        return state

    def codebooks(self) -> dict[str, Codebook]:
        return self.quantizer.codebooks()


def squared_gradients(params: dict[str, nn.Parameter], losses: Iterable[Tensor]) -> dict[str, Tensor]:
    """The mean over ``losses`` of each parameter's squared gradient: how much the loss cares about
    each weight (the diagonal of the empirical Fisher). Gradients left on the parameters are cleared."""
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    n = 0
    for loss in losses:
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (name, _), grad in zip(params.items(), grads):
            if grad is not None:
                sums[name] += grad.detach().float() ** 2
        n += 1
    if n == 0:
        raise ValueError("quant.codebook_fit=sensitivity needs calibration batches, and none came")
    return {name: total / n for name, total in sums.items()}
