"""Training-speed benchmark: the cost of quantization-aware steps, and of the teacher in distillation.

    python -m bench.bench_training [--threads 2] [--out bench/results/training.md]
    python -m bench.bench_training --threads 1 --clock cpu   # on a machine shared with other jobs

1. One optimizer step on the same batch, whisper-tiny dims, 8 bits (256 centroids per matrix):
   * plain: forward, cross-entropy, backward, SGD step;
   * quantization phase (ours): the same with ``QuantizationLoss`` (L_centroid + CE) and its
     ``snap()`` (vectorised centroid update: index_add + bincount, then write back). Target:
     <= 1.2x plain;
   * the authors' approach: the plain step plus a Python loop over clusters for the update.
2. One distillation epoch over the same clips: student only (cross-entropy), with the teacher
   embeddings from ``TeacherCache`` (read once), and with the teacher run on every batch.
   Target: cached == student-only.

Medians over repeats, the variants interleaved round by round; ratios against the plain step /
the student-only epoch. Prints Markdown (and writes it to ``--out``). On a busy machine,
wall-clock times with several threads are dominated by the other jobs (threads spin-wait for
each other); one thread and the process's CPU time (``--clock cpu``) give steady ratios.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from core.model import WHISPER_BASE, WHISPER_TINY, AudioEncoder, IntentClassifier
from training.config import Config
from training.features import collate
from training.loop import EpochSettings, TrainStep, distillation_optimizer, train_epoch
from training.losses import (
    ChannelMaxPool,
    ClassificationLoss,
    DistillationLoss,
    QuantizationLoss,
)
from training.quantize import KMeansQuantizer
from training.teacher import Teacher, compute_targets


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    return interleaved_medians({"fn": fn}, repeats, warmup)["fn"]


CLOCK = time.perf_counter  # --clock cpu: time.process_time, steadier on a shared machine (use with --threads 1)


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, run in turn round after round, so a load change on a shared
    machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = CLOCK()
            fn()
            times[name].append(CLOCK() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def loop_centroid_update(quantizer: KMeansQuantizer) -> None:
    """The authors' update: for every matrix, for every cluster, the mean of its weights; then write back."""
    with torch.no_grad():
        for name, p in quantizer.params.items():
            w, labels, centroids = p.reshape(-1), quantizer.labels[name], quantizer.centroids[name]
            for k in range(centroids.numel()):
                members = labels == k
                if members.any():
                    centroids[k] = w[members].mean()
            p.copy_(centroids[labels].view_as(p))


def bench_steps(args) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    # Two copies of the model, so that the plain steps never move the quantized model's weights
    # off their codebooks between its own steps (in training, a snap always precedes a forward).
    plain_model = IntentClassifier(WHISPER_TINY, 31)
    model = copy.deepcopy(plain_model)
    frames = int(args.seconds * 100)
    mels = torch.randn(args.batch, WHISPER_TINY.n_mels, frames)
    lengths = torch.full((args.batch,), frames)
    labels = torch.randint(0, 31, (args.batch,))
    quantizer = KMeansQuantizer(model, 8)
    quant_loss = QuantizationLoss(quantizer)
    quant_loss.fit()
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=1e-4, momentum=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def sgd_step(net, opt, loss_fn):
        embedding, logits = net(mels, lengths)
        loss = loss_fn(embedding, logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cross_entropy(embedding, logits, y):
        return F.cross_entropy(logits, y)

    def plain():
        sgd_step(plain_model, plain_optimizer, cross_entropy)

    def quantization_phase():
        sgd_step(model, optimizer, lambda embedding, logits, y: quant_loss(embedding, logits, y).total)
        quant_loss.snap()

    def authors_loop():
        sgd_step(model, optimizer, cross_entropy)
        loop_centroid_update(quantizer)

    same_batch = interleaved_medians(
        {"plain": plain, "quant": quantization_phase, "snap": quant_loss.snap}, args.repeats
    )
    slow = args.loop_repeats
    t_loop = median_seconds(authors_loop, slow, warmup=0)
    t_loop_update = median_seconds(lambda: loop_centroid_update(quantizer), slow, warmup=0)
    return [
        ("plain step (forward, CE, backward, SGD)", same_batch["plain"]),
        ("quantization-phase step (+ L_centroid, vectorised snap)", same_batch["quant"]),
        ("  of which snap() alone", same_batch["snap"]),
        ("authors' step (plain + per-cluster Python loop)", t_loop),
        ("  of which the Python-loop update alone", t_loop_update),
    ]


def bench_distillation(args) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    student = IntentClassifier(WHISPER_TINY, 31)
    teacher = Teacher(AudioEncoder(WHISPER_BASE).eval(), Path("random-whisper-base"), "0" * 64, "whisper")
    for p in teacher.encoder.parameters():
        p.requires_grad_(False)
    pool = ChannelMaxPool(WHISPER_BASE.n_state, WHISPER_TINY.n_state)
    g = torch.Generator().manual_seed(0)
    clips = [
        (torch.randn(80, int(100 * (args.seconds + 0.5 * (i % 3 - 1))), generator=g), i % 31, i)
        for i in range(args.clips)
    ]

    class Clips(torch.utils.data.Dataset):
        n_mels, augment, pad_to_30s, labels = 80, False, False, [str(i) for i in range(31)]

        def __len__(self):
            return len(clips)

        def __getitem__(self, i):
            return clips[i]

    loader = torch.utils.data.DataLoader(Clips(), batch_size=args.batch, shuffle=False, collate_fn=collate)
    cfg, cpu = Config(), torch.device("cpu")
    started = CLOCK()
    targets = compute_targets(teacher, Clips(), pool, batch_size=args.batch, progress=False)
    t_cache_build = CLOCK() - started

    def epoch(loss, **kw):
        step = TrainStep(student, loss)
        optimizer = distillation_optimizer(student, loss, cfg)
        return lambda: train_epoch(step, loader, optimizer, EpochSettings(device=cpu, progress=False, **kw))

    distill = DistillationLoss(0.5)
    epochs = interleaved_medians(
        {
            "student": epoch(ClassificationLoss()),
            "cached": epoch(distill, targets=targets),
            "online": epoch(distill, online_teacher=partial(teacher.targets, frame_pool=pool)),
        },
        args.epoch_repeats,
        warmup=1,
    )
    t_student, t_cached, t_online = epochs["student"], epochs["cached"], epochs["online"]
    return [
        ("student-only epoch (CE)", t_student),
        ("distillation epoch, teacher embeddings cached", t_cached),
        ("distillation epoch, teacher run on every batch", t_online),
        ("one-time teacher pass that fills the cache", t_cache_build),
    ]


def table(title: str, rows: list[tuple[str, float]], base: float) -> list[str]:
    lines = [f"### {title}", "", "| | median (s) | ratio |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.4f} | {seconds / base:.2f}x |" for name, seconds in rows]
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clips", type=int, default=32, help="clips per distillation epoch")
    parser.add_argument("--epoch-repeats", type=int, default=3)
    parser.add_argument("--loop-repeats", type=int, default=2, help="repeats of the (slow) Python-loop update")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a busy machine, 1 thread)",
    )
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    steps = bench_steps(args)
    epochs = bench_distillation(args)
    lines = [
        "## Training benchmark",
        "",
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"{args.clock} clock; "
        f"batch {args.batch} x {args.seconds:g} s clips; whisper-tiny student dims "
        f"({sum(p.numel() for p in IntentClassifier(WHISPER_TINY, 31).parameters()) / 1e6:.1f} M params), 8 bits; "
        f"teacher: whisper-base dims (random weights), {args.clips} clips per epoch.",
        "",
        *table("Optimizer step (ratio to the plain step; target for ours <= 1.2x)", steps, steps[0][1]),
        *table("Distillation epoch (ratio to student-only; target for cached ~1.0x)", epochs, epochs[0][1]),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
