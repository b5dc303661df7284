"""Classification metrics against a hand-computed example, and the written reports."""

import json

import pytest
import torch

from training.evaluate import classification_metrics
from training.report import write_report


def test_metrics_match_a_hand_computed_example():
    # scikit-learn's f1_score docs example: macro F1 = 0.2667.
    targets, preds = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 2, 1, 0, 0, 1])
    m = classification_metrics(preds, targets, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["macro_f1"] == pytest.approx(0.26666, abs=1e-4)
    assert m["confusion"] == [[2, 0, 0], [1, 0, 1], [0, 2, 0]]
    # A label never seen nor predicted does not dilute the macro average.
    m4 = classification_metrics(preds, targets, ["a", "b", "c", "unused"])
    assert m4["macro_f1"] == pytest.approx(m["macro_f1"])


def test_reports_are_written(tmp_path):
    row = {
        "strategy": "mct",
        "init": "random",
        "bits": 4,
        "params": 1_000_000,
        "file_bytes": 600_000,
        "gmacs_per_clip": 0.5,
        "gmacs_30s": 5.0,
        "accuracy": 0.9,
        "macro_f1": 0.88,
        "checkpoint": "x-4bit.safetensors",
        "split": "test",
    }
    history = [
        {
            "branch": "4bit",
            "epoch": e,
            "phase": p,
            "loss": 1.0 / e,
            "ce": 1.0 / e,
            "valid_accuracy": 0.5,
            "valid_f1": 0.4,
            "seconds": 1.0,
        }
        for e, p in [(1, "D"), (2, "Q")]
    ]
    report = {
        "run": {
            "name": "t",
            "strategy": "mct",
            "init": "random",
            "teacher": "t.pt",
            "schedule": "DQ",
            "seed": 0,
            "data": "/d",
            "n_train": 10,
            "n_valid": 5,
            "n_labels": 3,
        },
        "results": [row],
        "history": history,
    }
    paths = write_report(tmp_path, report)
    assert json.loads(paths["json"].read_text())["results"][0]["bits"] == 4
    md = paths["md"].read_text()
    assert "| mct | random | 4 | 1.00 | 0.57 | 0.500 | 5.00 | 90.00 | 88.00 |" in md
    for key in ("bubbles", "curves"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
