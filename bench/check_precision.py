"""Does the served answer move with the compute path? The shipped model on a held-out split, through
the service's own engine (decode, log-mel, model), compared clip by clip:

* the reference: the checkpoint's model run outside the service on each clip alone, in float32
  with torch's default kernels (no ``service.precision`` preparation);
* the served float32 path (linear layers pre-packed for oneDNN), one clip per model call and in
  micro-batches of 8 (padded and masked): must give the same intent on every clip;
* ``QUADS_PRECISION=bfloat16`` (where the CPU has bfloat16 hardware) and ``int8``, alone and
  batched: intents that differ, and the largest change of any probability.

    python -m bench.check_precision --data runs/demo/corpus --split test --out bench/results/precision.md

It reads the split once and chooses nothing from it; the figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from bench.report_output import publish
from core.audio import decode_audio, log_mel_spectrogram
from core.checkpoint import load_checkpoint
from core.cpu_features import native_bfloat16
from service.cpu import resolve_threads
from service.engine import EngineOptions, InferenceEngine
from training.datasets import load_samples

DEFAULT_MODEL = Path("models/quads-fsc-4bit.safetensors")


def answers(model_path: Path, clips: list[bytes], threads: int, **engine_options) -> torch.Tensor:
    """(N, n_labels) probabilities of every clip, all submitted at once to one engine."""
    engine = InferenceEngine(
        load_checkpoint(model_path), EngineOptions(threads=threads, max_queue=len(clips), **engine_options)
    ).start()
    try:
        futures = [engine.submit(clip) for clip in clips]
        return torch.stack(
            [
                f.result(timeout=600).probabilities
                for f in tqdm(futures, desc=str(engine_options), leave=False, mininterval=5)
            ]
        )
    finally:
        engine.close()


def reference_answers(model_path: Path, clips: list[bytes]) -> torch.Tensor:
    """(N, n_labels) probabilities of the checkpoint's model as loaded, each clip alone, outside the service."""
    checkpoint = load_checkpoint(model_path)
    out = []
    with torch.inference_mode():
        for clip in tqdm(clips, desc="reference", leave=False, mininterval=5):
            mel = log_mel_spectrogram(decode_audio(clip), checkpoint.dims.n_mels)[None]
            out.append(checkpoint.model(mel)[1][0].softmax(-1))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=Path("runs/demo/corpus"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=resolve_threads(0))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    samples = load_samples(args.data, args.split)
    clips = [Path(s.path).read_bytes() for s in samples]
    labels = load_checkpoint(args.model).labels
    truth = torch.tensor([labels.index(s.label) for s in samples])
    torch.set_num_threads(args.threads)
    runs = {
        "reference: float32, torch's default kernels, outside the service": reference_answers(args.model, clips),
        "float32, one clip per call": answers(args.model, clips, args.threads, max_batch_size=1),
        "float32, batches of 8": answers(args.model, clips, args.threads, max_batch_size=8),
    }
    if native_bfloat16():
        runs["bfloat16, one clip per call"] = answers(
            args.model, clips, args.threads, max_batch_size=1, compute_dtype="bfloat16"
        )
    runs["int8, one clip per call"] = answers(args.model, clips, args.threads, max_batch_size=1, compute_dtype="int8")
    runs["int8, batches of 8"] = answers(args.model, clips, args.threads, max_batch_size=8, compute_dtype="int8")
    reference = runs["reference: float32, torch's default kernels, outside the service"]
    lines = [
        f"## Served answers by compute path: {args.model.name}, {args.data} `{args.split}` ({len(clips)} clips, "
        f"{len({s.speaker for s in samples})} voices)",
        "",
        "| path | accuracy | intents that differ from the reference | largest change of any probability |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, probabilities in runs.items():
        differ = int((probabilities.argmax(-1) != reference.argmax(-1)).sum())
        accuracy = float((probabilities.argmax(-1) == truth).float().mean())
        change = float((probabilities - reference).abs().max())
        lines.append(f"| {name} | {accuracy:.2%} | {differ} | {change:.1e} |")
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
