"""quads-eval's error analysis: which mistakes swap a command's polarity (on/off, up/down)."""

import torch

from core.model import IntentClassifier, ModelDims
from training.evaluate import is_polarity_swap, polarity_error_share, predict

LABELS = [
    "activate_lights_kitchen",
    "deactivate_lights_kitchen",
    "deactivate_lights_bedroom",
    "increase_volume_none",
    "decrease_volume_none",
    "change language_none_none",
]


def test_polarity_swap_needs_opposite_actions_on_the_same_object_and_location():
    assert is_polarity_swap("activate_lights_kitchen", "deactivate_lights_kitchen")
    assert is_polarity_swap("decrease_volume_none", "increase_volume_none")
    assert not is_polarity_swap("activate_lights_kitchen", "deactivate_lights_bedroom")  # other room
    assert not is_polarity_swap("activate_lights_none", "activate_lamp_none")
    assert not is_polarity_swap("increase_volume_none", "deactivate_volume_none")  # not an opposite pair
    assert not is_polarity_swap("change language_none_none", "change language_German_none")


def test_polarity_error_share_counts_errors_not_correct_answers():
    confusion = [[0] * len(LABELS) for _ in LABELS]
    confusion[0][0] = 50  # correct: not errors
    confusion[0][1] = 3  # on -> off, same room: polarity
    confusion[0][2] = 1  # on -> off, other room: not polarity
    confusion[3][4] = 2  # up -> down: polarity
    confusion[5][0] = 4
    assert polarity_error_share(confusion, LABELS) == 5 / 10
    assert polarity_error_share([[5, 0], [0, 5]], LABELS[:2]) == 0.0


def test_predict_sorts_clips_by_length_and_answers_in_dataset_order():
    """Batches are built from clips sorted by length; each answer still lands on its own clip and
    equals the model's answer for that clip alone."""
    torch.manual_seed(0)
    model = IntentClassifier(ModelDims(n_mels=16, n_ctx=64, n_state=32, n_head=2, n_layer=1), 5)
    g = torch.Generator().manual_seed(3)
    lengths = [40, 9, 33, 12, 60, 25, 18, 51, 7, 44]
    clips = [(torch.randn(16, n, generator=g), k % 5, k) for k, n in enumerate(lengths)]
    probs, targets = predict(model, clips, batch_size=3)  # a list is a map-style dataset
    model.eval()
    with torch.no_grad():
        alone = [model(mel[None])[1][0].softmax(-1) for mel, _, _ in clips]
    assert torch.allclose(probs, torch.stack(alone), atol=1e-6)
    alone = [int(p.argmax()) for p in alone]
    assert probs.argmax(-1).tolist() == alone
    assert targets.tolist() == [k % 5 for k in range(len(lengths))]
    assert len(set(alone)) > 1  # the answers differ between clips, so a shuffled order would show
