"""QUADS against the engines a user would pick instead, on the same Whisper weights and the same clip.

Loads a CTranslate2 Whisper directory (tiny.en: ``quads-demo`` fetches it to
``runs/demo/whisper/tiny.en``) and times, in alternating blocks:

* CTranslate2's Whisper encoder (the engine inside faster-whisper), float32 and int8, at the
  clip's real length and at 30 s, in a worker process of its own (its OpenMP runtime slows
  torch's in the same process), which times its own calls;
* openai-whisper's ``AudioEncoder`` and Hugging Face ``WhisperForAudioClassification``, which
  only take 30-s input (same weights, loaded through the project's name mapping);
* our forward (encoder + head) at the clip's length, in float32, (where the CPU has it)
  bfloat16 and int8 (``service.precision``), and at 30 s;
* our whole HTTP path: ``quads-serve`` serving the same weights (a float32 checkpoint), a 3-s WAV
  posted over loopback, decoding and log-mel included; and the same with bfloat16 and int8.

It also measures the host's matrix-multiply peak in the same run (a 2048x2048 product) and
prints each path against the compute limit of our forward: GFLOPs / peak. Medians of blocks;
compare ratios, not absolute times.

    python bench/bench_engines.py --whisper runs/demo/whisper/tiny.en --threads 2 --out bench/results/engines.md

The reference engines are benchmark-only dependencies: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import os

# Both torch and CTranslate2 bring a libgomp, each read once at load: give every engine the
# service's short spin (service.cli.set_openmp_wait_policy), so no engine's idle threads spin
# through the next engine's block.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse
import contextlib
import copy
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import torch

from core.audio import decode_audio, log_mel_spectrogram
from core.checkpoint import save_checkpoint
from core.compute import forward_gmacs
from core.cpu_features import native_bfloat16
from core.model import IntentClassifier
from service.cpu import resolve_threads
from service.precision import prepare_model
from training.whisper.ct2 import read_ct2_encoder
from training.whisper.encoder import _HF_RENAMES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.* imports
from bench.bench_service import Server, three_second_clip
from bench.report_output import publish

N_LABELS = 31
PAUSE_S = 0.25  # between blocks: lets another engine's spinning threads go idle


# CTranslate2 runs in a process of its own: its OpenMP runtime (a second libgomp) slowed torch's
# forward in the same process from 14.8 to 18.6 ms once it had run. The worker times its own calls.
CT2_WORKER = """
import sys, time
import ctranslate2, numpy as np
path, threads, mels = sys.argv[1], int(sys.argv[2]), np.load(sys.argv[3])
inputs = {k: ctranslate2.StorageView.from_array(np.ascontiguousarray(mels[k])) for k in ("3s", "30s")}
models = {t: ctranslate2.models.Whisper(path, device="cpu", compute_type=t, intra_threads=threads) for t in ("float32", "int8")}
print("ready", flush=True)
for line in sys.stdin:
    compute_type, length, n = line.split()
    model, x, seconds = models[compute_type], inputs[length], []
    for _ in range(int(n)):
        start = time.perf_counter()
        model.encode(x, to_cpu=True)
        seconds.append(time.perf_counter() - start)
    print(" ".join(map(repr, seconds)), flush=True)
"""


def register(order: list, name: str, fn: Callable[[], object], per_block: int) -> None:
    """Adds ``fn`` under ``name`` to the paths that ``run_interleaved`` times, ``per_block`` calls a block."""

    def block(n: int) -> list[float]:
        seconds = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        return seconds

    order.append((name, block, per_block))


def register_ct2(order: list, worker: subprocess.Popen) -> None:
    """The CTranslate2 paths, each block timed inside ``worker`` (a ``CT2_WORKER`` process)."""
    assert worker.stdout.readline().strip() == "ready"

    def block(compute_type: str, length: str, n: int) -> list[float]:
        worker.stdin.write(f"{compute_type} {length} {n}\n")
        worker.stdin.flush()
        return [float(x) for x in worker.stdout.readline().split()]

    for compute_type in ("float32", "int8"):
        for length, per_block in (("3s", None), ("30s", 1)):
            order.append((f"ct2_{compute_type}_{length}", lambda n, c=compute_type, l=length: block(c, l, n), per_block))


def run_interleaved(order: list, rounds: int, per_block: int) -> dict[str, float]:
    """Each round runs every path's block once, in turn; returns median ms per call."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in order}
    for _, block, _ in order:
        block(1)  # warm up
    for _ in range(rounds):
        for name, block, n in order:
            time.sleep(PAUSE_S)
            times[name] += block(n or per_block)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def inference(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run under ``torch.inference_mode``."""

    def run():
        with torch.inference_mode():
            return fn()

    return run


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 15) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def hf_classifier(encoder_state: dict[str, torch.Tensor], dims):
    """``WhisperForAudioClassification`` with our encoder's weights (HF names mapped back through the import's table)."""
    from transformers import WhisperConfig, WhisperForAudioClassification

    config = WhisperConfig(
        num_mel_bins=dims.n_mels, d_model=dims.n_state, encoder_layers=dims.n_layer, encoder_attention_heads=dims.n_head,
        encoder_ffn_dim=dims.n_mlp, max_source_positions=dims.n_ctx, num_labels=N_LABELS,
        decoder_layers=1, decoder_attention_heads=dims.n_head, decoder_ffn_dim=dims.n_mlp,
    )
    model = WhisperForAudioClassification(config).eval()
    hf_state = model.encoder.state_dict()
    for key in hf_state:
        ours = key
        for pattern, repl in _HF_RENAMES:
            ours = re.sub(pattern, repl, ours)
        if ours in encoder_state and encoder_state[ours].shape == hf_state[key].shape:
            hf_state[key] = encoder_state[ours]
    model.encoder.load_state_dict(hf_state)
    return model


def build_paths(args, clip: bytes, checkpoint_path: Path, order: list, mels_path: Path) -> dict:
    """Registers every in-process path, writes the float32 checkpoint the servers will serve and
    the mels the CTranslate2 worker reads."""
    import whisper as openai_whisper

    dims, state = read_ct2_encoder(args.whisper)
    torch.manual_seed(0)
    model = IntentClassifier(dims, N_LABELS).eval()
    model.encoder.load_state_dict(state, strict=False)
    save_checkpoint(checkpoint_path, model, [f"intent_{i:02d}" for i in range(N_LABELS)], 32, {"purpose": "benchmark"})

    audio = decode_audio(clip)
    mel = log_mel_spectrogram(audio, dims.n_mels)[None]  # (1, 80, 300)
    mel30 = log_mel_spectrogram(audio, dims.n_mels, pad_to_30s=True)[None]  # (1, 80, 3000)
    info = {"dims": dims, "frames": mel.shape[-1], "gmacs": forward_gmacs(model, frames=mel.shape[-1])}

    with open(mels_path, "wb") as f:
        np.savez(f, **{"3s": mel.numpy(), "30s": mel30.numpy()})

    openai_encoder = openai_whisper.model.AudioEncoder(dims.n_mels, dims.n_ctx, dims.n_state, dims.n_head, dims.n_layer).eval()
    openai_encoder.load_state_dict({**openai_encoder.state_dict(), **state})
    hf = hf_classifier(state, dims)
    bf16 = native_bfloat16()

    def ours(x, dtype=None):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
            return model(x)

    register(order, "ours_fp32_3s", lambda: ours(mel), args.per_block)
    if bf16:
        register(order, "ours_bf16_3s", lambda: ours(mel, "bf16"), args.per_block)
    int8_model = copy.deepcopy(model)
    prepare_model(int8_model, "int8")
    register(order, "ours_int8_3s", inference(lambda: int8_model(mel)), args.per_block)
    register(order, "ours_fp32_30s", lambda: ours(mel30), 1)
    register(order, "openai_whisper_30s", inference(lambda: openai_encoder(mel30)), 1)
    register(order, "hf_classifier_30s", inference(lambda: hf(input_features=mel30)), 1)
    return info


def report(args, info: dict, ms: dict[str, float], peaks: dict[str, float], clip: bytes) -> str:
    gflop = 2 * info["gmacs"]
    limit32 = 1000 * gflop / peaks["float32"]
    limit16 = 1000 * gflop / peaks["bfloat16"] if "bfloat16" in peaks else None
    fastest_ct2 = min(ms["ct2_float32_3s"], ms["ct2_int8_3s"])
    e2e = ms["http_fp32_3s"]
    rows = [
        ("CTranslate2 encoder, float32, 3 s", "ct2_float32_3s"), ("CTranslate2 encoder, int8, 3 s", "ct2_int8_3s"),
        ("CTranslate2 encoder, float32, 30 s", "ct2_float32_30s"), ("CTranslate2 encoder, int8, 30 s", "ct2_int8_30s"),
        ("openai-whisper AudioEncoder, 30 s", "openai_whisper_30s"), ("HF WhisperForAudioClassification, 30 s", "hf_classifier_30s"),
        ("ours, forward, float32, 3 s", "ours_fp32_3s"), ("ours, forward, bfloat16, 3 s", "ours_bf16_3s"),
        ("ours, forward, int8 linear layers, 3 s", "ours_int8_3s"),
        ("ours, forward, float32, 30 s", "ours_fp32_30s"),
        ("**ours, HTTP end to end, float32, 3-s WAV**", "http_fp32_3s"), ("**ours, HTTP end to end, bfloat16, 3-s WAV**", "http_bf16_3s"),
        ("**ours, HTTP end to end, int8, 3-s WAV**", "http_int8_3s"),
    ]
    lines = [
        "## Engines, same weights, same clip",
        "",
        f"- Host: {platform.machine()}, {os.cpu_count()} CPUs visible, {args.threads} threads for every engine; "
        f"bfloat16 hardware: {'yes' if limit16 else 'no'}. Matmul peak (2048^3, this run): "
        f"{peaks['float32']:.0f} GFLOP/s float32" + (f", {peaks['bfloat16']:.0f} bfloat16." if limit16 else "."),
        f"- Weights: {args.whisper} (dims {info['dims'].n_state}x{info['dims'].n_layer}), with a {N_LABELS}-label head for ours.",
        f"- Clip: 3-s espeak-ng WAV ({len(clip)} bytes), {info['frames']} mel frames; our forward: {gflop:.2f} GFLOP, "
        f"so its compute limit here is {limit32:.1f} ms in float32" + (f" and {limit16:.1f} ms in bfloat16." if limit16 else "."),
        f"- Medians over {args.rounds} rounds of alternating blocks ({args.per_block} calls per block at 3 s, 1 at 30 s).",
        "",
        "| path | median ms | vs our HTTP float32 |",
        "| --- | ---: | ---: |",
    ]
    for label, key in rows:
        if key in ms:
            lines.append(f"| {label} | {ms[key]:.1f} | {ms[key] / e2e:.2f}x |")
    lines += [
        "",
        "| target | measured | ratio |",
        "| --- | --- | ---: |",
        f"| HTTP float32 p50 <= fastest CTranslate2 encoder at 3 s | {e2e:.1f} vs {fastest_ct2:.1f} ms | {e2e / fastest_ct2:.2f}x |",
        f"| HTTP float32 <= 2x float32 compute limit | {e2e:.1f} vs {limit32:.1f} ms | {e2e / limit32:.2f}x |",
    ]
    if "http_bf16_3s" in ms and limit16:
        b = ms["http_bf16_3s"]
        lines += [
            f"| HTTP bfloat16 <= fastest CTranslate2 encoder at 3 s | {b:.1f} vs {fastest_ct2:.1f} ms | {b / fastest_ct2:.2f}x |",
            f"| HTTP bfloat16 <= 2x bfloat16 compute limit | {b:.1f} vs {limit16:.1f} ms | {b / limit16:.2f}x |",
        ]
    i8 = ms["http_int8_3s"]
    lines.append(f"| HTTP int8 <= fastest CTranslate2 encoder at 3 s | {i8:.1f} vs {fastest_ct2:.1f} ms | {i8 / fastest_ct2:.2f}x |")
    fastest_30s = min(ms[k] for k in ms if k.endswith("_30s"))
    for name, key in (("float32", "http_fp32_3s"), ("bfloat16", "http_bf16_3s"), ("int8", "http_int8_3s")):
        if key in ms:
            lines.append(f"| >= 10x faster than every 30-s path | fastest 30-s path / HTTP {name} | {fastest_30s / ms[key]:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", type=Path, default=Path("runs/demo/whisper/tiny.en"), help="a CTranslate2 Whisper directory")
    parser.add_argument("--threads", type=int, default=resolve_threads(0))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-block", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    clip = three_second_clip()
    order: list = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        checkpoint_path = Path(tmp) / "bench-whisper-fp32.safetensors"
        # The checkpoint must exist before the servers start: build the paths (which write it) first.
        mels_path = Path(tmp) / "mels.npz"
        info = build_paths(args, clip, checkpoint_path, order, mels_path)
        worker = stack.enter_context(subprocess.Popen(
            [sys.executable, "-c", CT2_WORKER, str(args.whisper), str(args.threads), str(mels_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ))
        register_ct2(order, worker)
        servers = {"http_fp32_3s": stack.enter_context(Server(checkpoint_path, args.threads)).url}
        if native_bfloat16():
            servers["http_bf16_3s"] = stack.enter_context(Server(checkpoint_path, args.threads, QUADS_PRECISION="bfloat16")).url
        servers["http_int8_3s"] = stack.enter_context(Server(checkpoint_path, args.threads, QUADS_PRECISION="int8")).url
        for name, url in servers.items():
            client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
            post = lambda c=client: c.post("/intent", content=clip, headers={"Content-Type": "audio/wav"}).raise_for_status()
            register(order, name, post, args.per_block)
        peaks = {"float32": matmul_peak_gflops(torch.float32)}
        if native_bfloat16():
            peaks["bfloat16"] = matmul_peak_gflops(torch.bfloat16)
        ms = run_interleaved(order, args.rounds, args.per_block)
        worker.stdin.close()
    text = report(args, info, ms, peaks, clip)
    publish(text, args.out)


if __name__ == "__main__":
    main()
