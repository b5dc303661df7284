"""The reports of a training run: ``report.json``, ``report.md`` and two charts.

* ``report.md``: a table like the paper's Tables 1/2 (strategy, init, bits, #params, size in MB,
  GMACs, accuracy, F1) and the per-epoch history;
* ``bubbles.png``: F1 against model size, bubble area proportional to GMACs per clip (like the
  paper's Fig. 3, whose x axis is energy, which we do not measure);
* ``curves.png``: training loss and validation accuracy per epoch, quantization epochs shaded.

Sizes are in MiB (2**20 bytes), as in the paper's tables (Whisper base: 19.85 M params -> 75.73 MB).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)

from core.tensor_files import atomic_write  # noqa: E402

MB = 2**20
COLORS = {"finetune": "tab:gray", "distill": "tab:blue", "qad": "tab:orange", "mct": "tab:green"}


def history_cell(h: dict, key: str, scale: float = 1.0, fmt: str = ".4f") -> str:
    return "" if h.get(key) is None else format(scale * h[key], fmt)


def markdown(report: dict) -> str:
    """The Markdown text of ``report`` (the dict written to report.json)."""
    run = report["run"]
    lines = [
        f"# QUADS training report: {run['name']}",
        "",
        f"strategy `{run['strategy']}`, student init `{run['init']}`, teacher `{run['teacher'] or '-'}`, "
        f"schedule `{run['schedule']}`, seed {run['seed']}, data `{run['data']}` "
        f"(train {run['n_train']}, valid {run['n_valid']}, {run['n_labels']} labels)",
        "",
        f"Evaluated on split `{report['results'][0]['split'] if report['results'] else '-'}`; "
        "GMACs are per clip at its real length (30 s: Whisper's padded input).",
        "",
        "| Strategy | Init | Bits | #Params (M) | Size (MB) | GMACs | GMACs (30 s) | Accuracy (%) | F1 (%) | Checkpoint |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['strategy']} | {r['init']} | {r['bits']} | {r['params'] / 1e6:.2f} | {r['file_bytes'] / MB:.2f} | "
            f"{r['gmacs_per_clip']:.3f} | {r['gmacs_30s']:.2f} | {100 * r['accuracy']:.2f} | "
            f"{100 * r['macro_f1']:.2f} | `{Path(r['checkpoint']).name}` |"
        )
    if report.get("history"):
        lines += [
            "",
            "## Epochs",
            "",
            "| Branch | Epoch | Phase | Loss | CE | L1 | L_centroid | Valid acc (%) | Valid F1 (%) | Seconds |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for h in report["history"]:
            f = functools.partial(history_cell, h)
            lines.append(
                f"| {h['branch']} | {h['epoch']} | {h['phase']} | {f('loss')} | {f('ce')} | {f('l1')} | {f('centroid', fmt='.3g')} "
                f"| {f('valid_accuracy', 100, '.2f')} | {f('valid_f1', 100, '.2f')} | {f('seconds', fmt='.1f')} |"
            )
    lines += ["", "Charts: `bubbles.png` (F1 vs size), `curves.png` (loss and accuracy per epoch).", ""]
    return "\n".join(lines)


def bubble_chart(results: list[dict], path: Path) -> Path:
    """F1 (%) against model size (MB, log scale); bubble area proportional to GMACs per clip.

    Each point is labelled with its row's ``label``, or else its strategy and bits."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = max((r["gmacs_per_clip"] for r in results), default=1.0) or 1.0
    for r in results:
        size = r["file_bytes"] / MB
        ax.scatter(
            size,
            100 * r["macro_f1"],
            s=300 + 1500 * r["gmacs_per_clip"] / top,
            alpha=0.45,
            color=COLORS.get(r["strategy"], "tab:purple"),
            edgecolors="black",
        )
        ax.scatter(size, 100 * r["macro_f1"], marker="*", color="black", s=40)
        ax.annotate(
            r.get("label") or f"{r['strategy']} {r['bits']}-bit",
            (size, 100 * r["macro_f1"]),
            textcoords="offset points",
            xytext=(8, 8),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.3)  # room for the bubbles and their labels
    ax.set_xlabel("model size (MB, log scale)")
    ax.set_ylabel("macro F1 (%)")
    ax.set_title("F1 vs size; bubble area ~ GMACs per clip")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def curves_chart(history: list[dict], path: Path) -> Path:
    """Training loss and validation accuracy per epoch, one line per branch, quantization epochs shaded."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    branches = list(dict.fromkeys(h["branch"] for h in history))
    shared = [h for h in history if h["branch"] == "shared"]
    for branch in branches:
        rows = [h for h in history if h["branch"] == branch]
        if branch != "shared" and shared:
            rows = shared[-1:] + rows  # a branch starts where the shared epochs ended
        epochs = [h["epoch"] for h in rows]
        ax_loss.plot(epochs, [h["loss"] for h in rows], marker="o", label=branch)
        if any(h.get("valid_accuracy") is not None for h in rows):
            ax_acc.plot(
                epochs,
                [100 * h["valid_accuracy"] if h.get("valid_accuracy") is not None else float("nan") for h in rows],
                marker="o",
                label=branch,
            )
    for epoch in sorted({h["epoch"] for h in history if h["phase"] == "Q"}):
        for ax in (ax_loss, ax_acc):
            ax.axvspan(epoch - 0.5, epoch + 0.5, color="tab:orange", alpha=0.08, lw=0)
    ax_loss.set(xlabel="epoch", ylabel="training loss (phase's own loss)", title="loss (Q epochs shaded)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    if not ax_acc.lines:
        ax_acc.text(0.5, 0.5, "no validation split / per-epoch evaluation", ha="center", transform=ax_acc.transAxes)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def write_report(out: Path, report: dict) -> dict[str, Path]:
    """Write report.json, report.md, bubbles.png and curves.png into ``out``; returns their paths."""
    out = Path(out)
    paths = {
        "json": out / "report.json",
        "md": out / "report.md",
        "bubbles": out / "bubbles.png",
        "curves": out / "curves.png",
    }
    text = json.dumps(report, indent=1, default=str)
    atomic_write(paths["json"], lambda tmp: tmp.write_text(text))
    md = markdown(report)
    atomic_write(paths["md"], lambda tmp: tmp.write_text(md))
    bubble_chart(report["results"], paths["bubbles"])
    curves_chart(report.get("history", []), paths["curves"])
    return paths
