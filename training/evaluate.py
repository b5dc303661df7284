"""Evaluate a checkpoint on a dataset split: accuracy, macro F1, polarity errors, size and compute.

``evaluate_checkpoint`` is the one evaluation of a written model, used by ``quads-eval``
(``training.eval_cli``), the end of ``quads-train`` and the demo.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from core.audio import N_FRAMES
from core.checkpoint import Checkpoint
from core.compute import count_parameters, forward_gmacs
from core.refusal import decide, refusal_index
from core.tensor_files import atomic_write
from training.datasets import load_samples
from training.features import MelDataset, MelFeatures, collate

log = logging.getLogger(__name__)

# Calibration: the threshold refuses at most 1% of validation commands (the target on held-out
# voices is 2%, so half of it is margin), and never exceeds 0.95, so a very confident model does
# not end with a threshold that only its validation voices reach.
MAX_REFUSED = 0.01
MAX_THRESHOLD = 0.95


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: MelDataset,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(softmax probabilities (N, n_labels), true label indices (N,)) over ``dataset`` at real lengths.

    Batches hold clips of similar length (sorted), so little of each batch is padding, which in
    file order is computed for every short clip batched with a long one. The answers do not
    depend on the order, since padded frames are masked.
    """
    was_training = model.training
    model.eval()
    by_length = sorted(range(len(dataset)), key=lambda i: dataset[i][0].shape[-1])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, by_length), batch_size=batch_size, shuffle=False, collate_fn=collate
    )
    probs = torch.empty(len(dataset), model.head.out_features)
    targets = torch.empty(len(dataset), dtype=torch.long)
    for mels, lengths, labels, indices in tqdm(
        loader, desc="evaluating", unit="batch", disable=not progress, leave=False
    ):
        _, logits = model(mels.to(device), lengths.to(device))
        probs[indices] = logits.float().softmax(dim=-1).cpu()
        targets[indices] = labels
    model.train(was_training)
    return probs, targets


def answers(probs: Tensor, labels: list[str], threshold: float) -> Tensor:
    """The label index each clip is answered with: its intent, or the refusal class when
    ``core.refusal.decide`` refuses it (the service's rule). Without a refusal class: the argmax."""
    refusal = refusal_index(labels)
    if refusal is None:
        return probs.argmax(dim=-1)
    decided = [decide(row, refusal, threshold) for row in probs.tolist()]
    return torch.tensor([best if understood else refusal for best, understood in decided], dtype=torch.long)


def refusal_metrics(answered: Tensor, targets: Tensor, labels: list[str]) -> dict:
    """Share of commands refused, of non-commands accepted, and accuracy on the commands alone."""
    refusal = refusal_index(labels)
    if refusal is None:
        return {}
    commands, others = targets != refusal, targets == refusal
    return {
        "commands": int(commands.sum()),
        "not_commands": int(others.sum()),
        "command_accuracy": float((answered[commands] == targets[commands]).float().mean()) if commands.any() else 0.0,
        "refused": float((answered[commands] == refusal).float().mean()) if commands.any() else 0.0,
        "false_accepts": float((answered[others] != refusal).float().mean()) if others.any() else 0.0,
    }


def calibrate_threshold(probs: Tensor, targets: Tensor, labels: list[str], max_refused: float = MAX_REFUSED) -> float:
    """The highest threshold that refuses at most ``max_refused`` of the commands in (probs, targets):
    validation data. Commands the refusal class already outvotes count against that budget."""
    refusal = refusal_index(labels)
    if refusal is None:
        return 0.0
    scores = sorted(
        probs_row[best] if understood else 0.0
        for probs_row, (best, understood) in (
            (row, decide(row, refusal, 0.0)) for row, t in zip(probs.tolist(), targets.tolist()) if t != refusal
        )
    )
    if not scores:
        return 0.0
    return float(min(scores[int(max_refused * len(scores))], MAX_THRESHOLD))


def classification_metrics(preds: Tensor, targets: Tensor, labels: list[str]) -> dict:
    """Accuracy, macro F1 and the confusion matrix (rows: true, columns: predicted).

    Macro F1 averages over the classes that occur in the targets or the predictions (as
    scikit-learn does by default); a class never predicted and never present does not count.
    """
    n_labels = len(labels)
    confusion = torch.bincount(targets * n_labels + preds, minlength=n_labels * n_labels).view(n_labels, n_labels)
    tp = confusion.diag().double()
    support = confusion.sum(dim=1).double()
    predicted = confusion.sum(dim=0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp)
    )
    present = (support > 0) | (predicted > 0)
    n = int(targets.numel())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "confusion": confusion.tolist(),
        "per_class": [
            {
                "label": labels[k],
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k in range(n_labels)
        ],
    }


OPPOSITE_ACTIONS = {frozenset(("activate", "deactivate")), frozenset(("increase", "decrease"))}


def is_polarity_swap(true_label: str, predicted: str) -> bool:
    """True when two FSC-style labels (``action_object_location``) differ only by an opposite action (on/off, up/down)."""
    t, p = true_label.split("_"), predicted.split("_")
    return len(t) == len(p) == 3 and t[1:] == p[1:] and frozenset((t[0], p[0])) in OPPOSITE_ACTIONS


def polarity_error_share(confusion: list[list[int]], labels: list[str]) -> float:
    """The share of all errors that swap on/off or up/down with the same object and location (0 with no errors)."""
    errors = swaps = 0
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            if i != j and count:
                errors += count
                swaps += count if is_polarity_swap(labels[i], labels[j]) else 0
    return swaps / errors if errors else 0.0


_GMACS: dict[tuple, float] = {}


def gmacs_at(model: nn.Module, frames: int) -> float:
    """``forward_gmacs`` for one clip of ``frames`` mel frames, memoised per (dims, head, frames)."""
    key = (model.dims, model.head.out_features, int(frames))
    if key not in _GMACS:
        _GMACS[key] = forward_gmacs(model, frames=int(frames))
    return _GMACS[key]


def mean_gmacs(model: nn.Module, frame_counts: list[int]) -> float:
    """Mean GMACs per clip over clips of the given mel frame counts (each distinct length counted once)."""
    if not frame_counts:
        return 0.0
    counts = Counter(frame_counts)
    return sum(gmacs_at(model, frames) * n for frames, n in counts.items()) / len(frame_counts)


def frame_counts(dataset: MelDataset) -> list[int]:
    return [int(dataset[i][0].shape[-1]) for i in range(len(dataset))]


def evaluate_model(
    model: nn.Module,
    dataset: MelDataset,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    threshold: float = 0.0,
) -> dict:
    """Accuracy, macro F1, confusion matrix and per-class scores of ``model``'s answers on
    ``dataset`` (refusing below ``threshold`` when it has a refusal class), the refusal rates,
    and ``correct``: (N,) whether each clip was answered right."""
    probs, targets = predict(model, dataset, batch_size=batch_size, device=device, progress=progress)
    preds = answers(probs, dataset.labels, threshold)
    return {
        **classification_metrics(preds, targets, dataset.labels),
        **refusal_metrics(preds, targets, dataset.labels),
        "correct": preds == targets,
        "probabilities": probs,
        "targets": targets,
    }


def evaluate_checkpoint(
    checkpoint: Checkpoint,
    dataset: MelDataset,
    split: str,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    threshold: float | None = None,
) -> dict:
    """A loaded checkpoint on ``dataset`` (its ``split``): the scores, and the file's size and compute.

    The one evaluation of a written model: ``quads-eval``, the end of ``quads-train`` and the demo
    all use it, so that every report reads the file as the service loads it.
    """
    model = checkpoint.model.to(device)
    threshold = checkpoint.threshold if threshold is None else threshold
    metrics = evaluate_model(
        model, dataset, batch_size=batch_size, device=device, progress=progress, threshold=threshold
    )
    model.cpu()
    lengths = frame_counts(dataset)
    return {
        "checkpoint": str(checkpoint.path),
        "split": split,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "polarity_error_share": polarity_error_share(metrics["confusion"], checkpoint.labels),
        "n": metrics["n"],
        "threshold": threshold,
        **{
            k: metrics[k]
            for k in ("commands", "not_commands", "command_accuracy", "refused", "false_accepts")
            if k in metrics
        },
        "skipped": len(dataset.skipped),
        "params": count_parameters(checkpoint.model),
        "file_bytes": checkpoint.file_bytes,
        "memory_bytes": checkpoint.memory_bytes,
        "bits": checkpoint.bits,
        "gmacs_per_clip": mean_gmacs(checkpoint.model, lengths),
        "gmacs_30s": gmacs_at(checkpoint.model, N_FRAMES),
        "mean_seconds": sum(lengths) / len(lengths) / 100 if lengths else 0.0,
        "pad_to_30s": dataset.pad_to_30s,
        "sha256": checkpoint.sha256,
        "labels": len(checkpoint.labels),
        "per_speaker": per_speaker(dataset, metrics["correct"]),
        "confusion": metrics["confusion"],
        "per_class": metrics["per_class"],
        "label_names": checkpoint.labels,
    }


def per_speaker(dataset: MelDataset, correct: Tensor) -> dict[str, list[int]]:
    """speaker -> [clips right, clips]: what paired comparisons across models need."""
    counts: dict[str, list[int]] = {}
    for sample, right in zip(dataset.samples, correct.tolist()):
        entry = counts.setdefault(sample.speaker, [0, 0])
        entry[0] += int(right)
        entry[1] += 1
    return counts


def summary(result: dict) -> dict:
    """``evaluate_checkpoint``'s result without the per-class detail (for one-line reports)."""
    return {k: v for k, v in result.items() if k not in ("confusion", "per_class", "label_names")}


def checkpoint_split(
    checkpoint: Checkpoint,
    data: str | Path,
    split: str = "test",
    *,
    pad_to_30s: bool | None = None,
    on_error: str = "skip",
    slurp_headset: bool = True,
    progress: bool = True,
) -> MelDataset:
    """``split`` of ``data`` as ``checkpoint`` takes it: its labels and mel bins, and (unless
    ``pad_to_30s`` says otherwise) the padding it was trained with."""
    if pad_to_30s is None:
        pad_to_30s = bool(checkpoint.provenance.get("pad_to_30s", False))
    samples = load_samples(data, split, headset=slurp_headset)
    return MelDataset(
        samples,
        checkpoint.labels,
        MelFeatures(checkpoint.dims.n_mels, pad_to_30s),
        on_error=on_error,
        progress=progress,
    )


def write_confusion(path: str | Path, result: dict) -> Path:
    """The confusion matrix and per-class report: JSON for ``.json``, else Markdown."""
    path = Path(path)
    labels = result["label_names"]
    if path.suffix.lower() == ".json":
        text = json.dumps(
            {
                "labels": labels,
                "confusion": result["confusion"],
                "per_class": result["per_class"],
                "accuracy": result["accuracy"],
                "macro_f1": result["macro_f1"],
            },
            indent=1,
        )
    else:
        lines = [
            f"# Per-class report: {result['checkpoint']} on {result['split']}",
            "",
            f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, n {result['n']}",
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {c['label']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
            for c in result["per_class"]
        ]
        lines += ["", "## Confusion matrix (rows: true label, columns: predicted; order as above)", "", "```"]
        lines += [" ".join(f"{v:5d}" for v in row) for row in result["confusion"]]
        lines += ["```", ""]
        text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
