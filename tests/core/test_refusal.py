"""Refusal (core.refusal) and its calibration and scores (training.evaluate), against hand computations."""

from __future__ import annotations

import pytest
import torch

from core.refusal import REFUSAL_LABEL, decide, refusal_index
from training.evaluate import answers, calibrate_threshold, refusal_metrics

LABELS = ["lights_on", "lights_off", REFUSAL_LABEL]


def test_decide_picks_the_best_intent_and_never_the_refusal_class():
    assert decide([0.5, 0.2, 0.3], 2, 0.0) == (0, True)
    assert decide([0.2, 0.3, 0.5], 2, 0.0) == (1, False)  # the refusal class outvotes lights_off
    assert decide([0.45, 0.1, 0.45], 2, 0.0) == (0, False)  # a tie is not a win
    assert decide([0.5, 0.2, 0.3], 2, 0.5) == (0, True)  # the threshold is inclusive
    assert decide([0.5, 0.2, 0.3], 2, 0.51) == (0, False)
    assert decide([0.1, 0.6, 0.3], None, 0.0) == (1, True)  # a model that cannot refuse: the argmax
    assert decide([0.1, 0.6, 0.3], None, 0.7) == (1, False)  # ... unless a threshold is set


def test_refusal_index():
    assert refusal_index(LABELS) == 2 and refusal_index(LABELS[:2]) is None


def test_answers_and_metrics_by_hand():
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # lights_on, sure
            [0.4, 0.35, 0.25],  # lights_on, unsure
            [0.1, 0.3, 0.6],  # refused by the class
            [0.2, 0.7, 0.1],  # lights_off
        ]
    )
    targets = torch.tensor([0, 0, 2, 2])
    assert answers(probs, LABELS, 0.0).tolist() == [0, 0, 2, 1]
    assert answers(probs, LABELS, 0.5).tolist() == [0, 2, 2, 1]
    metrics = refusal_metrics(answers(probs, LABELS, 0.5), targets, LABELS)
    # Commands: rows 0 and 1; row 1 refused. Non-commands: rows 2 and 3; row 3 accepted.
    assert metrics == {"commands": 2, "not_commands": 2, "command_accuracy": 0.5, "refused": 0.5, "false_accepts": 0.5}
    assert refusal_metrics(answers(probs, LABELS[:2] + ["other"], 0.5), targets, LABELS[:2] + ["other"]) == {}


def test_calibration_refuses_at_most_the_allowed_share_of_commands():
    # Commands' best-intent scores 0.9, 0.8, 0.6, 0.55 and one the refusal class outvotes (score 0).
    probs = torch.tensor(
        [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.55, 0.25, 0.2], [0.2, 0.1, 0.7], [0.3, 0.1, 0.6]]
    )
    targets = torch.tensor([0, 1, 0, 0, 1, 2])  # the last is a non-command: not counted
    # Sorted command scores: [0, 0.55, 0.6, 0.8, 0.9]; allowing 1 of 5 refused: the threshold is the 2nd, 0.55.
    assert calibrate_threshold(probs, targets, LABELS, max_refused=0.2) == pytest.approx(0.55)
    assert calibrate_threshold(probs, targets, LABELS, max_refused=0.4) == pytest.approx(0.6)
    assert calibrate_threshold(probs, targets, LABELS, max_refused=0.0) == 0.0  # already one refused by the class
    refused = (answers(probs, LABELS, 0.6)[targets != 2] == 2).float().mean()
    assert refused == pytest.approx(0.4)  # 0.55 and the outvoted one
    assert calibrate_threshold(probs, targets, LABELS[:2] + ["other"]) == 0.0  # no refusal class
    sure = torch.tensor([[0.99, 0.005, 0.005]] * 10)
    assert calibrate_threshold(sure, torch.zeros(10, dtype=torch.long), LABELS, max_refused=0.1) == 0.95  # capped
