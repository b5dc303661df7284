"""Fault injection: SIGKILL a real training process during distillation, during quantization and
in the middle of writing its resume state; each time ``--resume`` carries on. No file is ever
corrupt, and the finished run is bit-for-bit the uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.checkpoint import load_checkpoint
from tests.speech import requires_espeak
from tests.training_corpus import REPO, random_teacher, tiny_corpus, tiny_student_args
from training.config import load_config
from training.run_state import RunStateError, load_state
from training.train_cli import cli

pytestmark = [requires_espeak, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    corpus = tiny_corpus(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("resume")
    teacher = random_teacher(tmp / "teacher.safetensors", n_state=96)

    def args(out: Path) -> list[str]:
        return [
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--strategy",
            "mct",
            "--bits",
            "32,4",
            "--schedule",
            "DDQQDQ",
            "--teacher",
            str(teacher),
            "--set",
            f"teacher.cache_dir={tmp / 'cache'}",
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--no-progress",
            "--set",
            "data.augment=false",
            "--set",
            "distill.lr_encoder=1e-3",
            "--set",
            "train.eval_every_epoch=false",
            *tiny_student_args(64, 1),
        ]

    return tmp, args


def start(args: list[str], module: str = "training.train_cli") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"training exited ({proc.returncode}) before the kill point: {proc.stderr.read()[-2000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("kill point not reached in time")
        time.sleep(0.01)


def epochs_done(out: Path) -> int:
    """Epochs the saved resume state says are complete (0 before the first is saved).

    Polled while the run writes: safetensors opens the file more than once, so a read that
    straddles the writer's rename can see two different files; such a read is retried. Files
    are checked strictly by ``assert_nothing_corrupt`` once the writer is dead.
    """
    path = out / "resume" / "state.safetensors"
    for attempt in range(3):
        try:
            return load_state(path).done if path.exists() else 0
        except RunStateError:
            if attempt == 2:
                raise
            time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def assert_nothing_corrupt(out: Path) -> None:
    """Every file a reader could pick up is complete: checkpoints, resume state, config, reports."""
    for path in out.rglob("*.safetensors"):
        if path.parent.name == "resume":
            load_state(path)
        else:
            load_checkpoint(path)
    load_config(out / "config.yaml")
    if (out / "report.json").exists():
        json.loads((out / "report.json").read_text())


def test_sigkill_at_any_phase_then_resume_equals_an_uninterrupted_run(setup):
    tmp, args = setup
    # The uninterrupted reference runs in this process (same single thread as the subprocesses).
    assert cli(args(tmp / "reference")) == 0

    out = tmp / "killed"
    # Plan: epochs 1-2 shared D (units 0-1), then FFDF for the float branch (units 2-5) and QQDQ
    # for the 4-bit one (6-9).
    # 1. During distillation: epoch 1 is saved, epoch 2 (D, mid-phase: Adam's state) is running.
    proc = start(args(out))
    wait_for(lambda: epochs_done(out) >= 1, proc)
    time.sleep(0.05)
    kill(proc)
    assert_nothing_corrupt(out)
    assert epochs_done(out) == 1

    # 2. During quantization: the 4-bit branch's first Q epoch is saved and its second is running,
    #    so the resume restores SGD momentum and the codebooks in the middle of a phase.
    proc = start(args(out) + ["--resume"])
    wait_for(lambda: epochs_done(out) >= 7, proc)
    time.sleep(0.05)
    kill(proc)
    assert_nothing_corrupt(out)
    assert epochs_done(out) == 7

    # 3. While the resume state is being written: the temp file exists, the rename has not happened.
    done_before = load_state(out / "resume" / "state.safetensors").done
    proc = start(args(out) + ["--resume"], module="tests.slow_state_writes")
    wait_for(lambda: any((out / "resume").glob(".state.safetensors.*.tmp")), proc)
    kill(proc)
    assert any((out / "resume").glob(".*.tmp"))
    assert load_state(out / "resume" / "state.safetensors").done == done_before  # the old state, intact
    assert_nothing_corrupt(out)

    # 4. Finish.
    final = subprocess.run(
        [sys.executable, "-m", "training.train_cli", *args(out), "--resume"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming after epoch" in final.stderr
    assert not list((out / "resume").glob(".*.tmp"))
    assert_nothing_corrupt(out)

    ref_report = json.loads((tmp / "reference" / "report.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert [(r["bits"], r["accuracy"], r["macro_f1"]) for r in report["results"]] == [
        (r["bits"], r["accuracy"], r["macro_f1"]) for r in ref_report["results"]
    ]
    # Deterministic: the same weights to the bit (the content hash covers every tensor).
    assert [r["sha256"] for r in report["results"]] == [r["sha256"] for r in ref_report["results"]]
    assert [(h["branch"], h["epoch"], h["phase"], h["loss"]) for h in report["history"]] == [
        (h["branch"], h["epoch"], h["phase"], h["loss"]) for h in ref_report["history"]
    ]
