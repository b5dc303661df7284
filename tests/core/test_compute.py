"""Compute accounting against a hand count of the encoder's matrix products."""

import pytest

from core.compute import count_parameters, forward_gmacs
from core.model import WHISPER_TINY, IntentClassifier, ModelDims


def hand_count_gmacs(d: ModelDims, frames: int, n_labels: int) -> float:
    t = (frames + 1) // 2
    conv = frames * d.n_mels * d.n_state * 3 + t * d.n_state * d.n_state * 3
    per_layer = (
        4 * t * d.n_state**2 + 2 * t * d.n_state * d.n_mlp + 2 * t * t * d.n_state
    )  # projections, MLP, QK^T and AV
    return (conv + d.n_layer * per_layer + d.n_state * n_labels) / 1e9


@pytest.mark.parametrize("seconds", [3.0, None])
def test_gmacs_match_a_hand_count(seconds):
    model = IntentClassifier(WHISPER_TINY, 31)
    frames = 3000 if seconds is None else 300
    assert forward_gmacs(model, seconds) == pytest.approx(hand_count_gmacs(WHISPER_TINY, frames, 31), rel=1e-6)


def test_real_length_is_about_ten_times_cheaper_than_30s_padding():
    model = IntentClassifier(WHISPER_TINY, 31)
    assert forward_gmacs(model, None) / forward_gmacs(model, 3.0) > 10
    assert count_parameters(model) == 7_644_319
