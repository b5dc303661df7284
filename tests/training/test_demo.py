"""The demo pipeline's report: rows of every run in one table, with the qad run's float files as the distill baseline."""

import json

import pytest

from training.experiments.demo import PRESETS, TEST_CORPORA, cli, write_demo_report


def row(strategy, init, bits, acc):
    return {
        "strategy": strategy,
        "init": init,
        "bits": bits,
        "params": 1e6,
        "file_bytes": 2**20 * bits / 32,
        "gmacs_per_clip": 0.1,
        "gmacs_30s": 1.5,
        "accuracy": acc,
        "macro_f1": acc,
        "checkpoint": f"m-{bits}bit",
    }


def test_report_collects_every_run(tmp_path):
    runs = {
        "default": [row("mct", "whisper:runs/demo/whisper/tiny.en", 32, 0.9)],
        "grid/qad-random": [row("qad", "random", 32, 0.8), row("qad", "random", 4, 0.5)],
        "grid/mct-random": [row("mct", "random", 4, 0.7)],
    }
    for name, rows in runs.items():
        (tmp_path / name).mkdir(parents=True)
        history = [
            {
                "epoch": e + 1,
                "seconds": 30.0,
                "branch": "shared",
                "phase": "D",
                "loss": 1.0,
                "ce": 1.0,
                "valid_accuracy": 0.5,
            }
            for e in range(len(rows))
        ]
        (tmp_path / name / "report.json").write_text(json.dumps({"results": rows, "history": history}))
    held_out = [
        {
            "checkpoint": "quads-fsc-4bit.safetensors",
            "bits": 4,
            "corpus": corpus,
            "measures": what,
            "n": 93,
            "accuracy": 0.875,
            "macro_f1": 0.86,
            "polarity_error_share": 0.5,
            "file_bytes": 2**20,
            "commands": 80,
            "not_commands": 13,
            "command_accuracy": 0.9,
            "refused": 0.02,
            "false_accepts": 0.077,
        }
        for corpus, what in TEST_CORPORA.items()
    ]
    held_out.append(
        {
            "checkpoint": "old-4bit.safetensors",
            "bits": 4,
            "corpus": "corpus",
            "measures": "a model that cannot refuse",
            "n": 93,
            "accuracy": 0.5,
            "macro_f1": 0.5,
            "polarity_error_share": 0.25,
            "file_bytes": 2**20,
        }
    )
    (tmp_path / "held-out.json").write_text(json.dumps(held_out))  # as evaluate_default caches it
    path = write_demo_report(tmp_path, tmp_path / "out", PRESETS["quick"], seed=0)
    text = path.read_text()
    assert (
        "| quads-fsc-4bit.safetensors | 4 | 1.00 | corpus-klatt | unseen Klatt family (engine proxy) | 80 | 90.0 | "
        "2.0 | 13 | 7.7 | 87.5 | 50 |"
    ) in text
    assert (
        "| old-4bit.safetensors | 4 | 1.00 | corpus | a model that cannot refuse | 93 | - | - | 0 | - | 50.0 | 25 |"
        in text
    )
    assert "| grid/qad-random | distill | random | 32 |" in text  # float files of a qad run = distillation only
    assert "| grid/qad-random | qad | random | 4 |" in text
    assert "| grid/mct-random | mct | random | 4 | 1.00 | 0.12 |" in text
    assert "| default | mct | whisper | 32 |" in text
    assert text.index("| default |") < text.index("| grid/")
    assert "| grid/qad-random | 2 | 1.0 |" in text and "| **all** | | **2.0** |" in text  # minutes of epochs
    assert (tmp_path / "out" / "bubbles.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())["runs"]) == 4


def test_unknown_step_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli(["--steps", "corpus,bogus"])
    assert "unknown steps ['bogus']; choose from whisper, corpus, default, grid, report" in capsys.readouterr().err
