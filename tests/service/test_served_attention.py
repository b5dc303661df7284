"""The served attention (one q/k/v projection, a short-clip kernel) against the model's own."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core.audio import decode_audio, log_mel_spectrogram
from core.model import MultiHeadAttention
from service.precision import compute_context, prepare_model
from service.served_attention import (
    SHORT_ATTENTION_POSITIONS,
    FusedQkvAttention,
    fuse_attention_projections,
    short_attention,
)


def _attention_and_mask(T: int = 40, n_state: int = 64, n_head: int = 4):
    torch.manual_seed(0)
    attention = MultiHeadAttention(n_state, n_head)
    x = torch.randn(2, T, n_state)
    mask = (torch.arange(T) < torch.tensor([T, T // 2])[:, None])[:, None, None, :]  # the second clip is half as long
    return attention, x, mask


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("T", [40, SHORT_ATTENTION_POSITIONS + 1], ids=["short-kernel", "sdpa"])
def test_fused_projection_matches_the_model_attention(masked, T):
    attention, x, mask = _attention_and_mask(T)
    mask = mask if masked else None
    with torch.inference_mode():
        got, expected = FusedQkvAttention(attention)(x, mask), attention(x, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, x)  # it computed something


def test_fused_key_bias_is_zero_as_in_whisper():
    attention, _, _ = _attention_and_mask()
    fused = FusedQkvAttention(attention)
    n = attention.query.in_features
    assert fused.qkv.weight.shape == (3 * n, n)
    assert torch.equal(fused.qkv.bias[n : 2 * n], torch.zeros(n))
    assert torch.equal(fused.qkv.weight[n : 2 * n], attention.key.weight)


@pytest.mark.parametrize("masked", [False, True])
def test_short_attention_equals_sdpa_in_float32(masked):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 30, 16) for _ in range(3))
    mask = (torch.arange(30) < torch.tensor([30, 11])[:, None])[:, None, None, :] if masked else None
    torch.testing.assert_close(
        short_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5
    )


def test_bfloat16_short_attention_is_within_bfloat16_rounding_of_sdpa():
    attention, x, mask = _attention_and_mask(T=SHORT_ATTENTION_POSITIONS)
    reference = attention(x, mask).detach()
    fused = FusedQkvAttention(attention).to(torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        got = fused(x, mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("compute_dtype", ["float32", "int8"])
def test_served_model_answers_as_the_checkpoint(checkpoint, speech_wav, compute_dtype):
    """Fusing changes nothing but the summation order; int8 quantizes the fused layer exactly as the three."""
    fused, unfused = copy.deepcopy(checkpoint.model), copy.deepcopy(checkpoint.model)
    assert fuse_attention_projections(fused) == checkpoint.dims.n_layer
    assert not any(isinstance(m, MultiHeadAttention) for m in fused.modules())
    prepare_model(fused, compute_dtype)  # fusing again finds nothing left to fuse
    if compute_dtype == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(unfused, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    mel = log_mel_spectrogram(decode_audio(speech_wav), checkpoint.dims.n_mels)[None]
    with torch.inference_mode(), compute_context(compute_dtype):
        (_, logits), (_, expected) = fused(mel), unfused(mel)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
