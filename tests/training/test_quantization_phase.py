"""training.quantization_phase: one Q phase's step by hand, for the centroid rule and for
straight-through latent weights (quant.method=ste), and what a resume keeps."""

from __future__ import annotations

import pytest
import torch

from training.config import ConfigError, QuantConfig, load_config
from training.quantization_phase import QuantizationPhase
from training.run_state import RunState, load_state, save_state

# 1 bit: k-means puts {0, 0.05, 0.1} and {0.9, 0.95, 1.0} apart, centroids 0.05 and 0.95.
START = [[0.0, 0.1, 0.9], [1.0, 0.05, 0.95]]
PUSH = torch.tensor([[-10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # dL/dW: pushes W[0, 0] up by lr * 10


class OneMatrix(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(START))


def one_step(method: str, lr: float = 0.1) -> tuple[QuantizationPhase, OneMatrix]:
    """One SGD step (no momentum) on L = sum(W * PUSH), then the phase's after_step."""
    model = OneMatrix()
    phase = QuantizationPhase.begin(model, 1, QuantConfig(method=method, lr=lr, momentum=0.0))
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[0.05, 0.05, 0.95], [0.95, 0.05, 0.95]]))
    optimizer = phase.optimizer()
    (model.weight * PUSH).sum().backward()
    optimizer.step()
    phase.after_step()
    return phase, model


def test_the_centroid_rule_can_never_move_a_weight_to_another_cluster():
    phase, model = one_step("centroids")
    # The snapped 0.05 steps to 1.05; its cluster's mean is then (1.05 + 0.05 + 0.05) / 3.
    low = (1.05 + 0.05 + 0.05) / 3
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[low, low, 0.95], [0.95, low, 0.95]]))
    assert phase.quantizer.labels["weight"].tolist() == [0, 0, 1, 1, 0, 1]
    assert phase.latent is None


def test_straight_through_steps_the_latent_weight_and_it_changes_cluster():
    phase, model = one_step("ste")
    # The latent 0.0 (not its snapped 0.05) steps to 1.0 and joins the high cluster:
    # low = mean(0.1, 0.05) = 0.075, high = mean(1.0, 0.9, 1.0, 0.95) = 0.9625.
    torch.testing.assert_close(phase.latent["weight"], torch.tensor([[1.0, 0.1, 0.9], [1.0, 0.05, 0.95]]))
    assert phase.quantizer.labels["weight"].tolist() == [1, 0, 1, 1, 0, 1]
    torch.testing.assert_close(phase.quantizer.centroids["weight"], torch.tensor([0.075, 0.9625]))
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[0.9625, 0.075, 0.9625], [0.9625, 0.075, 0.9625]]))
    assert phase.loss.on_codebook()  # snapped again: L_centroid is exactly 0 at the next forward


def test_re_assignment_waits_for_its_step_but_the_latent_weights_always_learn():
    model = OneMatrix()
    phase = QuantizationPhase.begin(model, 1, QuantConfig(method="ste", lr=0.01, momentum=0.0, reassign_every=2))
    optimizer = phase.optimizer()
    for step in range(2):
        optimizer.zero_grad()
        (model.weight * PUSH).sum().backward()  # each step moves the latent 0.0 up by 0.1
        optimizer.step()
        phase.after_step()
        if step == 0:  # not yet re-assigned: the codebook and the labels are unchanged
            assert phase.quantizer.labels["weight"].tolist() == [0, 0, 1, 1, 0, 1]
            torch.testing.assert_close(phase.quantizer.centroids["weight"], torch.tensor([0.05, 0.95]))
    assert float(phase.latent["weight"][0, 0]) == pytest.approx(0.2)
    torch.testing.assert_close(phase.quantizer.centroids["weight"], torch.tensor([(0.2 + 0.1 + 0.05) / 3, 0.95]))


def test_a_resume_keeps_the_latent_weights(tmp_path):
    phase, model = one_step("ste")
    path = save_state(tmp_path / "s.safetensors", RunState(1, model.state_dict(), quantizer=phase.state_dict()))
    state = load_state(path)
    torch.testing.assert_close(state.quantizer["latent"]["weight"], phase.latent["weight"])
    again = OneMatrix()
    again.load_state_dict(state.model)
    restored = QuantizationPhase.restore(again, phase.cfg, state.quantizer, torch.device("cpu"))
    torch.testing.assert_close(restored.latent["weight"], phase.latent["weight"])
    assert restored.quantizer.labels["weight"].tolist() == phase.quantizer.labels["weight"].tolist()


def test_ste_with_eq_4_is_refused_by_the_config_check():
    cfg = load_config(updates=[{"quant": {"method": "ste", "centroid_update": "sum"}, "data": {"root": "x"}}])
    with pytest.raises(ConfigError, match="quant.method=ste"):
        cfg.check()


def test_squared_gradients_are_the_mean_squared_gradient_by_hand():
    from training.quantization_phase import squared_gradients

    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = [(w * torch.tensor([1.0, 3.0])).sum(), (w * w).sum()]  # gradients (1, 3), then 2w = (2, 4)
    torch.testing.assert_close(squared_gradients({"w": w}, losses)["w"], torch.tensor([2.5, 12.5]))
    with pytest.raises(ValueError, match="calibration"):
        squared_gradients({"w": w}, [])


def test_sensitivity_fit_puts_a_centroid_on_the_weight_the_loss_cares_about():
    model = OneMatrix()
    # Only W[0, 1] (0.1) moves the calibration loss: the low cluster {0, 0.05, 0.1} centres on it,
    # while the high one, where nothing matters, keeps its plain mean.
    calibration = [5.0 * model.weight[0, 1]]
    cfg = QuantConfig(codebook_fit="sensitivity")
    phase = QuantizationPhase.begin(model, 1, cfg, calibration=calibration)
    torch.testing.assert_close(phase.quantizer.centroids["weight"], torch.tensor([0.1, 0.95]), atol=1e-6, rtol=0)
    plain = QuantizationPhase.begin(OneMatrix(), 1, QuantConfig())
    torch.testing.assert_close(plain.quantizer.centroids["weight"], torch.tensor([0.05, 0.95]))
