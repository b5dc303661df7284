"""A golden run of the training loop: two distillation steps, then two quantization steps."""

import pytest
import torch

from core.model import IntentClassifier, ModelDims
from training.config import Config
from training.features import collate
from training.loop import (
    EpochSettings,
    PhaseSchedule,
    TrainStep,
    distillation_optimizer,
    train_epoch,
)
from training.losses import DistillationLoss
from training.quantization_phase import QuantizationPhase
from training.teacher import TeacherTargets

SMALL = ModelDims(n_mels=16, n_ctx=64, n_state=32, n_head=2, n_layer=1)


def golden_run():
    """2 distillation steps (Adam) then 2 quantization steps (SGD + snap) on fixed random data."""
    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(16, n, generator=g), k % 3, k) for k, n in enumerate([40, 33, 25, 38])]
    targets = TeacherTargets(torch.randn(4, 32, generator=g))
    loader = torch.utils.data.DataLoader(items, batch_size=2, shuffle=False, collate_fn=collate)
    torch.manual_seed(0)
    model = IntentClassifier(SMALL, 3)
    cfg, cpu = Config(), torch.device("cpu")
    loss = DistillationLoss(0.5)
    d = train_epoch(
        TrainStep(model, loss),
        loader,
        distillation_optimizer(model, loss, cfg),
        EpochSettings(device=cpu, targets=targets, progress=False),
    )
    phase = QuantizationPhase.begin(model, 2, cfg.quant)  # k-means, 50 iterations, the mean rule
    quantizer = phase.quantizer
    q = train_epoch(
        TrainStep(model, phase.loss),
        loader,
        phase.optimizer(),
        EpochSettings(device=cpu, snap=phase.after_step, schedule=PhaseSchedule(0, 2, decay=True), progress=False),
    )
    return d, q, model, quantizer


def test_golden_two_step_run():
    torch.set_num_threads(1)
    d, q, model, quantizer = golden_run()
    # Recorded from this loop on torch 2.11 CPU; a change here means the loop's maths changed
    # (test_one_distillation_step_by_hand checks a step against a hand computation).
    assert d["loss"] == pytest.approx(1.11873859167099, abs=1e-5)
    assert d["l1"] == pytest.approx(1.008846253156662, abs=1e-5)
    assert d["ce"] == pytest.approx(1.2286309599876404, abs=1e-5)
    assert q["ce"] == pytest.approx(1.1653743386268616, abs=1e-5)
    # Snapping after every step leaves the weights on their centroids, so L_centroid is 0 at
    # every forward pass; the centroids learn through snap() (the default, the authors' mean rule).
    assert q["centroid"] == 0.0
    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    assert total == pytest.approx(106.55250415963155, abs=1e-4)
    for p in quantizer.params.values():
        assert torch.unique(p.detach()).numel() <= 4
    d2, q2, *_ = golden_run()
    assert (d2, q2) == (d, q)  # deterministic


def test_one_distillation_step_by_hand():
    """The loop's first step against a hand computation: the batch's loss is alpha * L1 to the
    teacher + (1 - alpha) * CE, and Adam's first step moves each weight by lr * g / (|g| + eps)
    (its moment estimates, bias-corrected, are g and g^2), at each group's rate."""
    g = torch.Generator().manual_seed(2)
    items = [(torch.randn(16, n, generator=g), k, k) for k, n in enumerate([30, 24])]
    teacher = torch.randn(2, 32, generator=g)
    torch.manual_seed(1)
    model = IntentClassifier(SMALL, 3)
    mels, lengths, labels, _ = collate(items)
    embedding, logits = model(mels, lengths)
    log_p = logits.log_softmax(-1)
    by_hand = 0.5 * (embedding - teacher).abs().mean() - 0.5 * (log_p[0, 0] + log_p[1, 1]) / 2
    grads = torch.autograd.grad(by_hand, list(model.parameters()), allow_unused=True)
    before = [p.detach().clone() for p in model.parameters()]

    cfg = Config.model_validate({"distill": {"lr_encoder": 1e-4, "lr_head": 1e-2}})
    loss = DistillationLoss(0.5)
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=collate)
    parts = train_epoch(
        TrainStep(model, loss),
        loader,
        distillation_optimizer(model, loss, cfg),
        EpochSettings(device=torch.device("cpu"), targets=TeacherTargets(teacher), progress=False),
    )
    assert parts["loss"] == pytest.approx(float(by_hand.detach()), rel=1e-5)
    head = {id(p) for p in model.head.parameters()}
    for p, p0, grad in zip(model.parameters(), before, grads):
        lr = 1e-2 if id(p) in head else 1e-4
        step = torch.zeros_like(p0) if grad is None else lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), p0 - step, rtol=0, atol=1e-6)


def test_a_quantization_epoch_under_eq_4_steps_the_centroids_not_the_weights():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    items = [(torch.randn(16, 30, generator=g), k % 3, k) for k in range(4)]
    loader = torch.utils.data.DataLoader(items, batch_size=2, shuffle=False, collate_fn=collate)
    model = IntentClassifier(SMALL, 3)
    cfg = Config.model_validate({"quant": {"centroid_update": "sum", "centroid_lr": 1e-3, "momentum": 0.0}})
    phase = QuantizationPhase.begin(model, 2, cfg.quant)
    quantizer = phase.quantizer
    centroids = {n: c.detach().clone() for n, c in quantizer.centroids.items()}
    bias = model.head.bias.detach().clone()
    optimizer = phase.optimizer()
    assert [g["lr"] for g in optimizer.param_groups] == [cfg.quant.lr, 1e-3]
    train_epoch(
        TrainStep(model, phase.loss),
        loader,
        optimizer,
        EpochSettings(device=torch.device("cpu"), snap=phase.after_step, progress=False),
    )
    assert all(not torch.equal(centroids[n], c.detach()) for n, c in quantizer.centroids.items())
    assert not torch.equal(bias, model.head.bias.detach())  # parameters outside the codebooks train at lr
    for name, p in quantizer.params.items():
        assert p.grad is None  # handed to the centroids
        assert torch.equal(p.detach().reshape(-1), quantizer.centroids[name].detach()[quantizer.labels[name]])


def test_mixed_precision_steps_keep_float32_state_and_follow_the_float32_loss():
    """train.autocast bfloat16: the forward's products in bfloat16, the loss, the gradients and the
    parameters float32; the loss stays within bfloat16's rounding of the float32 one."""
    g = torch.Generator().manual_seed(0)
    mels, lengths, labels, _ = collate([(torch.randn(16, n, generator=g), k % 3, k) for k, n in enumerate([40, 33])])
    teacher = TeacherTargets(torch.randn(2, 32, generator=g))
    torch.manual_seed(0)
    model = IntentClassifier(SMALL, 3)
    loss = DistillationLoss(0.5)
    exact, _ = TrainStep(model, loss)(mels, lengths, labels, teacher)
    mixed, parts = TrainStep(model, loss, autocast=torch.bfloat16)(mels, lengths, labels, teacher)
    assert mixed.dtype == torch.float32
    assert mixed.item() != exact.item()  # the products really ran in bfloat16
    assert mixed.item() == pytest.approx(exact.item(), rel=2e-2)
    mixed.backward()
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None
    )
