"""Which teacher embedding carries more of the intent: Whisper at the clip's real length, or padded to 30 s?

    python -m bench.bench_teacher_input --teacher runs/demo/whisper/base --data runs/demo/corpus \
        [--train-clips 310 --valid-clips 310] [--out bench/results/teacher_input.md]

Whisper was trained on 30-s padded input. QUADS runs every encoder at the clip's real length;
this checks that the frozen teacher's pooled embedding is no worse for it. For each clip, the
teacher's encoder runs (a) at the real length, pooled over all positions, and (b) on the audio
zero-padded to 30 s, pooled over the positions of the speech only. A linear probe (softmax
regression, the same steps for both) is fitted on train-split embeddings and scored on the
validation split: the input whose probe scores higher is the better distillation target. The
test split is not read. Prints Markdown (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from core.audio import decode_audio, log_mel_spectrogram, num_frames
from core.model import encoder_lengths
from training.datasets import label_set, load_samples
from training.whisper import load_whisper_encoder


@torch.no_grad()
def embeddings(encoder, paths: list[Path], padded: bool) -> torch.Tensor:
    rows = []
    for path in tqdm(paths, desc="30-s padded" if padded else "real length", unit="clip"):
        audio = decode_audio(path.read_bytes())
        mel = log_mel_spectrogram(audio, pad_to_30s=padded)[None]
        frames, _ = encoder(mel)
        speech = int(encoder_lengths(torch.tensor(num_frames(audio.numel()))))
        rows.append(frames[0, :speech].mean(dim=0))  # at real length, speech == all positions
    return torch.stack(rows)


def probe_accuracy(x_train, y_train, x_valid, y_valid, n_labels: int, steps: int = 500) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_valid = (x_train - mean) / std, (x_valid - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(x_train.shape[1], n_labels)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x_train), y_train).backward()
        opt.step()
    return float((head(x_valid).argmax(1) == y_valid).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="Whisper checkpoint (.pt, Hugging Face or CTranslate2 folder)")
    p.add_argument("--data", required=True, help="a corpus with train and valid splits")
    p.add_argument("--train-clips", type=int, default=310)
    p.add_argument("--valid-clips", type=int, default=310)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = load_whisper_encoder(args.teacher)
    g = torch.Generator().manual_seed(0)
    splits = {}
    for split, n in (("train", args.train_clips), ("valid", args.valid_clips)):
        samples = load_samples(args.data, split)
        splits[split] = [samples[i] for i in torch.randperm(len(samples), generator=g)[:n].tolist()]
    labels = label_set(splits["train"] + splits["valid"])
    y = {s: torch.tensor([labels.index(x.label) for x in v]) for s, v in splits.items()}
    scores = {}
    for padded in (False, True):
        x = {s: embeddings(encoder, [Path(x.path) for x in v], padded) for s, v in splits.items()}
        scores["30-s padded, pooled over the speech" if padded else "real length"] = probe_accuracy(
            x["train"], y["train"], x["valid"], y["valid"], len(labels)
        )
    lines = [
        f"Teacher input: linear-probe accuracy on the validation split ({args.teacher}, {args.data}; "
        f"{len(splits['train'])} train / {len(splits['valid'])} valid clips)",
        "",
        "| teacher input | probe accuracy (%) |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {100 * v:.1f} |" for k, v in scores.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
