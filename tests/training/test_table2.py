"""The Table 2 analog (``training.experiments.table2``): its statistics on made-up numbers, and the whole
pipeline on a tiny corpus with small Whisper-format files standing in for tiny.en and base."""

import json
from dataclasses import asdict

import pytest

from core.model import ModelDims
from tests.speech import requires_espeak
from tests.training_corpus import INTENTS, write_openai_checkpoint
from training.experiments.table2 import (
    Table2Plan,
    arm_of,
    command_minutes,
    paired_difference,
    report_finished_runs,
    run_table2,
    summarize,
    verdict,
)
from training.experiments.table2_probe import probe


def test_a_constant_per_voice_gain_has_a_zero_width_interval():
    mct = {f"v{i}": [0.8, 0.9] for i in range(30)}
    qad = {f"v{i}": [0.7, 0.8] for i in range(30)}
    diff = paired_difference(mct, qad)
    assert (
        diff["mean"] == pytest.approx(0.1) and diff["low"] == pytest.approx(0.1) and diff["high"] == pytest.approx(0.1)
    )
    assert diff["voices"] == 30


def test_the_interval_covers_the_mean_and_straddles_zero_for_noise():
    mct = {f"v{i}": [0.5 + (0.2 if i % 2 else -0.2)] for i in range(30)}
    qad = {f"v{i}": [0.5] for i in range(30)}
    diff = paired_difference(mct, qad)
    assert diff["mean"] == pytest.approx(0.0, abs=1e-12)
    assert -0.2 < diff["low"] < 0 < diff["high"] < 0.2


def test_each_checkpoint_stands_for_one_arm():
    assert arm_of("qad", {"quantization": "trained", "branch": "float", "bits": 32}) == "distill"
    assert arm_of("qad", {"quantization": "post-hoc k-means", "branch": "float", "bits": 4}) == "ptq"
    assert arm_of("qad", {"quantization": "trained", "branch": "4bit", "bits": 4}) == "qad"
    assert arm_of("mct", {"quantization": "trained", "branch": "4bit", "bits": 4}) == "mct"
    assert arm_of("mct", {"quantization": "trained", "branch": "float", "bits": 32}) is None  # not distillation only


def test_summary_gives_mean_and_sd_over_seeds():
    def row(arm, seed, acc):
        return {
            "arm": arm,
            "init": "whisper",
            "bits": 2,
            "accuracy": acc,
            "file_bytes": 1000,
            "per_speaker": {"a": [int(10 * acc), 10], "b": [int(10 * acc), 10]},
        }

    summary = summarize([row("qad", 0, 0.5), row("qad", 1, 0.7), row("mct", 0, 0.6), row("mct", 1, 0.8)])
    cells = {(r["arm"], r["bits"]): r for r in summary["table"]}
    assert cells[("qad", 2)]["accuracy_mean"] == pytest.approx(0.6)
    assert cells[("qad", 2)]["accuracy_sd"] == pytest.approx(0.1414, abs=1e-4)
    (paired,) = summary["mct_minus_qad"]
    assert paired["mean"] == pytest.approx(0.1) and paired["voices"] == 2


def test_verdict_names_the_widths_on_each_side_of_zero():
    paired = [
        {"init": "whisper", "bits": 2, "low": 0.01, "high": 0.07},
        {"init": "whisper", "bits": 8, "low": -0.07, "high": -0.03},
        {"init": "whisper", "bits": 4, "low": -0.01, "high": 0.03},
        {"init": "random", "bits": 4, "low": -0.02, "high": 0.0},
    ]
    assert verdict(paired) == (
        "From whisper init, MCT beats QAD at 2 bits; QAD beats MCT at 8 bits; the interval spans zero at 4 bits. "
        "From random init, MCT beats QAD at no width; QAD beats MCT at no width; the interval spans zero at 4 bits."
    )


def test_a_rerendered_report_keeps_the_command_time_only_for_the_same_runs(tmp_path):
    plan, rows = Table2Plan(seeds=(0,)), [{"arm": "qad", "accuracy": 0.5}]
    assert command_minutes(tmp_path, plan, rows) is None  # no report yet
    (tmp_path / "report.json").write_text(json.dumps({"plan": asdict(plan), "rows": rows, "wall_minutes": 61.5}))
    assert command_minutes(tmp_path, plan, rows) == 61.5
    assert command_minutes(tmp_path, plan, [{"arm": "qad", "accuracy": 0.6}]) is None
    assert command_minutes(tmp_path, Table2Plan(seeds=(0, 1)), rows) is None


@requires_espeak
@pytest.mark.slow
def test_the_grid_runs_end_to_end_and_reads_the_test_split_only_in_the_compared_runs(tmp_path):
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    write_openai_checkpoint(whisper / "tiny.en", ModelDims(n_mels=80, n_ctx=1500, n_state=64, n_head=2, n_layer=2))
    write_openai_checkpoint(whisper / "base", ModelDims(n_mels=80, n_ctx=1500, n_state=96, n_head=2, n_layer=1), seed=1)
    plan = Table2Plan(
        voices={"train": 3, "valid": 1, "test": 2},
        widths=(2,),
        seeds=(0, 1),
        inits=("whisper",),
        student={"n_state": 64, "n_head": 2, "n_layer": 1},
        intents=tuple(INTENTS),
        candidates={
            "mean-refit": {"centroid_update": "mean"},
            "sum-fixed": {"centroid_update": "sum", "labels": "fixed"},
        },
        common={"data": {"batch_size": 4, "augment": False}, "train": {"threads": 1}, "distill": {"lr_head": 3e-3}},
    )
    path = run_table2(tmp_path / "out", whisper, plan, tmp_path / "report", progress=False)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["selection"]["chosen"] in plan.candidates
    for name in plan.candidates:  # selection never reads the test split
        (row,) = json.loads((tmp_path / "out" / "select" / name / "report.json").read_text())["results"]
        assert row["split"] == "valid"
    arms = sorted((r["arm"], r["bits"], r["seed"]) for r in report["rows"])
    assert arms == sorted(
        (arm, bits, seed) for seed in (0, 1) for arm, bits in (("distill", 32), ("ptq", 2), ("qad", 2), ("mct", 2))
    )
    assert all(r["split"] == "test" and len(r["per_speaker"]) == 2 for r in report["rows"])
    text = path.read_text()
    assert "| mct | whisper | 2 |" in text and "| distill | whisper | 32 |" in text and "MCT - QAD" in text
    # The Q-phase probe reads the chosen settings back and scores every epoch on the validation split.
    table = probe(tmp_path / "out", whisper, plan).splitlines()
    assert len(table) == 2 + 4 and all(row.count("|") == 7 for row in table)
    assert all(
        json.loads((tmp_path / "out" / "probe" / arm / "report.json").read_text())["results"][0]["split"] == "valid"
        for arm in ("as-chosen", "frozen")
    )
    # A grid in progress: the report of the finished runs names the others and trains nothing.
    (tmp_path / "out" / "runs" / "mct-whisper-seed1" / "report.json").unlink()
    partial = report_finished_runs(tmp_path / "out", whisper, plan, tmp_path / "partial").read_text()
    assert "Not finished when this report was written** (1 runs): runs/mct-whisper-seed1" in partial
    assert not (tmp_path / "out" / "runs" / "mct-whisper-seed1" / "report.json").exists()
