"""A fair analog of the QUADS paper's Table 2, on real Whisper: distillation only, post-training
k-means, QAD and MCT, from Whisper and random init, at 1-4, 8 and 32 bits, over several seeds,
on a test split of voices no model heard.

    quads-demo --out runs/demo --steps whisper        # the pinned Whisper files, once
    python -m training.experiments.table2 --whisper runs/demo/whisper --out runs/table2

Every arm has the same 2 distillation epochs and the same 4 epochs in all:

* ``distill``: the float branch of the QAD run (D D, then 2 cross-entropy epochs), at 32 bits;
* ``ptq``: that float model k-means quantized after training, at each width;
* ``qad``: D D Q Q: distil, then quantize once and fine-tune on the codebooks;
* ``mct``: D Q D Q: distillation and quantization alternate.

The teacher is the frozen Whisper base encoder; the student has whisper-tiny's dims (tiny.en or
random). A 2-block student (tiny.en's first and last blocks) was tried for speed and dropped: it
stayed near chance on the validation split after 2 distillation epochs in a probe, where the 4
blocks learnt. To fit 90 minutes on 2 CPU cores the training split is 12 voices (the test
split 30), and every run trains in bfloat16 mixed precision (``train.autocast``; about 2x faster
per epoch on a CPU with AMX, slower on one without: the run warns). Checkpoints are evaluated in
float32, as the service loads them.

The quantization settings (how centroids learn, the learning rates, whether a branch keeps its
first assignments) are chosen on the validation split by runs whose final evaluation is on the
validation split too; the test split is read once per checkpoint, at the end of its run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.version import package_version
from training.corpus.espeak_voices import default_voices

log = logging.getLogger("quads.table2")

ARMS = ("distill", "ptq", "qad", "mct")


@dataclass(frozen=True)
class Table2Plan:
    voices: dict[str, int] = field(default_factory=lambda: {"train": 12, "valid": 8, "test": 30})
    widths: tuple[int, ...] = (8, 4, 3, 2, 1)  # plus 32: the float model
    seeds: tuple[int, ...] = (0, 1, 2)
    inits: tuple[str, ...] = ("whisper", "random")
    student: dict = field(default_factory=lambda: {"preset": "tiny"})
    schedules: dict = field(default_factory=lambda: {"qad": "DDQQ", "mct": "DQDQ"})
    # Quantization settings tried on the validation split (Whisper init, seed 0, MCT at selection_bits).
    # How centroids learn, whether assignments are kept, and the learning rates: quant.lr for the
    # weights (mean) or the parameters outside the codebooks (sum), centroid_lr for eq. 4's centroids.
    candidates: dict = field(
        default_factory=lambda: {
            "mean-refit": {"centroid_update": "mean", "labels": "refit"},
            "mean-refit-lr3e-3": {"centroid_update": "mean", "labels": "refit", "lr": 3e-3},
            "mean-refit-lr3e-2": {"centroid_update": "mean", "labels": "refit", "lr": 3e-2},
            "mean-fixed": {"centroid_update": "mean", "labels": "fixed"},
            "sum-refit": {"centroid_update": "sum", "centroid_lr": 1e-5, "labels": "refit"},
            "sum-refit-clr1e-6": {"centroid_update": "sum", "centroid_lr": 1e-6, "labels": "refit"},
            "sum-fixed": {"centroid_update": "sum", "centroid_lr": 1e-5, "labels": "fixed"},
            "sum-fixed-clr1e-6": {"centroid_update": "sum", "centroid_lr": 1e-6, "labels": "fixed"},
        }
    )
    selection_bits: int = 4  # at 2 bits every candidate sat at chance after 4 epochs: nothing to choose from
    intents: tuple[str, ...] | None = None  # None: all 31 FSC intents
    # section -> overrides for every run. Batch 8 and a head learning rate of 3e-3 give the random
    # head more and larger steps in 2 epochs of a small corpus than the defaults (16, 1e-3).
    # bfloat16 mixed precision halves the epochs on a CPU with AMX (about 10 s against 20: train.log).
    common: dict = field(
        default_factory=lambda: {
            "data": {"batch_size": 8},
            "distill": {"lr_head": 3e-3},
            "train": {"autocast": "bfloat16"},
        }
    )


def make_corpus(out: Path, plan: Table2Plan, progress: bool) -> Path:
    """The espeak-ng corpus: disjoint voices per split, one utterance per voice and intent."""
    from training.corpus.synth import CorpusRecipe, synthesize_corpus

    corpus = out / "corpus"
    if not (corpus / "data" / "test_data.csv").exists():
        synthesize_corpus(
            corpus,
            CorpusRecipe(
                intents=plan.intents, voices=default_voices(plan.voices, seed=7), utterances_per_voice=1, seed=7
            ),
            progress=progress,
        )
    return corpus


def run(
    out: Path,
    corpus: Path,
    whisper: Path,
    plan: Table2Plan,
    name: str,
    *,
    init: str,
    seed: int,
    strategy: str,
    bits: list[int],
    schedule: str,
    quant: dict,
    progress: bool,
    data: dict | None = None,
    **train: object,
) -> dict:
    """One ``quads-train`` run of the grid (resumed if interrupted, skipped if done)."""
    from training.train import train_in

    sections = {section: dict(values) for section, values in plan.common.items()}
    sections.setdefault("data", {}).update(data or {})
    sections.setdefault("student", {}).update(
        {"init": f"whisper:{whisper / 'tiny.en'}" if init == "whisper" else init, **plan.student}
    )
    sections.setdefault("teacher", {}).update({"path": str(whisper / "base"), "cache_dir": str(out / "teacher-cache")})
    sections.setdefault("quant", {}).update(quant)
    sections.setdefault("train", {}).update({"strategy": strategy, "bits": bits, "schedule": schedule, **train})
    return train_in(out / name, corpus, seed, progress, **sections)


def select_quantization(out: Path, corpus: Path, whisper: Path, plan: Table2Plan, progress: bool) -> dict:
    """Each candidate setting as MCT at ``selection_bits`` from Whisper init, seed 0, scored on the
    validation split (the runs evaluate on it at their end: the test split is not read)."""
    scores = {}
    for name, quant in plan.candidates.items():
        report = run(
            out,
            corpus,
            whisper,
            plan,
            f"select/{name}",
            init="whisper",
            seed=0,
            strategy="mct",
            bits=[plan.selection_bits],
            schedule=plan.schedules["mct"],
            quant=quant,
            progress=progress,
            data={"test_split": "valid"},
        )  # its final evaluation: the validation split
        (row,) = report["results"]
        assert row["split"] == "valid", row["split"]
        scores[name] = row["accuracy"]
    best = max(scores, key=lambda n: (scores[n], -list(plan.candidates).index(n)))  # ties: the earlier candidate
    log.info("quantization settings on the validation split: %s; chosen %s", scores, best)
    return {"scores": scores, "chosen": best, "quant": plan.candidates[best]}


def run_arms(
    out: Path, corpus: Path, whisper: Path, plan: Table2Plan, quant: dict, progress: bool, train: bool = True
) -> tuple[list[dict], list[str]]:
    """The QAD and MCT runs for every init and seed: (result rows labelled with their arm, runs
    missing). With ``train=False`` only finished runs are read (the report of a grid in progress)."""
    rows, missing = [], []
    for init in plan.inits:
        for seed in plan.seeds:
            for strategy in ("qad", "mct"):
                # QAD's float branch is the distill arm and the PTQ source; MCT's would be no arm: not trained.
                bits = [32, *plan.widths] if strategy == "qad" else list(plan.widths)
                extra = {"post_hoc_bits": list(plan.widths)} if strategy == "qad" else {}
                extra["eval_every_epoch"] = False  # time: these runs are judged on the test split at their end
                name = f"runs/{strategy}-{init}-seed{seed}"
                if not train and not (out / name / "report.json").exists():
                    missing.append(name)
                    continue
                report = run(
                    out,
                    corpus,
                    whisper,
                    plan,
                    name,
                    init=init,
                    seed=seed,
                    strategy="mct",
                    bits=bits,
                    schedule=plan.schedules[strategy],
                    quant=quant,
                    progress=progress,
                    **extra,
                )
                minutes = sum(h.get("seconds", 0.0) for h in report["history"]) / 60
                for row in report["results"]:
                    if (arm := arm_of(strategy, row)) is not None:
                        rows.append(
                            {**row, "arm": arm, "init": init, "seed": seed, "run": name, "run_minutes": minutes}
                        )
    return rows, missing


def arm_of(run: str, row: dict) -> str | None:
    """Which arm a checkpoint of a ``qad`` or ``mct`` run stands for (None: not compared)."""
    if row["quantization"] == "post-hoc k-means":
        return "ptq"
    if row["branch"] == "float":
        return "distill" if run == "qad" and row["bits"] == 32 else None  # MCT's float branch is no arm
    return run


def paired_difference(a: dict[str, list[float]], b: dict[str, list[float]], resamples: int = 10_000) -> dict:
    """Per-voice accuracy of arm ``a`` minus arm ``b``: each voice's mean over seeds, then the mean
    over voices with a 95% bootstrap interval (voices resampled with replacement)."""
    voices = sorted(a)
    diffs = np.array([np.mean(a[v]) - np.mean(b[v]) for v in voices])
    rng = np.random.default_rng(0)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diffs.mean()), "low": float(low), "high": float(high), "voices": len(voices)}


def per_voice_accuracy(rows: list[dict]) -> dict[str, list[float]]:
    """voice -> its accuracy in each of ``rows`` (one row per seed)."""
    out: dict[str, list[float]] = {}
    for row in rows:
        for voice, (right, total) in row["per_speaker"].items():
            out.setdefault(voice, []).append(right / total)
    return out


def summarize(rows: list[dict]) -> dict:
    """Mean and standard deviation over seeds per (arm, init, bits), and MCT - QAD per voice."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["arm"], row["init"], row["bits"]), []).append(row)
    table = []
    for (arm, init, bits), group in sorted(cells.items(), key=lambda kv: (ARMS.index(kv[0][0]), kv[0][1], -kv[0][2])):
        accuracy = np.array([r["accuracy"] for r in group])
        table.append(
            {
                "arm": arm,
                "init": init,
                "bits": bits,
                "seeds": len(group),
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_sd": float(accuracy.std(ddof=1)) if len(group) > 1 else 0.0,
                "file_bytes": group[0]["file_bytes"],
                "test_voices": len(group[0]["per_speaker"]),
            }
        )
    paired = []
    for (arm, init, bits), group in sorted(cells.items()):
        if arm == "mct" and ("qad", init, bits) in cells:
            diff = paired_difference(per_voice_accuracy(group), per_voice_accuracy(cells[("qad", init, bits)]))
            paired.append({"init": init, "bits": bits, **diff})
    return {"table": table, "mct_minus_qad": paired}


def verdict(paired: list[dict]) -> str:
    """One plain sentence per init: the widths where MCT's 95% interval lies above QAD's, below it,
    or spans zero."""
    sentences = []
    for init in dict.fromkeys(p["init"] for p in paired):
        rows = sorted((p for p in paired if p["init"] == init), key=lambda p: -p["bits"])
        above, below = [p for p in rows if p["low"] > 0], [p for p in rows if p["high"] < 0]
        unclear = [p for p in rows if p["low"] <= 0 <= p["high"]]
        sentences.append(
            f"From {init} init, MCT beats QAD at {_widths(above)}; QAD beats MCT at "
            f"{_widths(below)}; the interval spans zero at {_widths(unclear)}."
        )
    return " ".join(sentences)


def _widths(paired: list[dict]) -> str:
    return ", ".join(str(p["bits"]) for p in paired) + " bits" if paired else "no width"


def write_report(
    out: Path,
    dest: Path,
    plan: Table2Plan,
    selection: dict,
    rows: list[dict],
    wall_minutes: float | None,
    missing: list[str] = (),
) -> Path:
    """``report.md`` and ``report.json`` (every row, so the tables can be redrawn) in ``dest``."""
    from core.tensor_files import atomic_write

    summary = summarize(rows)
    minutes = sum({r["run"]: r["run_minutes"] for r in rows}.values())
    lines = [
        "# Table 2 analog: distillation, post-training k-means, QAD and MCT",
        "",
        f"Made by `python -m training.experiments.table2 --out {out}` "
        f"(quads {package_version()}, {platform.processor() or platform.machine()}).",
        f"Corpus: espeak-ng, voices per split {plan.voices} (disjoint), {len(plan.intents or ()) or 31} intents, one "
        f"utterance each. Student: {plan.student} (tiny.en's blocks for Whisper init); teacher: Whisper base (frozen). "
        f"Seeds {list(plan.seeds)}. "
        f"Schedules: QAD {plan.schedules['qad']}, MCT {plan.schedules['mct']}; distill = QAD's float branch.",
        "",
        "## Quantization settings, chosen on the validation split",
        "",
        f"MCT at {plan.selection_bits} bits from Whisper init, seed 0; validation accuracy:",
        "",
        "| setting | valid accuracy |",
        "|---|---:|",
        *(
            f"| {name}{' (chosen)' if name == selection['chosen'] else ''} | {100 * acc:.1f} |"
            for name, acc in selection["scores"].items()
        ),
        "",
        "## Test accuracy (mean ± sd over seeds)",
        "",
        "| arm | init | bits | accuracy % | seeds | file MB |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['arm']} | {r['init']} | {r['bits']} | {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_sd']:.1f} | "
            f"{r['seeds']} | {r['file_bytes'] / 1e6:.2f} |"
            for r in summary["table"]
        ),
        "",
        "## MCT - QAD, paired by test voice",
        "",
        "Each voice's accuracy averaged over seeds; the mean over voices, with a 95% bootstrap interval.",
        "",
        "| init | bits | MCT - QAD (points) | 95% interval | voices |",
        "|---|---:|---:|---|---:|",
        *(
            f"| {p['init']} | {p['bits']} | {100 * p['mean']:+.1f} | [{100 * p['low']:+.1f}, {100 * p['high']:+.1f}] | {p['voices']} |"
            for p in summary["mct_minus_qad"]
        ),
        *(["", f"**Verdict.** {verdict(summary['mct_minus_qad'])}"] if summary["mct_minus_qad"] else []),
        "",
        f"Training time of the compared runs: {minutes:.0f} min of epochs"
        + (
            f"; the whole command (corpus, teacher cache, selection, runs, evaluations) took {wall_minutes:.0f} min on "
            f"{os.cpu_count()} CPUs."
            if wall_minutes is not None
            else "."
        ),
        "",
    ]
    if missing:
        lines += [f"**Not finished when this report was written** ({len(missing)} runs): {', '.join(missing)}.", ""]
    dest.mkdir(parents=True, exist_ok=True)
    report = {
        "plan": asdict(plan),
        "selection": selection,
        "summary": summary,
        "rows": rows,
        "wall_minutes": wall_minutes,
        "missing": list(missing),
    }
    atomic_write(dest / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    atomic_write(dest / "report.md", lambda tmp: tmp.write_text("\n".join(lines)))
    return dest / "report.md"


def run_table2(out: Path, whisper: Path, plan: Table2Plan, dest: Path, progress: bool = True) -> Path:
    import time

    started = time.monotonic()
    corpus = make_corpus(out, plan, progress)
    selection = select_quantization(out, corpus, whisper, plan, progress)
    rows, _ = run_arms(out, corpus, whisper, plan, selection["quant"], progress)
    return write_report(out, dest, plan, selection, rows, (time.monotonic() - started) / 60)


def report_finished_runs(out: Path, whisper: Path, plan: Table2Plan, dest: Path) -> Path:
    """The report of the runs finished so far in ``out`` (after the selection), training nothing."""
    corpus = out / "corpus"
    selection = select_quantization(out, corpus, whisper, plan, progress=False)  # done: read back
    rows, missing = run_arms(out, corpus, whisper, plan, selection["quant"], progress=False, train=False)
    return write_report(out, dest, plan, selection, rows, command_minutes(dest, plan, rows), missing)


def command_minutes(dest: Path, plan: Table2Plan, rows: list[dict]) -> float | None:
    """The whole command's time from the report in ``dest``, when that report holds the same plan
    and the same rows (a re-rendered report keeps the time of the command that trained them)."""
    try:
        previous = json.loads((dest / "report.json").read_text())
    except (OSError, ValueError):
        return None
    same = previous.get("plan") == json.loads(json.dumps(asdict(plan))) and previous.get("rows") == json.loads(
        json.dumps(rows)
    )
    return previous.get("wall_minutes") if same else None


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.experiments.table2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--whisper",
        type=Path,
        default=Path("runs/demo/whisper"),
        help="the folder quads-demo's whisper step filled: tiny.en/ and base/ (default %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/table2"), help="working folder (default %(default)s)")
    p.add_argument(
        "--report", type=Path, default=Path("docs/table2"), help="where report.md goes (default %(default)s)"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--report-only", action="store_true", help="write the report of the runs finished so far; train nothing"
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    args = p.parse_args(argv)
    for name in ("tiny.en", "base"):
        if not (args.whisper / name / "model.bin").is_file():
            p.error(f"{args.whisper / name} has no model.bin: run `quads-demo --out runs/demo --steps whisper` first")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    plan = Table2Plan(seeds=tuple(range(args.seeds)))
    if args.report_only:
        print(report_finished_runs(args.out, args.whisper, plan, args.report))
    else:
        print(run_table2(args.out, args.whisper, plan, args.report, progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
