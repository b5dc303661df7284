"""The training losses against hand-written references (torchtune style: each loss is its own unit)."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.model import IntentClassifier, ModelDims
from training.losses import (
    ChannelMaxPool,
    ClassificationLoss,
    DistillationLoss,
    QuantizationLoss,
    StudentProjection,
    channel_pool_geometry,
)
from training.quantize import KMeansQuantizer, quantize_model
from training.teacher import TeacherTargets


def reference_channel_pool(x: torch.Tensor, stride: int, dilation: int, c_out: int) -> torch.Tensor:
    """out[..., j] = max(x[..., s*j], x[..., s*j + d], x[..., s*j + 2d]), written out."""
    cols = [
        torch.stack([x[..., stride * j + m * dilation] for m in range(3)], dim=-1).amax(dim=-1) for j in range(c_out)
    ]
    return torch.stack(cols, dim=-1)


def test_paper_pool_maps_whisper_large_to_base_width_with_dilation_128():
    assert channel_pool_geometry(1280, 512) == (2, 128)
    x = torch.randn(2, 7, 1280)  # (B, T, C) teacher frames
    pool = ChannelMaxPool(1280, 512)
    torch.testing.assert_close(pool(x), reference_channel_pool(x, 2, 128, 512), rtol=0, atol=0)


@pytest.mark.parametrize(
    "c_in,c_out",
    [(1280, 512), (1280, 384), (768, 384), (512, 384), (512, 512), (384, 512), (128, 64), (7, 3), (3, 7), (1024, 1)],
)
def test_channel_pool_maps_any_pair_of_widths(c_in, c_out):
    x = torch.randn(3, 5, c_in)
    y = ChannelMaxPool(c_in, c_out)(x)
    assert y.shape == (3, 5, c_out)
    # Max-pooling only ever picks input values.
    assert torch.isin(y, x).all()
    geometry = channel_pool_geometry(c_in, c_out)
    if c_in == c_out:
        assert torch.equal(y, x)
    elif geometry is not None:
        torch.testing.assert_close(y, reference_channel_pool(x, *geometry, c_out), rtol=0, atol=0)
    else:
        torch.testing.assert_close(y, F.adaptive_max_pool1d(x.reshape(-1, 1, c_in), c_out).reshape(3, 5, c_out))


def test_channel_pool_rejects_the_wrong_width():
    with pytest.raises(ValueError, match="expected 1280 channels"):
        ChannelMaxPool(1280, 512)(torch.randn(2, 384))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_is_alpha_l1_plus_one_minus_alpha_ce(alpha):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    logits, labels = torch.randn(4, 5, generator=g), torch.tensor([0, 4, 2, 2])
    out = DistillationLoss(alpha)(student, logits, labels, TeacherTargets(teacher))
    l1 = (student - teacher).abs().mean()
    ce = -torch.log_softmax(logits, dim=1)[torch.arange(4), labels].mean()
    torch.testing.assert_close(out.total, alpha * l1 + (1 - alpha) * ce)
    assert out.parts["l1"] == pytest.approx(float(l1)) and out.parts["ce"] == pytest.approx(float(ce))


def test_distillation_with_a_learned_projection_trains_the_projection():
    torch.manual_seed(0)
    projection = StudentProjection(8, 20)
    loss = DistillationLoss(0.5, projection)
    student = torch.randn(3, 8, requires_grad=True)
    teacher = torch.randn(3, 20)
    out = loss(student, torch.randn(3, 4), torch.tensor([0, 1, 3]), TeacherTargets(teacher))
    out.total.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert student.grad is not None
    expected_l1 = (projection(student) - teacher).abs().mean()
    assert out.parts["l1"] == pytest.approx(float(expected_l1.detach()))


def test_distillation_refuses_unmatched_widths_with_a_hint():
    with pytest.raises(ValueError, match="ChannelMaxPool"):
        DistillationLoss(0.5)(
            torch.randn(2, 8), torch.randn(2, 3), torch.tensor([0, 1]), TeacherTargets(torch.randn(2, 16))
        )
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss(0.5)(torch.randn(2, 8), torch.randn(2, 3), torch.tensor([0, 1]), None)
    with pytest.raises(ValueError):
        DistillationLoss(1.5)


def test_quantization_loss_is_centroid_loss_plus_ce_by_hand():
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.tensor([[0.0, 0.1], [1.0, 1.2]]))  # 1 bit: centroids 0.05, 1.1
    quantizer = quantize_model(model, 1)
    with torch.no_grad():
        model.w.copy_(torch.tensor([[0.05, 0.25], [1.1, 0.9]]))  # two weights 0.2 off: L_centroid 0.02
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    out = QuantizationLoss(quantizer, centroid_weight=2.0)(torch.zeros(2, 4), logits, labels)
    ce = (math.log(3) + math.log(2 + math.exp(2)) - 2) / 2  # -log softmax, by hand, averaged
    assert out.parts["centroid"] == pytest.approx(0.02, abs=1e-6) and out.parts["ce"] == pytest.approx(ce)
    assert float(out.total.detach()) == pytest.approx(2.0 * 0.02 + ce)
    out.total.backward()  # d/dw of 2 * mean((w - c)^2) = 2 * 2 (w - c) / 4: +-0.2 where a weight is off
    torch.testing.assert_close(model.w.grad, torch.tensor([[0.0, 0.2], [0.0, -0.2]]))


def test_classification_loss_is_cross_entropy():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    out = ClassificationLoss()(torch.randn(5, 8), logits, labels)
    torch.testing.assert_close(out.total, F.cross_entropy(logits, labels))


def test_quantization_loss_skips_the_exact_zero_right_after_a_snap_and_computes_it_otherwise():
    torch.manual_seed(0)
    model = IntentClassifier(ModelDims(n_mels=8, n_ctx=32, n_state=16, n_head=2, n_layer=1), 3)
    loss = QuantizationLoss(KMeansQuantizer(model, 2))
    mel, labels = torch.randn(2, 8, 10), torch.tensor([1, 2])
    loss.fit()
    assert loss.on_codebook()
    calls = []
    original = loss.quantizer.centroid_loss
    loss.quantizer.centroid_loss = lambda: calls.append(1) or original()
    assert float(original().detach()) == 0.0  # what is skipped is exactly zero
    out = loss(*model(mel), labels)
    assert out.parts["centroid"] == 0.0 and not calls
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out.total.backward()
    optimizer.step()  # the weights leave their codebooks
    assert not loss.on_codebook()
    out = loss(*model(mel), labels)
    assert calls and out.parts["centroid"] > 0
    loss.snap()
    assert loss.on_codebook() and loss(*model(mel), labels).parts["centroid"] == 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_logit_distillation_is_t_squared_kl_of_the_softened_distributions(temperature):
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    logits, teacher_logits, labels = (
        torch.randn(3, 4, generator=g),
        torch.randn(3, 4, generator=g),
        torch.tensor([0, 3, 1]),
    )
    plain = DistillationLoss(0.5)(student, logits, labels, TeacherTargets(teacher, teacher_logits))
    out = DistillationLoss(0.5, kl_weight=0.7, temperature=temperature)(
        student, logits, labels, TeacherTargets(teacher, teacher_logits)
    )
    p = torch.softmax(teacher_logits / temperature, -1)
    kl = (p * (p.log() - torch.log_softmax(logits / temperature, -1))).sum(-1).mean() * temperature**2
    assert out.parts["kl"] == pytest.approx(float(kl), rel=1e-5)
    torch.testing.assert_close(out.total, plain.total + 0.7 * kl)
    with pytest.raises(ValueError, match="teacher's logits"):
        DistillationLoss(0.5, kl_weight=0.7)(student, logits, labels, TeacherTargets(teacher))
