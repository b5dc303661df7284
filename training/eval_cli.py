"""``quads-eval``: evaluate a checkpoint on a dataset split (``training.evaluate``) from the command line.

    quads-eval --model models/quads-fsc-4bit.safetensors --data /data/fsc --split test \\
        [--confusion confusion.json]

prints one JSON object (``accuracy``, ``macro_f1``, ``n``, ``params``, ``file_bytes``, ``bits``,
``gmacs_per_clip``: the mean over the split at each clip's real length, ``gmacs_30s``, ...).
Answers are decided as the service decides them: a model that can refuse answers "not
understood" below its calibrated threshold (``--threshold`` sets another), and the object adds
``command_accuracy`` (commands answered with the right intent), ``refused`` (share of commands
refused) and ``false_accepts`` (share of non-commands and sounds answered with an intent).
``--confusion FILE`` also writes the confusion matrix and a per-class report (``.json``, or
Markdown for any other suffix).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from core.version import package_version


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quads-eval", description="Evaluate a QUADS checkpoint on a dataset split.")
    parser.add_argument("--model", required=True, help="a QUADS .safetensors checkpoint")
    parser.add_argument("--data", required=True, help="FSC root, SLURP root, or a manifest (.csv/.jsonl)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--pad-to-30s",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pad clips to 30 s as the paper does (default: as the checkpoint was trained)",
    )
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip", help="a bad sample: skip it or stop")
    parser.add_argument("--no-slurp-headset", action="store_true", help="SLURP: leave out *-headset.flac recordings")
    parser.add_argument("--threshold", type=float, help="refusal threshold in [0, 1] (default: the checkpoint's)")
    parser.add_argument("--confusion", help="write the confusion matrix and per-class report here (.json or .md)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    import torch  # loaded here, after --help

    from core.checkpoint import CheckpointError, load_checkpoint
    from training.datasets import DatasetError
    from training.evaluate import checkpoint_split, evaluate_checkpoint, summary, write_confusion
    from training.features import BadSampleError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.model)
        dataset = checkpoint_split(
            checkpoint,
            args.data,
            args.split,
            pad_to_30s=args.pad_to_30s,
            on_error=args.on_error,
            slurp_headset=not args.no_slurp_headset,
            progress=not args.no_progress,
        )
        result = evaluate_checkpoint(
            checkpoint,
            dataset,
            args.split,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.no_progress,
            threshold=args.threshold,
        )
    except (CheckpointError, DatasetError, BadSampleError) as e:
        print(f"quads-eval: error: {e}", file=sys.stderr)
        return 2
    if args.confusion:
        write_confusion(args.confusion, result)
    print(json.dumps({"data": str(args.data), **summary(result)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
