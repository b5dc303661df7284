"""Where the served attention switches kernels: torch's fused SDPA against ``short_attention``.

``service.served_attention`` runs bfloat16 clips of at most ``SHORT_ATTENTION_POSITIONS`` encoder
positions as two batched products with a float32 softmax, and everything else through
``F.scaled_dot_product_attention``. This times both on one attention layer of whisper-tiny
dims (6 heads of 64), one clip, at encoder lengths from 0.5 s to 10 s of audio, in float32 and
under bfloat16 autocast, alternating the two kernels; medians of the repeats.

    python -m bench.bench_attention --threads 2 --out bench/results/attention.md
"""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as quads-serve sets it, before torch loads

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.report_output import publish
from core.cpu_features import native_bfloat16
from service.served_attention import SHORT_ATTENTION_POSITIONS, short_attention

# (clips, encoder positions): 50 positions per second of audio; batches carry a padding mask.
SHAPES = [(1, t) for t in (25, 50, 100, 150, 175, 200, 250, 300, 384, 500)] + [
    (4, 50),
    (4, 100),
    (4, 150),
    (8, 50),
    (8, 100),
]
N_HEAD, D_HEAD = 6, 64


def median_us(fn, repeats: int, rounds: int = 5) -> float:
    """Median over ``rounds`` blocks of ``repeats`` calls of the per-call time, microseconds."""
    blocks = []
    for _ in range(rounds):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        blocks.append((time.perf_counter() - start) / repeats * 1e6)
    return statistics.median(blocks)


def compare(dtype: torch.dtype, B: int, T: int, repeats: int) -> tuple[float, float]:
    """(SDPA, short_attention) microseconds for one (B, N_HEAD, T, D_HEAD) attention in ``dtype``."""
    q, k, v = (torch.randn(B, N_HEAD, T, D_HEAD).to(dtype) for _ in range(3))
    mask = None if B == 1 else (torch.arange(T) < torch.linspace(T // 2, T, B).long()[:, None])[:, None, None, :]
    autocast = torch.autocast("cpu", torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        fused = median_us(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), repeats)
        short = median_us(lambda: short_attention(q, k, v, mask), repeats)
    return fused, short


def report(threads: int, repeats: int) -> str:
    torch.set_num_threads(threads)
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bfloat16() else [])
    lines = [
        "## Attention kernels: one layer, whisper-tiny dims (median us)",
        "",
        f"- Host: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {threads}, torch {torch.__version__}; "
        f"bfloat16 hardware: {'yes' if native_bfloat16() else 'no (float32 only)'}.",
        f"- The service uses `short_attention` at <= {SHORT_ATTENTION_POSITIONS} positions, SDPA beyond.",
        "",
        "| clips x positions (s of audio) | "
        + " | ".join(f"{str(d).removeprefix('torch.')}: SDPA | short | short / SDPA" for d in dtypes)
        + " |",
        "| ---: | " + " | ".join("---: | ---: | ---:" for _ in dtypes) + " |",
    ]
    for B, T in SHAPES:
        cells = []
        for dtype in dtypes:
            fused, short = compare(dtype, B, T, repeats)
            cells.append(f"{fused:.0f} | {short:.0f} | {short / fused:.2f}x")
        lines.append(f"| {B} x {T} ({T / 50:g}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40, help="calls per timed block")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    publish(report(args.threads, args.repeats), args.out)


if __name__ == "__main__":
    main()
