"""The run folder of ``training.train``: opening it (or reopening it to resume), its log and
config, the resume state's plan check, and the state every branch of an MCT run starts from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.model import IntentClassifier
from training.config import Config, ConfigError, save_config
from training.distributed import Processes
from training.run_logging import setup_logging
from training.run_state import RunState, RunStateError, load_state, save_state
from training.schedule import Plan

log = logging.getLogger("quads.train")


@dataclass
class Run:
    """The run folder and what was found there: ``state`` is the saved state when resuming."""

    out: Path
    procs: Processes
    progress: bool  # progress bars: asked for, and this is rank 0
    state: RunState | None

    @property
    def state_path(self) -> Path:
        return self.out / "resume" / "state.safetensors"

    @property
    def fork_path(self) -> Path:
        """The state every non-shared branch starts from."""
        return self.out / "resume" / "fork.safetensors"


def open_run(cfg: Config, procs: Processes, resume: bool) -> Run:
    """Create (or reopen, with ``resume``) the run folder; start its log; write its config.yaml."""
    out = Path(cfg.train.out).expanduser()
    if procs.main:
        (out / "resume").mkdir(parents=True, exist_ok=True)
    procs.barrier()
    setup_logging(out, procs.main)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = Run(out, procs, cfg.train.progress and procs.main, None)
    if resume and run.state_path.exists():
        run.state = load_state(run.state_path)
    elif resume:
        log.info("nothing to resume in %s: starting from the beginning", out)
    elif run.state_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if procs.main:
        for stale in [*out.glob(".*.tmp"), *(out / "resume").glob(".*.tmp")]:  # temp files of a killed write
            stale.unlink(missing_ok=True)
        save_config(cfg, out / "config.yaml")
    log.info(
        "run %s: strategy %s, bits %s, %d process(es) on %s",
        out,
        cfg.train.strategy,
        cfg.train.bits,
        procs.world,
        procs.device,
    )
    return run


def provenance_of(cfg: Config, plan: Plan, n_train: int) -> dict:
    """What every checkpoint of the run records about how it was made."""
    return {
        "strategy": cfg.train.strategy,
        "init": cfg.student.init,
        "teacher": cfg.teacher.path or None,
        "schedule": plan.pattern,
        "seed": cfg.train.seed,
        "data": cfg.data.root,
        "n_train": n_train,
        "pad_to_30s": cfg.data.pad_to_30s,
        "alpha": cfg.distill.alpha,
        "width_match": cfg.distill.width_match,
    }


def plan_info(plan: Plan) -> dict:
    """What a resume state records of the plan, so that a changed plan is refused."""
    return {"strategy": plan.strategy, "pattern": plan.pattern, "branches": [b.name for b in plan.branches]}


def restore(run: Run, plan: Plan, model: IntentClassifier, projection: nn.Module | None) -> tuple[list[dict], int]:
    """(history, first epoch to run): from the saved state when resuming, else ([], 0)."""
    if run.state is None:
        return [], 0
    if run.state.info.get("plan") != plan_info(plan):
        raise RunStateError(f"{run.state_path}: saved for plan {run.state.info.get('plan')}, not {plan_info(plan)}")
    model.load_state_dict(run.state.model)
    if projection is not None and run.state.projection is not None:
        projection.load_state_dict(run.state.projection)
    log.info("resuming after epoch %d of %d", run.state.done, len(plan.epochs))
    return list(run.state.history), run.state.done


def enter_branch(run: Run, plan: Plan, i: int, model: IntentClassifier, projection: nn.Module | None) -> None:
    """Every non-shared branch starts from the same state, the end of the shared epochs (or the
    initial model): the first such branch saves it, the others load it."""
    first_own = next(b for b, branch in enumerate(plan.branches) if not branch.shared)
    if plan.epochs[i].branch == first_own:
        if run.procs.main:
            save_state(
                run.fork_path,
                RunState(i, model.state_dict(), projection=projection.state_dict() if projection is not None else None),
            )
    else:
        fork = load_state(run.fork_path)
        model.load_state_dict(fork.model)
        if projection is not None and fork.projection is not None:
            projection.load_state_dict(fork.projection)
    run.procs.barrier()
