"""Train a QUADS intent classifier: fine-tune, distil and k-means quantize (MCT). ``train(cfg)`` is
the whole run; ``quads-train`` (``training.train_cli``) builds ``cfg`` from the command line.

The run, top to bottom: open the run folder (or resume it); read the data; load the teacher and
compute (or read back) its embeddings once; build the student; make the plan
(``training.schedule``); then for every epoch of the plan: enter its branch, start its phase
(a fresh optimizer, and a k-means fit for Q), train one epoch (``training.loop``), and end the
epoch (evaluate, export the branch's checkpoints when it ends, save the resume state); last,
evaluate the exported checkpoints on the test split and write the reports.

Phases:
* D, distillation: ``alpha * L1(teacher, student) + (1 - alpha) * CE``; Adam, separate learning
  rates for the encoder and the head.
* Q, quantization: ``L_centroid + CE``; SGD with momentum and a cosine schedule over the phase;
  k-means fitted at the phase start, weights snapped to the codebooks after every step.
* F, fine-tuning (``--strategy finetune``): CE only, Adam as in D. This makes a teacher from
  nothing but the data.

Under ``torchrun`` the same run trains with DistributedDataParallel (``training.distributed``);
rank 0 alone writes files. ``resume=True`` continues after the last completed epoch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from core.checkpoint import load_checkpoint
from core.cpu_features import native_bfloat16
from core.model import IntentClassifier
from training.config import Config, load_config
from training.datasets import DatasetError, label_set, load_samples
from training.distributed import Processes, all_reduce_mean, setup_processes
from training.evaluate import evaluate_checkpoint, evaluate_model, summary
from training.export import export_branch, exported_paths
from training.features import BadSampleError, MelDataset, MelFeatures, collate
from training.loop import EpochSettings, PhaseSchedule, TrainStep, distillation_optimizer, train_epoch
from training.losses import (
    ClassificationLoss,
)
from training.quantization_phase import QuantizationPhase
from training.run_folder import Run, enter_branch, open_run, plan_info, provenance_of, restore
from training.run_logging import close_logging
from training.run_state import RunState, save_state
from training.schedule import PHASE_NAMES, Epoch, Plan, make_plan
from training.student import copy_teacher_head, init_student, student_dims
from training.teacher import load_teacher
from training.width_match import WidthMatch, match_widths

log = logging.getLogger("quads.train")


def train(cfg: Config, *, resume: bool = False) -> dict:
    """Run the whole plan of ``cfg`` (see the module docstring). Returns the report (rank 0) or {}."""
    cfg.check()
    run = open_run(cfg, setup_processes(cfg.train.device), resume)
    t = setup(cfg, run)
    first = len(t.history)
    epochs = t.plan.epochs
    epoch_bar = tqdm(
        total=len(epochs), initial=first, desc="epochs", unit="epoch", disable=not run.progress, dynamic_ncols=True
    )
    with logging_redirect_tqdm():
        for i in range(first, len(epochs)):
            t.enter(i, resumed=run.state if i == first else None)
            # Reseeding from (seed, epoch) makes a resumed run repeat an uninterrupted one.
            torch.manual_seed(cfg.train.seed * 1_000_003 + i)
            t.sampler.set_epoch(epochs[i].index)
            t.train_ds.set_epoch(epochs[i].index)
            t.history.append(t.run_epoch(i))
            t.end_epoch(i)
            epoch_bar.update(1)
    epoch_bar.close()

    report = final_report(t) if run.procs.main else {}
    run.procs.barrier()
    if run.procs.world > 1:
        dist.destroy_process_group()
    close_logging()
    return report


def setup(cfg: Config, run: Run) -> Training:
    """Everything the epochs need: data, teacher targets, the student, the plan, the resumed state."""
    procs = run.procs
    train_ds, valid_ds = load_data(cfg, run.progress)
    teacher = load_teacher(cfg.teacher.path) if cfg.teacher.path else None
    dims = student_dims(cfg.student, cfg.data.n_mels)
    model = init_student(
        cfg.student,
        dims,
        len(train_ds.labels),
        teacher_encoder=teacher.encoder if teacher else None,
        seed=cfg.train.seed,
    ).to(procs.device)
    match = match_widths(cfg, teacher, dims, train_ds, procs)
    if cfg.student.head == "teacher":
        log.info("student head: %s", copy_teacher_head(model, teacher, train_ds.labels, match.projection))
    del teacher  # the cache (or match.online_teacher) holds what distillation needs

    plan = make_plan(cfg.train.strategy, cfg.train.schedule, cfg.train.bits)
    log.info("plan: %s", plan.describe())
    if cfg.train.autocast == "bfloat16" and procs.device.type == "cpu" and not native_bfloat16():
        log.warning(
            "train.autocast bfloat16: this CPU has no bfloat16 matrix hardware, so epochs run slower "
            "than in float32 (set train.autocast: none)"
        )
    history, first = restore(run, plan, model, match.projection)
    sampler = DistributedSampler(train_ds, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(
        train_ds, batch_size=cfg.data.batch_size, sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers
    )
    t = Training(cfg, run, plan, model, match, train_ds, valid_ds, sampler, loader, history)
    t.provenance = provenance_of(cfg, plan, len(train_ds))
    if run.state is not None and run.state.quantizer is not None and not plan.starts_branch(first):
        # Resuming inside a branch after one of its Q phases: its codebooks, for a later Q phase that keeps them.
        t.codebooks = QuantizationPhase.restore(model, cfg.quant, run.state.quantizer, procs.device)
    return t


def train_in(out: Path, corpus: Path, seed: int, progress: bool, **sections: dict) -> dict:
    """One run into ``out`` on ``corpus``, the way recipes call it: resumed if it was interrupted, its
    report read back if it finished. Features are cached beside the corpus (``corpus.parent/features``);
    ``sections`` are config overrides, ``{"distill": {"lr_encoder": 1e-4}, ...}``."""
    report = out / "report.json"
    if report.exists():
        log.info("%s: done already", out)
        return json.loads(report.read_text())
    updates = [
        {"data": {"root": str(corpus), "feature_cache": str(corpus.parent / "features")}},
        {"train": {"out": str(out), "seed": seed, "progress": progress}},
        *({k: v} for k, v in sections.items()),
    ]
    return train(load_config(None, updates), resume=True)


# ----------------------------------------------------------------------------------- data


def load_data(cfg: Config, progress: bool) -> tuple[MelDataset, MelDataset | None]:
    """(train, valid) splits; valid is None (with a warning) when the data has none."""
    if Path(cfg.data.root).expanduser().is_file():
        log.warning(
            "%s is a single manifest: it serves as train, validation and test split alike, so the "
            "scores are on training data; pass a folder of train/valid/test manifests",
            cfg.data.root,
        )
    train_ds = load_split(cfg, cfg.data.train_split, None, train=True, progress=progress)
    try:
        valid_ds = load_split(cfg, cfg.data.valid_split, train_ds.labels, train=False, progress=progress)
    except (DatasetError, BadSampleError) as e:
        log.warning("no validation split (%s): per-epoch accuracy is not reported", e)
        valid_ds = None
    log.info(
        "data: %d training clips, %s validation clips, %d labels",
        len(train_ds),
        len(valid_ds) if valid_ds is not None else "no",
        len(train_ds.labels),
    )
    return train_ds, valid_ds


def load_split(cfg: Config, split: str, labels: list[str] | None, *, train: bool, progress: bool) -> MelDataset:
    d = cfg.data
    samples = load_samples(
        Path(d.root).expanduser(), split, headset=d.slurp_headset, synthetic=d.slurp_synthetic and train
    )
    if labels is None:
        labels = label_set(samples)
    return MelDataset(
        samples,
        labels,
        MelFeatures(d.n_mels, d.pad_to_30s, d.max_seconds),
        on_error=d.on_error,
        augment_seed=cfg.train.seed if d.augment and train else None,
        cache_dir=Path(d.feature_cache).expanduser() if d.feature_cache else None,
        progress=progress,
    )


# --------------------------------------------------------------------------- phases and epochs


@dataclass
class Phase:
    """What one phase trains with: its loss, a fresh optimizer, and in Q the phase's codebooks."""

    loss: nn.Module
    optimizer: torch.optim.Optimizer
    step_module: nn.Module  # TrainStep(model, loss), wrapped in DDP when there are several processes
    quantization: QuantizationPhase | None = None


@dataclass
class Training:
    """A run's state from epoch to epoch, in one object (built by ``setup``)."""

    cfg: Config
    run: Run
    plan: Plan
    model: IntentClassifier
    match: WidthMatch
    train_ds: MelDataset
    valid_ds: MelDataset | None
    sampler: DistributedSampler
    loader: DataLoader
    history: list[dict]
    provenance: dict = field(default_factory=dict)
    phase: Phase | None = None
    # The branch's latest Q phase: a later Q phase of the branch may keep its assignments
    # (quant.labels: fixed), and the resume state saves its codebooks, in D epochs too.
    codebooks: QuantizationPhase | None = None

    @property
    def procs(self) -> Processes:
        return self.run.procs

    def enter(self, i: int, resumed: RunState | None) -> None:
        """Before epoch ``i``: a new branch starts from the shared epochs' end state, and a new phase
        (or the first epoch after a resume) gets its optimizer and, in Q, its codebooks."""
        epoch, plan = self.plan.epochs[i], self.plan
        if plan.starts_branch(i):
            self.codebooks = None
            if not plan.branches[epoch.branch].shared:
                enter_branch(self.run, plan, i, self.model, self.match.projection)
        if self.phase is None or plan.starts_branch(i) or epoch.epoch_in_phase == 0:
            self.phase = self.start_phase(epoch, resumed)
            self.codebooks = self.phase.quantization or self.codebooks

    def start_phase(self, epoch: Epoch, resumed: RunState | None) -> Phase:
        """A fresh optimizer (the weights just jumped, to or from the codebooks), and for Q a new
        ``QuantizationPhase``. When a resume lands in the middle of a phase, the codebooks and the
        optimizer come back from the ``resumed`` state instead."""
        cfg, model = self.cfg, self.model
        mid_phase = resumed is not None and epoch.epoch_in_phase > 0
        quantization = None
        if epoch.kind == "Q":
            if mid_phase and resumed.quantizer is not None:
                quantization = QuantizationPhase.restore(model, cfg.quant, resumed.quantizer, self.procs.device)
            else:
                bits = self.plan.branches[epoch.branch].train_bits
                quantization = QuantizationPhase.begin(
                    model, bits, cfg.quant, previous=self.codebooks, calibration=self.calibration_losses()
                )
            loss, optimizer = quantization.loss, quantization.optimizer()
        else:
            loss = self.match.distill_loss if epoch.kind == "D" else ClassificationLoss()
            optimizer = distillation_optimizer(model, loss, cfg)
        if mid_phase:
            optimizer.load_state_dict(resumed.optimizer)
        step_module = TrainStep(model, loss, autocast=None if cfg.train.autocast == "none" else torch.bfloat16)
        if self.procs.world > 1:
            step_module = DistributedDataParallel(
                step_module,
                broadcast_buffers=False,
                device_ids=[self.procs.device.index] if self.procs.device.type == "cuda" else None,
            )
        return Phase(loss, optimizer, step_module, quantization)

    def calibration_losses(self) -> Iterator[Tensor]:
        """Cross-entropy of the first ``quant.calibration_batches`` training batches, one at a time
        (what sensitivity-weighted k-means weighs the weights by); lazy, so unused costs nothing."""
        self.model.eval()  # no dropout; the model is still float here
        for i, (mels, lengths, labels, _) in enumerate(self.loader):
            if i == self.cfg.quant.calibration_batches:
                break
            device = self.procs.device
            logits = self.model(mels.to(device), lengths.to(device))[1]
            yield torch.nn.functional.cross_entropy(logits.float(), labels.to(device))

    def run_epoch(self, i: int) -> dict:
        """Train epoch ``i``, evaluate on the validation split, log it; returns its history record."""
        cfg, epoch, phase, procs = self.cfg, self.plan.epochs[i], self.phase, self.procs
        steps, distilling = len(self.loader), epoch.kind == "D"
        warmup, decay = (0, True) if epoch.kind == "Q" else (cfg.distill.warmup_steps, cfg.distill.decay)
        schedule = PhaseSchedule(epoch.epoch_in_phase * steps, epoch.phase_epochs * steps, warmup, decay)
        branch = self.plan.branches[epoch.branch]
        desc = f"epoch {epoch.index + 1}/{len(self.plan.pattern)} {branch.name} {epoch.kind}"
        started = time.perf_counter()
        parts = train_epoch(
            phase.step_module,
            self.loader,
            phase.optimizer,
            EpochSettings(
                device=procs.device,
                snap=phase.quantization.after_step if phase.quantization is not None else None,
                targets=self.match.targets if distilling else None,
                online_teacher=self.match.online_teacher if distilling else None,
                schedule=schedule,
                grad_clip=cfg.distill.grad_clip if epoch.kind != "Q" else 0.0,
                desc=desc,
                progress=self.run.progress,
            ),
        )
        parts = all_reduce_mean(parts, procs)
        record = {"branch": branch.name, "epoch": epoch.index + 1, "phase": epoch.kind, **parts}
        record.update(lr=phase.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        if procs.main and self.valid_ds is not None and cfg.train.eval_every_epoch:
            metrics = evaluate_model(self.model, self.valid_ds, device=procs.device)  # its own batch size
            record.update(valid_accuracy=metrics["accuracy"], valid_f1=metrics["macro_f1"])
        valid = (
            f" | valid accuracy {100 * record['valid_accuracy']:.2f}% F1 {100 * record['valid_f1']:.2f}%"
            if "valid_accuracy" in record
            else ""
        )
        losses = " ".join(f"{k} {v:.4g}" for k, v in parts.items())
        log.info("%s (%s): %s%s, %.1f s", desc, PHASE_NAMES[epoch.kind], losses, valid, record["seconds"])
        return record

    def end_epoch(self, i: int) -> None:
        """Rank 0 writes the branch's checkpoints if it ends here, then the resume state that says this
        epoch is done: a kill between the two repeats the epoch and rewrites the same files."""
        plan, model, phase = self.plan, self.model, self.phase
        if self.procs.main:
            branch = plan.branches[plan.epochs[i].branch]
            if plan.ends_branch(i) and not branch.shared:
                trained = phase.quantization.codebooks() if phase.quantization is not None else None
                export_branch(self.cfg, model, self.train_ds.labels, branch, trained, self.provenance, self.valid_ds)
            state = RunState(
                i + 1,
                model.state_dict(),
                phase.optimizer.state_dict(),
                self.codebooks.state_dict() if self.codebooks is not None else None,
                self.match.projection.state_dict() if self.match.projection is not None else None,
                self.history,
                {"plan": plan_info(plan)},
            )
            save_state(self.run.state_path, state)
        self.procs.barrier()


# ---------------------------------------------------------------------------------- report


def final_report(t: Training) -> dict:
    """Evaluate every exported checkpoint on the test split (else validation) and write the reports."""
    cfg, plan, labels, train_ds, valid_ds = t.cfg, t.plan, t.train_ds.labels, t.train_ds, t.valid_ds
    split, dataset = cfg.data.test_split, None
    try:
        dataset = load_split(cfg, split, labels, train=False, progress=cfg.train.progress)
    except (DatasetError, BadSampleError) as e:
        log.warning("no test split (%s): evaluating on the validation split", e)
        split, dataset = cfg.data.valid_split, valid_ds
    rows = []
    for path in exported_paths(cfg, plan) if dataset is not None else []:
        checkpoint = load_checkpoint(path)
        result = evaluate_checkpoint(checkpoint, dataset, split, device=t.procs.device)
        made = {k: checkpoint.provenance.get(k) for k in ("branch", "quantization")}
        rows.append({"strategy": cfg.train.strategy, "init": cfg.student.init, **made, **summary(result)})
        log.info(
            "%s: %s accuracy %.2f%%, macro F1 %.2f%%, %.2f MB",
            path.name,
            split,
            100 * result["accuracy"],
            100 * result["macro_f1"],
            result["file_bytes"] / 2**20,
        )
    report = {
        "run": {
            "name": cfg.train.name,
            "strategy": cfg.train.strategy,
            "init": cfg.student.init,
            "teacher": cfg.teacher.path,
            "schedule": plan.pattern,
            "seed": cfg.train.seed,
            "data": cfg.data.root,
            "n_train": len(train_ds),
            "n_valid": len(valid_ds) if valid_ds is not None else 0,
            "n_labels": len(labels),
            "skipped_train": [f"{p}: {r}" for p, r in train_ds.skipped],
        },
        "config": cfg.model_dump(),
        "results": rows,
        "history": t.history,
    }
    from training.report import (
        write_report,  # matplotlib is slow to import; only the end of a run needs it
    )

    paths = write_report(Path(cfg.train.out).expanduser(), report)
    log.info("reports: %s", ", ".join(str(p) for p in paths.values()))
    return report
