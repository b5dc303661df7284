"""quads-train's command line: flags and ``--set`` overrides into a ``Config``, then ``training.train.train``.

    quads-train --data /data/fsc --teacher ~/whisper/large-v2.pt --init whisper:~/whisper/base.pt \\
        --set student.preset=base --strategy mct --bits 32,16,8,4 --out runs/fsc
    torchrun --nproc_per_node=4 -m training.train_cli ...   # the same, with DistributedDataParallel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.version import package_version
from training.config import Config, ConfigError, differences, load_config, parse_override
from training.schedule import scale_pattern

# Settings that may differ when resuming: they change how, not what, is computed.
RESUMABLE_CHANGES = {"train.progress", "train.device", "train.threads", "data.num_workers", "teacher.batch_size"}


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
        ("data", "root"): args.data,
        ("train", "out"): args.out,
        ("train", "name"): args.name,
        ("train", "strategy"): args.strategy,
        ("train", "bits"): args.bits,
        ("teacher", "path"): args.teacher,
        ("student", "init"): args.init,
        ("train", "schedule"): args.schedule,
        ("train", "seed"): args.seed,
        ("data", "batch_size"): args.batch_size,
        ("train", "device"): args.device,
        ("train", "threads"): args.threads,
        ("train", "progress"): False if args.no_progress else None,
    }
    updates = [{section: {key: value}} for (section, key), value in flags.items() if value is not None]
    updates += [parse_override(text) for text in args.set]

    def resolve(base: str | Path | None) -> Config:
        cfg = load_config(base, updates)
        if args.epochs is not None:
            train = cfg.train.model_copy(update={"schedule": scale_pattern(cfg.train.schedule, args.epochs)})
            cfg = cfg.model_copy(update={"train": train})
        return cfg

    cfg = resolve(args.config)
    saved_path = Path(cfg.train.out).expanduser() / "config.yaml"
    if args.resume and saved_path.is_file():
        # The saved config is the run's; the command line may restate it but not change it.
        requested = cfg if args.config else resolve(saved_path)
        changed = [k for k in differences(load_config(saved_path), requested) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"--resume continues the run saved in {saved_path}, but these settings differ: "
                f"{', '.join(changed)}; drop them, or start a new run with another --out"
            )
        cfg = requested
    return cfg


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch loads with these, after --help and --version have answered.
    from core.checkpoint import CheckpointError
    from training.datasets import DatasetError
    from training.features import BadSampleError
    from training.run_state import RunStateError
    from training.student import StudentInitError
    from training.train import train
    from training.whisper import WhisperImportError

    try:
        cfg = config_from_args(args)
        train(cfg, resume=args.resume)
    except (
        ConfigError,
        DatasetError,
        BadSampleError,
        StudentInitError,
        CheckpointError,
        RunStateError,
        WhisperImportError,
    ) as e:
        print(f"quads-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
