"""The resume state: a faithful round trip, and a truncated file refused."""

import pytest
import torch

from core.model import IntentClassifier, ModelDims
from training.quantize import KMeansQuantizer, quantize_model
from training.run_state import RunState, RunStateError, load_state, save_state

SMALL = ModelDims(n_mels=16, n_ctx=64, n_state=32, n_head=2, n_layer=1)


def test_run_state_round_trips_model_optimizer_and_quantizer_exactly(tmp_path):
    torch.manual_seed(0)
    model = IntentClassifier(SMALL, 3)
    quantizer = quantize_model(model, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _, logits = model(torch.randn(2, 16, 12))
    logits.sum().backward()
    optimizer.step()
    state = RunState(
        7,
        model.state_dict(),
        optimizer.state_dict(),
        quantizer.state_dict(),
        None,
        [{"epoch": 1, "loss": 0.5}],
        {"plan": {"x": 1}},
    )
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back.done == 7 and back.history == state.history and back.info == state.info
    assert all(torch.equal(back.model[k], v) for k, v in model.state_dict().items())
    for idx, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            assert torch.equal(back.optimizer["state"][idx][key], value)
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back.optimizer)  # what resume does
    restored = KMeansQuantizer(model, 3)
    restored.load_state_dict(back.quantizer)
    for name in quantizer.labels:
        assert torch.equal(restored.labels[name], quantizer.labels[name])
        assert torch.equal(restored.centroids[name], quantizer.centroids[name])


def test_run_state_refuses_a_truncated_file(tmp_path):
    save_state(tmp_path / "s.safetensors", RunState(1, IntentClassifier(SMALL, 2).state_dict()))
    data = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunStateError, match="not a readable"):
        load_state(tmp_path / "cut.safetensors")
