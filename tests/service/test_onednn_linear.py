"""Pre-packed oneDNN linear layers against ``nn.Linear``, alone and in the served model."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from core.audio import decode_audio, log_mel_spectrogram
from core.cpu_features import native_bfloat16
from service.onednn_linear import OneDnnLinear, onednn_linear_works, pack_linear_layers

pytestmark = pytest.mark.skipif(not onednn_linear_works(torch.float32), reason="torch has no oneDNN linear on this CPU")


@pytest.mark.parametrize("bias", [True, False])
def test_matches_nn_linear_in_float32(bias):
    torch.manual_seed(0)
    linear = nn.Linear(384, 1536, bias=bias)
    x = torch.randn(3, 150, 384)
    with torch.inference_mode():
        packed, expected = OneDnnLinear(linear)(x), linear(x)
    assert packed.dtype == torch.float32 and packed.shape == (3, 150, 1536)
    torch.testing.assert_close(packed, expected, atol=2e-5, rtol=1e-5)  # float32 rounding, another summation order
    assert not torch.equal(packed, torch.zeros_like(packed))


@pytest.mark.skipif(not native_bfloat16(), reason="this CPU has no bfloat16 matrix hardware")
def test_bfloat16_equals_autocast():
    torch.manual_seed(0)
    linear = nn.Linear(384, 384).to(torch.bfloat16)
    x = torch.randn(1, 150, 384)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        packed, expected = OneDnnLinear(linear)(x), linear(x)
    assert packed.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(packed, expected, atol=0, rtol=0)


def test_served_model_keeps_its_answers_size_and_count(checkpoint, speech_wav):
    model = copy.deepcopy(checkpoint.model)
    assert pack_linear_layers(model)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert sum(isinstance(m, OneDnnLinear) for m in model.modules()) == sum(
        type(m) is nn.Linear for m in checkpoint.model.modules()
    )
    mel = log_mel_spectrogram(decode_audio(speech_wav), checkpoint.dims.n_mels)[None]
    with torch.inference_mode():
        (emb, logits), (emb_ref, logits_ref) = model(mel), checkpoint.model(mel)
    torch.testing.assert_close(logits, logits_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(emb, emb_ref, atol=1e-4, rtol=1e-4)
    served = copy.copy(checkpoint)
    served.model = model
    assert (served.n_params, served.memory_bytes) == (checkpoint.n_params, checkpoint.memory_bytes)


def test_without_onednn_the_model_is_left_alone(monkeypatch, caplog):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING, logger="service"):
        assert not pack_linear_layers(model)
    assert [type(m) for m in model] == [nn.Linear, nn.GELU, nn.Linear]
    assert "keeping torch's default kernels" in caplog.text
