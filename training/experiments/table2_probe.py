"""Where a Q phase's gain comes from, on the Table 2 analog's corpus and settings: after the same
two distillation epochs, two float epochs (F) against two 8-bit quantization epochs (Q) with
eq. 4's centroids learning at the chosen rate and nearly frozen. Each epoch is scored on the
validation split (the test split is not read).

    python -m training.experiments.table2_probe --whisper runs/demo/whisper --out runs/table2

Needs the finished selection of ``python -m training.experiments.table2`` in ``--out`` (its corpus, teacher
cache and chosen settings). Prints a Markdown table of validation accuracy per epoch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.experiments.table2 import Table2Plan, run, select_quantization

FROZEN_CENTROID_LR = 1e-7


def probe(out: Path, whisper: Path, plan: Table2Plan) -> str:
    quant = select_quantization(out, out / "corpus", whisper, plan, progress=False)["quant"]  # done: read back
    arms = {"as chosen": dict(quant), "frozen": {**quant, "centroid_lr": FROZEN_CENTROID_LR}}
    lines = ["| centroids in Q | branch | epoch 1 | epoch 2 | epoch 3 | epoch 4 |", "|---|---|---:|---:|---:|---:|"]
    for label, settings in arms.items():
        report = run(
            out,
            out / "corpus",
            whisper,
            plan,
            f"probe/{label.replace(' ', '-')}",
            init="whisper",
            seed=0,
            strategy="mct",
            bits=[32, 8],
            schedule=plan.schedules["qad"],
            quant=settings,
            progress=False,
            data={"test_split": "valid"},
            eval_every_epoch=True,
        )
        shared = [h for h in report["history"] if h["branch"] == "shared"]
        for branch in ("float", "8bit"):
            epochs = shared + [h for h in report["history"] if h["branch"] == branch]
            cells = " | ".join(f"{h['phase']} {100 * h['valid_accuracy']:.1f}" for h in epochs)
            lines.append(f"| {label} (centroid_lr {settings.get('centroid_lr', '-')}) | {branch} | {cells} |")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.experiments.table2_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--whisper", type=Path, default=Path("runs/demo/whisper"))
    p.add_argument("--out", type=Path, default=Path("runs/table2"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(probe(args.out, args.whisper, Table2Plan()))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
