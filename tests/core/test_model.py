"""The variable-length encoder: any length up to 30 s, and batching that never changes an answer."""

import pytest
import torch

from core.audio import pad_mels
from core.model import (
    IntentClassifier,
    ModelDims,
    encoder_lengths,
    masked_mean,
    sinusoids,
)

DIMS = ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=4, n_layer=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return IntentClassifier(DIMS, n_labels=7).eval()


@pytest.mark.parametrize("frames", [1, 2, 99, 300, 3000])
def test_any_length_up_to_30s(model, frames):
    embedding, logits = model(torch.randn(1, 80, frames))
    assert embedding.shape == (1, 64) and logits.shape == (1, 7)
    assert torch.isfinite(logits).all()


def test_longer_than_30s_is_refused(model):
    with pytest.raises(ValueError, match="at most 1500"):
        model(torch.randn(1, 80, 3002))


@torch.no_grad()
def test_a_clips_logits_do_not_depend_on_its_batch(model):
    torch.manual_seed(1)
    mels = [torch.randn(80, t) for t in (301, 57, 1200, 2, 300)]  # odd and even lengths, tiny and long
    batch, lengths = pad_mels(mels)
    emb_b, logits_b = model(batch, lengths)
    for i, mel in enumerate(mels):
        emb, logits = model(mel[None])
        assert (logits_b[i] - logits[0]).abs().max().item() < 1e-4
        assert (emb_b[i] - emb[0]).abs().max().item() < 1e-4


@torch.no_grad()
def test_without_a_mask_padding_would_leak_into_the_answer(model):
    """Guards the test above: padding does change the result when lengths are not passed."""
    mels = [torch.randn(80, 300), torch.randn(80, 1200)]
    batch, lengths = pad_mels(mels)
    _, alone = model(mels[0][None])
    _, unmasked = model(batch)
    assert (unmasked[0] - alone[0]).abs().max().item() > 1e-3


def test_encoder_lengths_follow_the_stride_2_conv():
    assert encoder_lengths(torch.tensor([1, 2, 3, 300, 301, 3000])).tolist() == [1, 1, 2, 150, 151, 1500]


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0


def test_sinusoids_match_openai_whisper():
    import whisper.model as ow

    assert torch.allclose(sinusoids(1500, 384), ow.sinusoids(1500, 384))


def test_dims_validate_head_count():
    with pytest.raises(ValueError, match="divisible"):
        ModelDims(n_state=100, n_head=3)
    assert ModelDims(n_state=64, n_head=4).n_mlp == 256
