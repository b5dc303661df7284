"""Multi-process training: ``torchrun`` with 2 CPU processes (gloo) runs the same command under
DistributedDataParallel, and matches one process that sees the same batches whole."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from core.checkpoint import load_checkpoint
from tests.speech import requires_espeak
from tests.training_corpus import REPO, random_teacher, tiny_corpus, tiny_student_args
from training.train_cli import cli

pytestmark = [requires_espeak, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one_process_with_the_combined_batch(tmp_path_factory):
    corpus = tiny_corpus(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("ddp")
    teacher = random_teacher(tmp / "teacher.safetensors", n_state=96)

    def args(out, batch):
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
            "DQ",
            "--teacher",
            str(teacher),
            "--set",
            f"teacher.cache_dir={tmp / 'cache'}",
            "--batch-size",
            str(batch),
            "--threads",
            "1",
            "--no-progress",
            "--set",
            "data.augment=false",
            "--set",
            "distill.lr_encoder=1e-3",
            *tiny_student_args(64, 1),
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "training.train_cli",
            *args(tmp / "ddp", 4),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "2 process(es)" in (tmp / "ddp" / "train.log").read_text()

    # One process, batch 8: the DistributedSampler's permutation is the same, and rank r's batch j
    # is items r, r+2, r+4, r+6 of the single process's batch j, so the averaged gradients agree.
    assert cli(args(tmp / "single", 8)) == 0

    # Rank 0 alone writes: exactly one set of outputs.
    outputs = sorted(p.name for p in (tmp / "ddp").iterdir())
    assert outputs == [
        "bubbles.png",
        "config.yaml",
        "curves.png",
        "quads-fsc-32bit.safetensors",
        "quads-fsc-4bit.safetensors",
        "report.json",
        "report.md",
        "resume",
        "train.log",
    ]

    ddp_report = json.loads((tmp / "ddp" / "report.json").read_text())
    single_report = json.loads((tmp / "single" / "report.json").read_text())
    for a, b in zip(ddp_report["history"], single_report["history"]):
        assert (a["branch"], a["phase"]) == (b["branch"], b["phase"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)  # mean over both ranks = mean over the batch
    ddp_model = load_checkpoint(tmp / "ddp" / "quads-fsc-32bit.safetensors").model.state_dict()
    single_model = load_checkpoint(tmp / "single" / "quads-fsc-32bit.safetensors").model.state_dict()
    for name, value in single_model.items():
        torch.testing.assert_close(ddp_model[name], value, atol=2e-4, rtol=1e-3, msg=name)
    q4 = load_checkpoint(tmp / "ddp" / "quads-fsc-4bit.safetensors")
    assert all(torch.unique(p).numel() <= 16 for p in q4.model.parameters() if p.dim() > 1)
