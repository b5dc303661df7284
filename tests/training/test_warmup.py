"""Learning-rate warm-up and decay, and gradient clipping, in distillation / fine-tuning epochs."""

import math

import pytest
import torch

from core.audio import pad_mels
from core.model import IntentClassifier, ModelDims
from training.config import Config
from training.loop import EpochSettings, PhaseSchedule, TrainStep, distillation_optimizer, train_epoch
from training.losses import ClassificationLoss


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mels, lengths = pad_mels([torch.randn(16, 20, generator=g), torch.randn(16, 13, generator=g)])
        out.append((mels * 100, lengths, torch.tensor([0, 1]), torch.tensor([2 * i, 2 * i + 1])))
    return out


def setup(warmup_steps=0, grad_clip=0.0):
    torch.manual_seed(0)
    model = IntentClassifier(ModelDims(n_mels=16, n_ctx=16, n_state=8, n_head=2, n_layer=1), 2)
    cfg = Config()
    cfg.distill.warmup_steps, cfg.distill.grad_clip = warmup_steps, grad_clip
    loss = ClassificationLoss()
    return model, cfg, TrainStep(model, loss), distillation_optimizer(model, loss, cfg)


def test_learning_rates_warm_up_linearly_from_the_phase_start():
    model, cfg, step, opt = setup(warmup_steps=10)
    train_epoch(
        step,
        batches(4),
        opt,
        EpochSettings(device=torch.device("cpu"), schedule=PhaseSchedule(0, 12, warmup=10), progress=False),
    )
    assert [g["lr"] for g in opt.param_groups] == [cfg.distill.lr_encoder * 0.4, cfg.distill.lr_head * 0.4]
    train_epoch(
        step,
        batches(8),
        opt,
        EpochSettings(device=torch.device("cpu"), schedule=PhaseSchedule(4, 12, warmup=10), progress=False),
    )
    assert [g["lr"] for g in opt.param_groups] == [cfg.distill.lr_encoder, cfg.distill.lr_head]


def test_gradient_clipping_bounds_the_update():
    updates = {}
    for clip in (0.0, 1e-3):
        model, cfg, step, opt = setup(grad_clip=clip)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        train_epoch(step, batches(1), opt, EpochSettings(device=torch.device("cpu"), grad_clip=clip, progress=False))
        updates[clip] = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert updates[1e-3] <= 1e-3 * 1.001 < updates[0.0]


def test_cosine_decay_follows_the_warm_up_and_ends_at_zero():
    s = PhaseSchedule(0, 110, warmup=10, decay=True)
    assert [s.scale(i) for i in (0, 9)] == [0.1, 1.0]
    assert s.scale(60) == pytest.approx(0.5)
    assert s.scale(110) == pytest.approx(0.0, abs=1e-12)
    assert PhaseSchedule(0, 100).scale(99) == 1.0  # neither: constant


def test_decay_runs_once_across_the_epochs_of_a_phase():
    """A 3-epoch phase of 4 steps each: one cosine over its 12 steps, not a restart per epoch."""
    model, cfg, step, opt = setup()
    seen = []
    optimizer_step = opt.step
    opt.step = lambda *a, **k: (seen.append(opt.param_groups[0]["lr"]), optimizer_step(*a, **k))[1]
    for epoch in range(3):
        train_epoch(
            step,
            batches(4),
            opt,
            EpochSettings(
                device=torch.device("cpu"), schedule=PhaseSchedule(4 * epoch, 12, decay=True), progress=False
            ),
        )
    expected = [cfg.distill.lr_encoder * 0.5 * (1 + math.cos(math.pi * k / 12)) for k in range(12)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == cfg.distill.lr_encoder and seen[-1] < 0.02 * cfg.distill.lr_encoder
