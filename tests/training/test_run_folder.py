"""training.run_folder: opening a run folder, refusing to overwrite one, resuming, and branch forks."""

from __future__ import annotations

import pytest
import torch
import yaml

from core.model import IntentClassifier, ModelDims
from training.config import ConfigError, load_config
from training.distributed import Processes
from training.run_folder import enter_branch, open_run, plan_info, restore
from training.run_state import RunState, RunStateError, save_state
from training.schedule import make_plan

DIMS = ModelDims(n_mels=8, n_ctx=16, n_state=8, n_head=2, n_layer=1)


def config(out, **train):
    return load_config(updates=[{"train": {"out": str(out), "progress": False, "threads": 1, **train}}])


def model(seed: int) -> IntentClassifier:
    torch.manual_seed(seed)
    return IntentClassifier(DIMS, 3)


def test_a_new_run_writes_its_config_and_a_second_one_in_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    run = open_run(config(out, seed=5), Processes(), resume=False)
    assert run.state is None and run.state_path == out / "resume" / "state.safetensors"
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 5
    save_state(run.state_path, RunState(1, model(0).state_dict()))
    with pytest.raises(ConfigError, match="--resume"):
        open_run(config(out), Processes(), resume=False)


def test_resume_reopens_the_state_and_clears_half_written_files(tmp_path):
    out = tmp_path / "run"
    assert open_run(config(out), Processes(), resume=True).state is None  # nothing yet: starts afresh
    save_state(out / "resume" / "state.safetensors", RunState(2, model(0).state_dict(), history=[{"epoch": 1}]))
    stale = out / "resume" / ".state.safetensors.tmp"
    stale.write_bytes(b"half")
    run = open_run(config(out), Processes(), resume=True)
    assert run.state.done == 2 and not stale.exists()


def test_restore_loads_the_model_and_refuses_a_changed_plan(tmp_path):
    out = tmp_path / "run"
    plan = make_plan("mct", "DQ", [32, 4])
    run = open_run(config(out), Processes(), resume=False)
    assert restore(run, plan, model(0), None) == ([], 0)

    saved = model(1)
    save_state(run.state_path, RunState(1, saved.state_dict(), history=[{"e": 0}], info={"plan": plan_info(plan)}))
    run = open_run(config(out), Processes(), resume=True)
    fresh = model(2)
    assert restore(run, plan, fresh, None) == ([{"e": 0}], 1)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), saved.state_dict().values()))
    with pytest.raises(RunStateError, match="saved for plan"):
        restore(run, make_plan("mct", "DDQ", [32, 4]), model(2), None)


def test_every_own_branch_starts_from_the_state_where_the_shared_epochs_ended(tmp_path):
    plan = make_plan("mct", "DQ", [32, 4, 2])  # a shared D epoch, then one branch per width
    own = [i for i, e in enumerate(plan.epochs) if plan.starts_branch(i) and not plan.branches[e.branch].shared]
    assert len(own) >= 2
    run = open_run(config(tmp_path / "run"), Processes(), resume=False)
    end_of_shared = model(3)
    enter_branch(run, plan, own[0], end_of_shared, None)  # the first branch saves the fork
    later = model(4)  # the next branch starts from another state...
    enter_branch(run, plan, own[1], later, None)  # ...and is put back at the fork
    assert all(torch.equal(a, b) for a, b in zip(later.state_dict().values(), end_of_shared.state_dict().values()))
