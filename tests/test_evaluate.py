"""quads-eval's error analysis: which mistakes swap a command's polarity (on/off, up/down)."""

from training.evaluate import is_polarity_swap, polarity_error_share

LABELS = ["activate_lights_kitchen", "deactivate_lights_kitchen", "deactivate_lights_bedroom",
          "increase_volume_none", "decrease_volume_none", "change language_none_none"]  # fmt: skip


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
