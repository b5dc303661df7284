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
  posted over loopback, decoding and log-mel included; and the same with bfloat16, int8 and the
  service's default, ``QUADS_PRECISION=auto`` (the path it chose is printed).

It also measures the host's matrix-multiply peak in the same run (a 2048x2048 product) and
prints each path against the compute limit of our forward: GFLOPs / peak. Medians of blocks;
compare ratios, not absolute times.

    python -m bench.bench_engines --whisper runs/demo/whisper/tiny.en --threads 2 --out bench/results/engines.md

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

from bench.bench_service import Server, three_second_clip
from bench.report_output import publish
from bench.wrk import run_wrk, write_post_script, wrk_available
from core.audio import decode_audio, log_mel_spectrogram
from core.checkpoint import save_checkpoint
from core.compute import forward_gmacs
from core.cpu_features import native_bfloat16
from core.model import IntentClassifier
from service.cpu import resolve_threads
from service.onednn_linear import OneDnnLinear, onednn_linear_works
from service.precision import compute_context, prepare_model
from training.whisper.ct2 import read_ct2_encoder
from training.whisper.encoder import _HF_RENAMES

N_LABELS = 31
PAUSE_S = 0.25  # between blocks: lets another engine's spinning threads go idle
WRK_BLOCK_S = 2.0


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
            order.append(
                (
                    f"ct2_{compute_type}_{length}",
                    lambda n, c=compute_type, clip_length=length: block(c, clip_length, n),
                    per_block,
                )
            )


def register_wrk(order: list, name: str, url: str, script: Path) -> None:
    """A path timed by wrk with one connection: each block is ``WRK_BLOCK_S`` seconds of back-to-back
    requests and yields one value, that block's median latency."""

    def block(_n: int) -> list[float]:
        run = run_wrk(url, script, connections=1, seconds=WRK_BLOCK_S)
        if run.non_2xx or run.timeouts:
            raise RuntimeError(f"wrk got {run.non_2xx} error answers and {run.timeouts} timeouts from {url}")
        return [run.p50_ms / 1000]

    order.append((name, block, None))


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


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 15) -> dict[str, float]:
    """GFLOP/s of a size^3 product through torch's default kernel (MKL in float32) and through a
    oneDNN pre-packed linear layer (service.onednn_linear), in the same run."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    kernels = {"torch.matmul": lambda: a @ b}
    if onednn_linear_works(dtype):
        packed = OneDnnLinear(torch.nn.Linear(size, size, bias=False, dtype=dtype))
        kernels["oneDNN packed"] = lambda: packed(a)
    peaks = {}
    with torch.inference_mode():
        for name, product in kernels.items():
            product()
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                product()
                seconds.append(time.perf_counter() - start)
            peaks[name] = 2 * size**3 / statistics.median(seconds) / 1e9
    return peaks


def hf_classifier(encoder_state: dict[str, torch.Tensor], dims):
    """``WhisperForAudioClassification`` with our encoder's weights (HF names mapped back through the import's table)."""
    from transformers import WhisperConfig, WhisperForAudioClassification

    config = WhisperConfig(
        num_mel_bins=dims.n_mels,
        d_model=dims.n_state,
        encoder_layers=dims.n_layer,
        encoder_attention_heads=dims.n_head,
        encoder_ffn_dim=dims.n_mlp,
        max_source_positions=dims.n_ctx,
        num_labels=N_LABELS,
        decoder_layers=1,
        decoder_attention_heads=dims.n_head,
        decoder_ffn_dim=dims.n_mlp,
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
    save_checkpoint(
        checkpoint_path, model, [f"intent_{i:02d}" for i in range(N_LABELS)], 32, provenance={"purpose": "benchmark"}
    )

    audio = decode_audio(clip)
    mel = log_mel_spectrogram(audio, dims.n_mels)[None]  # (1, 80, 300)
    mel30 = log_mel_spectrogram(audio, dims.n_mels, pad_to_30s=True)[None]  # (1, 80, 3000)
    info = {"dims": dims, "frames": mel.shape[-1], "gmacs": forward_gmacs(model, frames=mel.shape[-1])}

    with open(mels_path, "wb") as f:
        np.savez(f, **{"3s": mel.numpy(), "30s": mel30.numpy()})

    openai_encoder = openai_whisper.model.AudioEncoder(
        dims.n_mels, dims.n_ctx, dims.n_state, dims.n_head, dims.n_layer
    ).eval()
    openai_encoder.load_state_dict({**openai_encoder.state_dict(), **state})
    hf = hf_classifier(state, dims)
    served = {}  # each compute dtype's model as the service prepares it (service.precision)
    for dtype in ("float32", "bfloat16", "int8") if native_bfloat16() else ("float32", "int8"):
        served[dtype] = copy.deepcopy(model)
        prepare_model(served[dtype], dtype)

    def ours(x, dtype="float32"):
        with torch.inference_mode(), compute_context(dtype):
            return served[dtype](x)

    register(order, "ours_fp32_3s", lambda: ours(mel), args.per_block)
    register(order, "ours_fp32_default_3s", inference(lambda: model(mel)), args.per_block)
    if "bfloat16" in served:
        register(order, "ours_bf16_3s", lambda: ours(mel, "bfloat16"), args.per_block)
    register(order, "ours_int8_3s", lambda: ours(mel, "int8"), args.per_block)
    register(order, "ours_fp32_30s", lambda: ours(mel30), 1)
    register(order, "openai_whisper_30s", inference(lambda: openai_encoder(mel30)), 1)
    register(order, "hf_classifier_30s", inference(lambda: hf(input_features=mel30)), 1)
    return info


PATH_ROWS = [
    ("CTranslate2 encoder, float32, 3 s", "ct2_float32_3s"),
    ("CTranslate2 encoder, int8, 3 s", "ct2_int8_3s"),
    ("CTranslate2 encoder, float32, 30 s", "ct2_float32_30s"),
    ("CTranslate2 encoder, int8, 30 s", "ct2_int8_30s"),
    ("openai-whisper AudioEncoder, 30 s", "openai_whisper_30s"),
    ("HF WhisperForAudioClassification, 30 s", "hf_classifier_30s"),
    ("ours, forward, float32 as served (oneDNN packed linear), 3 s", "ours_fp32_3s"),
    ("ours, forward, float32 with torch's default linear (MKL), 3 s", "ours_fp32_default_3s"),
    ("ours, forward, bfloat16, 3 s", "ours_bf16_3s"),
    ("ours, forward, int8 linear layers, 3 s", "ours_int8_3s"),
    ("ours, forward, float32 as served, 30 s", "ours_fp32_30s"),
    ("**ours, HTTP end to end, float32, 3-s WAV** (httpx client)", "http_fp32_3s"),
    ("**ours, HTTP end to end, bfloat16, 3-s WAV** (httpx client)", "http_bf16_3s"),
    ("**ours, HTTP end to end, int8, 3-s WAV** (httpx client)", "http_int8_3s"),
    ("**ours, HTTP end to end, float32, 3-s WAV** (wrk client)", "http_fp32_3s_wrk"),
    ("**ours, HTTP end to end, bfloat16, 3-s WAV** (wrk client)", "http_bf16_3s_wrk"),
    ("**ours, HTTP end to end, int8, 3-s WAV** (wrk client)", "http_int8_3s_wrk"),
    ("**ours, HTTP end to end, the default (auto), 3-s WAV** (httpx client)", "http_auto_3s"),
    ("**ours, HTTP end to end, the default (auto), 3-s WAV** (wrk client)", "http_auto_3s_wrk"),
]
HTTP_PATHS = (
    ("float32", "http_fp32_3s"),
    ("bfloat16", "http_bf16_3s"),
    ("int8", "http_int8_3s"),
    ("the default (auto)", "http_auto_3s"),
)


def target_rows(ms: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The issue's targets, one row per target and compute dtype; a ratio per HTTP client."""
    fastest_ct2 = min(ms["ct2_float32_3s"], ms["ct2_int8_3s"])
    fastest_30s = min(value for key, value in ms.items() if key.endswith("_30s"))
    clients = [("httpx", ""), ("wrk", "_wrk")] if "http_fp32_3s_wrk" in ms else [("httpx", "")]
    lines = [
        "| target | " + " | ".join(f"{client} client: measured | ratio" for client, _ in clients) + " |",
        "| --- |" + " --- | ---: |" * len(clients),
    ]
    for dtype, key in HTTP_PATHS:
        checks = [(f"HTTP {dtype} p50 <= fastest CTranslate2 encoder at 3 s", fastest_ct2, 1.0)]
        if dtype in limits:
            checks.append((f"HTTP {dtype} p50 <= 2x {dtype} compute limit", limits[dtype], 2.0))
        checks.append((f"30-s paths >= 10x HTTP {dtype} p50 (fastest 30-s path / ours)", fastest_30s, None))
        for label, anchor, bound in checks:
            cells = []
            for _, suffix in clients:
                if key + suffix not in ms:
                    break
                ours = ms[key + suffix]
                if bound is None:
                    cells.append(f"{anchor:.1f} / {ours:.1f} ms | {anchor / ours:.1f}x")
                else:
                    cells.append(f"{ours:.1f} vs {anchor:.1f} ms | {ours / anchor:.2f}x")
            if cells:
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def report(args, info: dict, ms: dict[str, float], peaks: dict[str, dict[str, float]], clip: bytes) -> str:
    gflop = 2 * info["gmacs"]
    best = {dtype: max(by_kernel.values()) for dtype, by_kernel in peaks.items()}
    limits = {dtype: 1000 * gflop / peak for dtype, peak in best.items()}
    e2e = ms["http_fp32_3s"]
    peak_text = "; ".join(
        f"{dtype}: " + ", ".join(f"{kernel} {value:.0f}" for kernel, value in by_kernel.items())
        for dtype, by_kernel in peaks.items()
    )
    lines = [
        "## Engines, same weights, same clip",
        "",
        f"- Host: {platform.machine()}, {os.cpu_count()} CPUs visible, {args.threads} threads for every engine; "
        f"bfloat16 hardware: {'yes' if 'bfloat16' in limits else 'no'}. Matmul peak (2048^3, this run, GFLOP/s): {peak_text}. "
        "The compute limit takes the faster kernel.",
        f"- Weights: {args.whisper} (dims {info['dims'].n_state}x{info['dims'].n_layer}), with a {N_LABELS}-label head for ours.",
        f"- Clip: 3-s espeak-ng WAV ({len(clip)} bytes), {info['frames']} mel frames; our forward: {gflop:.2f} GFLOP, so its "
        "compute limit here is " + " and ".join(f"{limit:.1f} ms in {dtype}" for dtype, limit in limits.items()) + ".",
        f"- Medians over {args.rounds} rounds of alternating blocks ({args.per_block} calls per block at 3 s, 1 at 30 s). "
        f"A wrk row is the median of its blocks' medians (one connection, {WRK_BLOCK_S:g} s a block, requests back to back).",
        f"- The default server (`QUADS_PRECISION=auto`) chose `{info['auto_path']}` at start (service.compute_path).",
        "",
        "| path | median ms | vs our HTTP float32 (httpx) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {ms[key]:.1f} | {ms[key] / e2e:.2f}x |" for label, key in PATH_ROWS if key in ms]
    return "\n".join([*lines, "", *target_rows(ms, limits)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--whisper", type=Path, default=Path("runs/demo/whisper/tiny.en"), help="a CTranslate2 Whisper directory"
    )
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
        worker = stack.enter_context(
            subprocess.Popen(
                [sys.executable, "-c", CT2_WORKER, str(args.whisper), str(args.threads), str(mels_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        register_ct2(order, worker)
        servers = {"http_fp32_3s": stack.enter_context(Server(checkpoint_path, args.threads)).url}
        if native_bfloat16():
            servers["http_bf16_3s"] = stack.enter_context(
                Server(checkpoint_path, args.threads, QUADS_PRECISION="bfloat16")
            ).url
        servers["http_int8_3s"] = stack.enter_context(Server(checkpoint_path, args.threads, QUADS_PRECISION="int8")).url
        servers["http_auto_3s"] = stack.enter_context(Server(checkpoint_path, args.threads, QUADS_PRECISION="auto")).url
        info["auto_path"] = httpx.get(f"{servers['http_auto_3s']}/v1/model", timeout=10).json()["compute_path"]
        for name, url in servers.items():
            client = stack.enter_context(httpx.Client(base_url=url, timeout=60))

            def post(c: httpx.Client = client) -> None:
                c.post("/intent", content=clip, headers={"Content-Type": "audio/wav"}).raise_for_status()

            register(order, name, post, args.per_block)
        if wrk_available():
            script = write_post_script(clip, Path(tmp))
            for name, url in servers.items():
                register_wrk(order, f"{name}_wrk", url, script)
        peaks = {"float32": matmul_peak_gflops(torch.float32)}
        if native_bfloat16():
            peaks["bfloat16"] = matmul_peak_gflops(torch.bfloat16)
        ms = run_interleaved(order, args.rounds, args.per_block)
        worker.stdin.close()
    text = report(args, info, ms, peaks, clip)
    publish(text, args.out)


if __name__ == "__main__":
    main()
