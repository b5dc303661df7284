"""The compute path chosen at start (service.compute_path): the candidates, timing, and refusing a path that is wrong."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient

import service.compute_path as compute_path
from core.checkpoint import load_checkpoint
from service.compute_path import ComputePath, candidate_paths, choose_compute_path
from service.main import create_app
from service.settings import Settings
from tests.http_checks import metric_samples


def test_candidates_follow_the_precision_and_the_hardware():
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(candidate_paths("auto", bfloat16_hardware=False)) == ["float32-onednn", "float32-torch"]
    assert names(candidate_paths("auto", bfloat16_hardware=True)) == [
        "float32-onednn",
        "float32-torch",
        "bfloat16-onednn",
        "bfloat16-torch",
    ]
    assert names(candidate_paths("float32")) == ["float32-onednn", "float32-torch"]
    assert names(candidate_paths("int8")) == ["int8"]


def test_the_fastest_correct_path_is_chosen(checkpoint_path):
    model = load_checkpoint(checkpoint_path).model
    choice = choose_compute_path(model, "float32", repeats=3)
    assert set(choice.milliseconds) == {"float32-onednn", "float32-torch"} and not choice.rejected
    assert choice.milliseconds[choice.path.name] == min(choice.milliseconds.values())
    assert "the fastest correct path on this CPU" in choice.describe()
    assert choose_compute_path(model, "int8").describe() == "int8 (the only candidate)"


def test_a_path_that_changes_the_answers_is_refused(checkpoint_path, monkeypatch):
    real = compute_path.prepare_model

    def broken_torch_kernels(model, dtype, onednn=True):
        real(model, dtype, onednn)
        if not onednn:  # a kernel that computes something else
            with torch.no_grad():
                model.head.bias[0] += 10.0

    monkeypatch.setattr(compute_path, "prepare_model", broken_torch_kernels)
    choice = choose_compute_path(load_checkpoint(checkpoint_path).model, "float32", repeats=2)
    assert choice.path == ComputePath("float32", onednn=True)
    assert list(choice.rejected) == ["float32-torch"] and "a probability moved by" in choice.rejected["float32-torch"]


def test_the_service_reports_the_path_it_chose(checkpoint_path):
    with TestClient(create_app(Settings(model=checkpoint_path, threads=1))) as client:  # precision auto
        info = client.get("/v1/model").json()
        assert info["compute_path"] in {p.name for p in candidate_paths("auto")}
        assert info["precision"] == info["compute_path"].split("-")[0]
        labels = [dict(k[1]) for k in metric_samples(client) if k[0] == "quads_model_info"]
        assert labels[0]["compute_path"] == info["compute_path"]
