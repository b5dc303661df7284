"""quads-train: fine-tune, distil and quantize a Whisper-encoder intent classifier (QUADS MCT).

    quads-train --data /data/fsc --teacher ~/whisper/large-v2.pt --init whisper:~/whisper/base.pt \
        --set student.preset=base --strategy mct --bits 32,16,8,4 --out runs/fsc

The run, from top to bottom of ``train()``: read the data; load the teacher and compute (or read
back) its embeddings once; build the student; make the plan (``training.schedule``); then for
every epoch of the plan set up the phase (a fresh optimizer, and a k-means fit for Q), train one
epoch, evaluate, export the branch's checkpoints when it ends, and save the resume state; last,
evaluate the exported checkpoints on the test split and write the reports.

Phases:
* D, distillation: ``alpha * L1(teacher, student) + (1 - alpha) * CE``; Adam, separate learning
  rates for the encoder and the head.
* Q, quantization: ``L_centroid + CE``; SGD with momentum and a cosine schedule over the phase;
  k-means fitted at the phase start, weights snapped to the codebooks after every step.
* F, fine-tuning (``--strategy finetune``): CE only, Adam as in D. This makes a teacher from
  nothing but the data.

Under ``torchrun`` the same command trains with DistributedDataParallel (gloo on CPU, nccl on
GPU); rank 0 alone writes files. ``--resume`` continues after the last completed epoch.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from service.audio import N_FRAMES
from service.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from service.compute import count_parameters
from service.model import IntentClassifier
from service.whisper import WhisperImportError
from service.version import package_version
from training.config import Config, ConfigError, differences, load_config, parse_override, save_config
from training.datasets import DatasetError, label_set, load_samples
from training.evaluate import evaluate_model, frame_counts, gmacs_at, mean_gmacs
from training.features import BadSampleError, MelDataset, collate
from training.losses import ChannelMaxPool, ClassificationLoss, DistillationLoss, QuantizationLoss, StudentProjection
from training.quantize import KMeansQuantizer, quantize_model
from training.run_state import RunState, RunStateError, load_state, save_state
from training.schedule import PHASE_NAMES, Plan, make_plan, scale_pattern
from training.student import StudentInitError, init_student, student_dims
from training.teacher import Teacher, TeacherCache, load_teacher

log = logging.getLogger("quads.train")

# Settings that may differ when resuming: they change how, not what, is computed.
RESUMABLE_CHANGES = {"train.progress", "train.device", "train.threads", "data.num_workers", "teacher.batch_size"}


# ------------------------------------------------------------------------------ processes


@dataclass
class Processes:
    """This process's place in a (possibly single-process) DDP job."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_processes(device: str) -> Processes:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Processes(rank, world, dev)


# ------------------------------------------------------------------------------- one step


class TrainStep(nn.Module):
    """The student and its phase's loss as one module, so that DDP sees every trained parameter
    (a learned width projection lives in the distillation loss). Returns (loss, parts for logs)."""

    def __init__(self, model: IntentClassifier, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, mels: Tensor, lengths: Tensor, labels: Tensor, teacher: Tensor | None = None):
        embedding, logits = self.model(mels, lengths)
        if isinstance(self.loss, DistillationLoss):
            out = self.loss(embedding, logits, teacher, labels)
        else:
            out = self.loss(logits, labels)
        return out.total, out.parts


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` steps."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


@dataclass(frozen=True)
class PhaseSchedule:
    """The learning rate through one phase: a linear warm-up over ``warmup`` steps, then constant
    or (``decay``) a cosine decay to 0 at the phase's last step. Scales each group's ``base_lr``."""

    first: int  # the phase step of this epoch's first batch
    total: int  # steps in the whole phase
    warmup: int = 0
    decay: bool = False

    def scale(self, step: int) -> float:
        """The factor at phase step ``step`` (0-based)."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.decay:
            factor *= cosine_lr(1.0, step - self.warmup, self.total - self.warmup) if step >= self.warmup else 1.0
        return factor


def train_epoch(
    step_module: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    snap: Callable[[], object] | None = None,
    targets: Tensor | None = None,
    online_teacher: tuple[Teacher, nn.Module | None] | None = None,
    schedule: PhaseSchedule | None = None,
    grad_clip: float = 0.0,
    desc: str = "",
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``: forward, backward, step and (in Q) snap. Returns the mean loss parts.

    targets: (N, C) cached teacher embeddings indexed by dataset item; or ``online_teacher`` =
    (teacher, frame_pool) runs it on each batch. schedule: sets each group's lr from its
    ``base_lr`` before every step (None: the lr is left as it is). grad_clip: clip the gradient norm to this (0: off). snap: called after every
    optimizer step (Q: ``QuantizationLoss.snap``).
    """
    step_module.train()
    sums: dict[str, float] = {}
    n_batches = 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    for i, (mels, lengths, labels, indices) in enumerate(bar):
        if schedule is not None:
            factor = schedule.scale(schedule.first + i)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        mels, lengths, labels = mels.to(device), lengths.to(device), labels.to(device)
        teacher = None
        if targets is not None:
            teacher = targets[indices].to(device)
        elif online_teacher is not None:
            teacher = online_teacher[0].embed(mels, lengths, online_teacher[1])

        loss, parts = step_module(mels, lengths, labels, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(step_module.parameters(), grad_clip)
        optimizer.step()
        if snap is not None:
            snap()

        n_batches += 1
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
    return {key: value / max(n_batches, 1) for key, value in sums.items()}


def make_optimizer(kind: str, model: IntentClassifier, loss: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam with separate encoder/head learning rates for D and F; SGD with momentum for Q."""
    if kind == "Q":
        return torch.optim.SGD([{"params": list(model.parameters()), "lr": cfg.quant.lr, "base_lr": cfg.quant.lr}],
                               momentum=cfg.quant.momentum)
    head = [*model.head.parameters(), *loss.parameters()]  # the head, and a learned projection if any
    return torch.optim.Adam([
        {"params": list(model.encoder.parameters()), "lr": cfg.distill.lr_encoder, "base_lr": cfg.distill.lr_encoder},
        {"params": head, "lr": cfg.distill.lr_head, "base_lr": cfg.distill.lr_head},
    ])


def all_reduce_mean(parts: dict[str, float], procs: Processes) -> dict[str, float]:
    if procs.world == 1 or not parts:
        return parts
    keys = sorted(parts)
    t = torch.tensor([parts[k] for k in keys], dtype=torch.float64, device=procs.device)
    dist.all_reduce(t)
    return {k: float(v) / procs.world for k, v in zip(keys, t.tolist())}


# ---------------------------------------------------------------------------------- data


def load_split(cfg: Config, split: str, labels: list[str] | None, *, train: bool, progress: bool) -> MelDataset:
    d = cfg.data
    samples = load_samples(Path(d.root).expanduser(), split, headset=d.slurp_headset, synthetic=d.slurp_synthetic and train)
    if labels is None:
        labels = label_set(samples)
    return MelDataset(
        samples, labels, n_mels=d.n_mels, pad_to_30s=d.pad_to_30s, on_error=d.on_error,
        augment=d.augment and train, seed=cfg.train.seed, max_seconds=d.max_seconds,
        cache_dir=Path(d.feature_cache).expanduser() if d.feature_cache else None, progress=progress,
    )


def teacher_targets(cfg: Config, teacher: Teacher, dataset: MelDataset, frame_pool, procs: Processes) -> Tensor:
    """Cached teacher embeddings of ``dataset``: rank 0 computes and writes them, the others read them."""
    cache = TeacherCache(cfg.teacher.cache_dir)
    kwargs = dict(batch_size=cfg.teacher.batch_size, device=procs.device, progress=cfg.train.progress and procs.main)
    if procs.main:
        targets = cache.embeddings(teacher, dataset, frame_pool, **kwargs)
    procs.barrier()
    if not procs.main:
        targets = cache.embeddings(teacher, dataset, frame_pool, write=False, **kwargs)
    return targets


# -------------------------------------------------------------------------------- outputs


def checkpoint_path(cfg: Config, bits: int) -> Path:
    return Path(cfg.train.out).expanduser() / f"{cfg.train.name}-{bits}bit.safetensors"


def export_branch(cfg: Config, model: IntentClassifier, labels: list[str], plan: Plan, branch_index: int,
                  provenance: dict) -> list[Path]:
    """Write the branch's checkpoints. Widths it did not train at are quantized post hoc (QaD)."""
    branch = plan.branches[branch_index]
    written = []
    for bits in branch.exports:
        target = model
        if bits <= 8 and bits != branch.train_bits:
            target = copy.deepcopy(model).cpu()
            quantize_model(target, bits, cfg.quant.kmeans_iters)
        how = "trained" if bits == branch.train_bits or bits >= 16 else "post-hoc k-means"
        prov = {**provenance, "bits": bits, "branch": branch.name, "quantization": how}
        written.append(save_checkpoint(checkpoint_path(cfg, bits), target, labels, bits, provenance=prov))
        log.info("wrote %s (%s)", written[-1], how)
    return written


def evaluate_exports(cfg: Config, paths: list[Path], dataset: MelDataset, split: str, procs: Processes) -> list[dict]:
    """Evaluate each exported file as the service will load it."""
    rows = []
    lengths = frame_counts(dataset)
    for path in paths:
        ckpt = load_checkpoint(path)
        model = ckpt.model.to(procs.device)
        metrics = evaluate_model(model, dataset, batch_size=cfg.data.batch_size, device=procs.device, compute=False)
        model.cpu()
        rows.append({
            "strategy": cfg.train.strategy, "init": cfg.student.init, "bits": ckpt.bits,
            "params": count_parameters(ckpt.model), "file_bytes": ckpt.file_bytes, "memory_bytes": ckpt.memory_bytes,
            "gmacs_per_clip": mean_gmacs(ckpt.model, lengths), "gmacs_30s": gmacs_at(ckpt.model, N_FRAMES),
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"], "split": split,
            "checkpoint": str(path), "sha256": ckpt.sha256,
        })
        log.info("%s: %s accuracy %.2f%%, macro F1 %.2f%%, %.2f MB", path.name, split, 100 * metrics["accuracy"],
                 100 * metrics["macro_f1"], ckpt.file_bytes / 2**20)
    return rows


_LOG_HANDLERS: list[logging.Handler] = []


def close_logging() -> None:
    root = logging.getLogger()
    for handler in _LOG_HANDLERS:
        root.removeHandler(handler)
        handler.close()
    _LOG_HANDLERS.clear()


def setup_logging(out: Path | None, main: bool) -> None:
    """Log to stderr (unless the root logger already does), and on rank 0 also to ``<out>/train.log``;
    replaces the handlers of an earlier run."""
    close_logging()
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root.setLevel(logging.INFO if main else logging.WARNING)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):  # a caller (quads-demo) may log already
        _LOG_HANDLERS.append(logging.StreamHandler(sys.stderr))
    if out is not None and main:
        _LOG_HANDLERS.append(logging.FileHandler(out / "train.log"))
    for handler in _LOG_HANDLERS:
        handler.setFormatter(fmt)
        root.addHandler(handler)


# ---------------------------------------------------------------------------------- train


def train(cfg: Config, *, resume: bool = False) -> dict:
    """Run the whole plan of ``cfg`` (see the module docstring). Returns the report (rank 0) or {}."""
    cfg.validate()
    procs = setup_processes(cfg.train.device)
    out = Path(cfg.train.out).expanduser()
    state_dir = out / "resume"
    state_path, fork_path = state_dir / "state.safetensors", state_dir / "fork.safetensors"
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(exist_ok=True)
    procs.barrier()
    setup_logging(out, procs.main)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    progress = cfg.train.progress and procs.main
    state: RunState | None = None
    if resume and state_path.exists():
        state = load_state(state_path)
    elif resume:
        log.info("nothing to resume in %s: starting from the beginning", out)
    elif state_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if procs.main:
        for stale in [*out.glob(".*.tmp"), *state_dir.glob(".*.tmp")]:  # temp files of a killed write
            stale.unlink(missing_ok=True)
        save_config(cfg, out / "config.yaml")
    log.info("run %s: strategy %s, bits %s, %d process(es) on %s", out, cfg.train.strategy, cfg.train.bits,
             procs.world, procs.device)

    # Data.
    if Path(cfg.data.root).expanduser().is_file():
        log.warning("%s is a single manifest: it serves as train, validation and test split alike, so the "
                    "scores are on training data; pass a folder of train/valid/test manifests", cfg.data.root)
    train_ds = load_split(cfg, cfg.data.train_split, None, train=True, progress=progress)
    labels = train_ds.labels
    try:
        valid_ds = load_split(cfg, cfg.data.valid_split, labels, train=False, progress=progress)
    except (DatasetError, BadSampleError) as e:
        log.warning("no validation split (%s): per-epoch accuracy is not reported", e)
        valid_ds = None
    log.info("data: %d training clips, %s validation clips, %d labels", len(train_ds),
             len(valid_ds) if valid_ds is not None else "no", len(labels))

    # Teacher, student, and how their widths are matched.
    teacher = load_teacher(cfg.teacher.path) if cfg.teacher.path else None
    dims = student_dims(cfg.student, cfg.data.n_mels)
    model = init_student(cfg.student, dims, len(labels), teacher_encoder=teacher.encoder if teacher else None,
                         seed=cfg.train.seed).to(procs.device)
    frame_pool, projection, targets, online_teacher = None, None, None, None
    if cfg.train.strategy != "finetune":
        if cfg.distill.width_match == "maxpool":
            frame_pool = ChannelMaxPool(teacher.width, dims.n_state)
        else:
            torch.manual_seed(cfg.train.seed + 1)
            projection = StudentProjection(dims.n_state, teacher.width).to(procs.device)
        log.info("width match: %s", frame_pool.describe() if frame_pool else f"learned projection {dims.n_state}->{teacher.width}")
        if cfg.teacher.cache:
            targets = teacher_targets(cfg, teacher, train_ds, frame_pool, procs)
            teacher = None  # the cache replaces it: free its memory
        else:
            if teacher.dims.n_mels != cfg.data.n_mels:
                raise ConfigError(f"teacher.cache=false runs the teacher on the student's features, but it takes "
                                  f"{teacher.dims.n_mels} mel bins and data.n_mels={cfg.data.n_mels}; enable the cache")
            online_teacher = (teacher.to(procs.device), frame_pool)
    distill_loss = DistillationLoss(cfg.distill.alpha, projection)

    plan = make_plan(cfg.train.strategy, cfg.train.schedule, cfg.train.bits)
    epochs = plan.epochs
    log.info("plan: %s", plan.describe())
    plan_info = {"strategy": plan.strategy, "pattern": plan.pattern, "branches": [b.name for b in plan.branches]}
    history: list[dict] = []
    done = 0
    if state is not None:
        if state.info.get("plan") != plan_info:
            raise RunStateError(f"{state_path}: saved for plan {state.info.get('plan')}, not {plan_info}")
        model.load_state_dict(state.model)
        if projection is not None and state.projection is not None:
            projection.load_state_dict(state.projection)
        done, history = state.done, state.history
        log.info("resuming after epoch %d of %d", done, len(epochs))
    provenance = {
        "strategy": cfg.train.strategy, "init": cfg.student.init, "teacher": cfg.teacher.path or None,
        "schedule": plan.pattern, "seed": cfg.train.seed, "data": cfg.data.root, "n_train": len(train_ds),
        "pad_to_30s": cfg.data.pad_to_30s, "alpha": cfg.distill.alpha, "width_match": cfg.distill.width_match,
    }

    sampler = DistributedSampler(train_ds, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers)
    first_own_branch = next(i for i, b in enumerate(plan.branches) if not b.shared)
    optimizer = quantizer = step_module = None
    epoch_bar = tqdm(total=len(epochs), initial=done, desc="epochs", unit="epoch", disable=not progress, dynamic_ncols=True)
    with logging_redirect_tqdm():
        for u in range(done, len(epochs)):
            ep = epochs[u]
            branch = plan.branches[ep.branch]
            first_of_branch = u == 0 or epochs[u - 1].branch != ep.branch
            # Every non-shared branch starts from the same state: the end of the shared epochs
            # (or the initial model). The first such branch saves it; the others load it.
            if first_of_branch and not branch.shared:
                if ep.branch == first_own_branch:
                    if procs.main:
                        save_state(fork_path, RunState(u, model.state_dict(),
                                                       projection=projection.state_dict() if projection else None))
                else:
                    fork = load_state(fork_path)
                    model.load_state_dict(fork.model)
                    if projection is not None and fork.projection is not None:
                        projection.load_state_dict(fork.projection)
                procs.barrier()

            # Phase set-up: a fresh optimizer at each phase start (the weights just jumped, to or
            # from the codebooks), k-means fitted at the start of a Q phase. Resuming in the
            # middle of a phase restores both from the state instead.
            if first_of_branch or ep.epoch_in_phase == 0 or u == done:
                kind = ep.kind
                loss = {"D": distill_loss, "Q": None, "F": ClassificationLoss()}[kind]
                quantizer = None
                if kind == "Q":
                    quantizer = KMeansQuantizer(model, branch.train_bits, cfg.quant.kmeans_iters)
                    loss = QuantizationLoss(quantizer, cfg.quant.centroid_weight)
                optimizer = make_optimizer(kind, model, loss, cfg)
                resumed_mid_phase = u == done and state is not None and ep.epoch_in_phase > 0
                if resumed_mid_phase:
                    optimizer.load_state_dict(state.optimizer)
                    if quantizer is not None and state.quantizer is not None:
                        quantizer.load_state_dict({
                            "bits": state.quantizer["bits"],
                            "centroids": {n: t.to(procs.device) for n, t in state.quantizer["centroids"].items()},
                            "labels": {n: t.to(procs.device) for n, t in state.quantizer["labels"].items()},
                        })
                elif quantizer is not None:
                    loss.fit()
                step_module = TrainStep(model, loss)
                if procs.world > 1:
                    step_module = DistributedDataParallel(step_module, device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
                                                          broadcast_buffers=False)

            # One epoch. Reseeding from (seed, epoch) makes a resumed run repeat an uninterrupted one.
            torch.manual_seed(cfg.train.seed * 1_000_003 + u)
            sampler.set_epoch(ep.index)
            train_ds.set_epoch(ep.index)
            steps = len(loader)
            if ep.kind == "Q":
                schedule = PhaseSchedule(ep.epoch_in_phase * steps, ep.phase_epochs * steps, decay=True)
            else:
                schedule = PhaseSchedule(ep.epoch_in_phase * steps, ep.phase_epochs * steps,
                                         warmup=cfg.distill.warmup_steps, decay=cfg.distill.decay)
            desc = f"epoch {ep.index + 1}/{len(plan.pattern)} {branch.name} {ep.kind}"
            started = time.perf_counter()
            parts = train_epoch(step_module, loader, optimizer, device=procs.device,
                                snap=loss.snap if isinstance(loss, QuantizationLoss) else None,
                                targets=targets if ep.kind == "D" else None,
                                online_teacher=online_teacher if ep.kind == "D" else None,
                                schedule=schedule,
                                grad_clip=cfg.distill.grad_clip if ep.kind != "Q" else 0.0,
                                desc=desc, progress=progress)
            parts = all_reduce_mean(parts, procs)
            record = {"branch": branch.name, "epoch": ep.index + 1, "phase": ep.kind, **parts,
                      "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
            if procs.main and valid_ds is not None and cfg.train.eval_every_epoch:
                metrics = evaluate_model(model, valid_ds, batch_size=cfg.data.batch_size, device=procs.device, compute=False)
                record.update(valid_accuracy=metrics["accuracy"], valid_f1=metrics["macro_f1"])
            history.append(record)
            log.info("%s (%s): %s%s, %.1f s", desc, PHASE_NAMES[ep.kind],
                     " ".join(f"{k} {v:.4g}" for k, v in parts.items()),
                     f" | valid accuracy {100 * record['valid_accuracy']:.2f}% F1 {100 * record['valid_f1']:.2f}%"
                     if "valid_accuracy" in record else "", record["seconds"])

            # Outputs first, then the state that says they are done: a kill between the two
            # repeats this epoch and rewrites the same files.
            if procs.main:
                if u + 1 == len(epochs) or epochs[u + 1].branch != ep.branch:
                    if not branch.shared:
                        export_branch(cfg, model, labels, plan, ep.branch, provenance)
                save_state(state_path, RunState(
                    u + 1, model.state_dict(), optimizer.state_dict(),
                    quantizer.state_dict() if quantizer is not None and quantizer.clusters else None,
                    projection.state_dict() if projection is not None else None, history, {"plan": plan_info},
                ))
            procs.barrier()
            epoch_bar.update(1)
    epoch_bar.close()

    report: dict = {}
    if procs.main:
        report = final_report(cfg, plan, labels, train_ds, valid_ds, history, procs)
    procs.barrier()
    if procs.world > 1:
        dist.destroy_process_group()
    close_logging()
    return report


def final_report(cfg: Config, plan: Plan, labels: list[str], train_ds: MelDataset, valid_ds: MelDataset | None,
                 history: list[dict], procs: Processes) -> dict:
    """Evaluate every exported checkpoint on the test split (else validation) and write the reports."""
    split, dataset = cfg.data.test_split, None
    try:
        dataset = load_split(cfg, split, labels, train=False, progress=cfg.train.progress)
    except (DatasetError, BadSampleError) as e:
        log.warning("no test split (%s): evaluating on the validation split", e)
        split, dataset = cfg.data.valid_split, valid_ds
    paths = [checkpoint_path(cfg, b) for branch in plan.branches for b in branch.exports]
    rows = evaluate_exports(cfg, paths, dataset, split, procs) if dataset is not None else []
    report = {
        "run": {
            "name": cfg.train.name, "strategy": cfg.train.strategy, "init": cfg.student.init,
            "teacher": cfg.teacher.path, "schedule": plan.pattern, "seed": cfg.train.seed, "data": cfg.data.root,
            "n_train": len(train_ds), "n_valid": len(valid_ds) if valid_ds is not None else 0,
            "n_labels": len(labels), "skipped_train": [f"{p}: {r}" for p, r in train_ds.skipped],
        },
        "config": cfg.to_dict(),
        "results": rows,
        "history": history,
    }
    from training.report import write_report  # matplotlib is slow to import; only the end of a run needs it

    paths = write_report(Path(cfg.train.out).expanduser(), report)
    log.info("reports: %s", ", ".join(str(p) for p in paths.values()))
    return report


# ------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quads-train",
        description="Train a QUADS intent classifier: fine-tune, distil, and k-means quantize (MCT).",
        epilog="Any config value: --set section.key=value (sections: data, student, teacher, distill, quant, train). "
               "See docs/training.md.",
    )
    p.add_argument("--config", help="YAML config file (see config.yaml in any run's output folder)")
    p.add_argument("--data", help="FSC root, SLURP root, or a manifest (.csv/.jsonl)")
    p.add_argument("--out", help="output folder: checkpoints, reports, config.yaml, resume state")
    p.add_argument("--name", help="checkpoint name prefix: <out>/<name>-<bits>bit.safetensors (default quads-fsc)")
    p.add_argument("--strategy", help="finetune | distill | qad | mct")
    p.add_argument("--bits", help="comma-separated widths from 1..8, 16, 32, e.g. 32,16,8,4")
    p.add_argument("--teacher", help="teacher: OpenAI Whisper .pt, Hugging Face folder, or QUADS .safetensors")
    p.add_argument("--init", help="student init: random | whisper:<path> | teacher-layers")
    p.add_argument("--schedule", help="one letter per epoch, D or Q (default: the paper's DDDQQQDDDDDDQQQQQQQQ)")
    p.add_argument("--epochs", type=int, help="scale the schedule to this many epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config value")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < --config file (or, with --resume, the run's saved config.yaml) < flags < --set."""
    flags = {
        ("data", "root"): args.data, ("train", "out"): args.out, ("train", "name"): args.name,
        ("train", "strategy"): args.strategy, ("train", "bits"): args.bits, ("teacher", "path"): args.teacher,
        ("student", "init"): args.init, ("train", "schedule"): args.schedule, ("train", "seed"): args.seed,
        ("data", "batch_size"): args.batch_size, ("train", "device"): args.device, ("train", "threads"): args.threads,
        ("train", "progress"): False if args.no_progress else None,
    }
    updates = [{section: {key: value}} for (section, key), value in flags.items() if value is not None]
    updates += [parse_override(text) for text in args.set]

    def resolve(base: str | Path | None) -> Config:
        cfg = load_config(base, updates)
        if args.epochs is not None:
            cfg = replace(cfg, train=replace(cfg.train, schedule=scale_pattern(cfg.train.schedule, args.epochs)))
        return cfg

    cfg = resolve(args.config)
    saved_path = Path(cfg.train.out).expanduser() / "config.yaml"
    if args.resume and saved_path.is_file():
        # The saved config is the run's; the command line may restate it but not change it.
        requested = cfg if args.config else resolve(saved_path)
        changed = [k for k in differences(load_config(saved_path), requested) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(f"--resume continues the run saved in {saved_path}, but these settings differ: "
                              f"{', '.join(changed)}; drop them, or start a new run with another --out")
        cfg = requested
    return cfg


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        train(cfg, resume=args.resume)
    except (ConfigError, DatasetError, BadSampleError, StudentInitError, CheckpointError, RunStateError,
            WhisperImportError) as e:
        print(f"quads-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
