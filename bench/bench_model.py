"""Model benchmark: compute per clip, checkpoint size per bit width, and the cost of the audio front-end.

    python -m bench.bench_model [--threads 2] [--repeats 20] [--out bench/results/model.md]
    python -m bench.bench_model --quick   # skips the 10-s and 30-s timings
    python -m bench.bench_model --threads 1 --clock cpu   # on a machine shared with other jobs

All with whisper-tiny encoder dims and a 31-intent head (Fluent Speech Commands):

1. Compute: GMACs of one forward pass (``core.compute.forward_gmacs``) on clips of 1-10 s at
   their real length, against the same clip padded to 30 s as Whisper does; the paper's figure
   for comparison; and the median forward time at 3 s vs 30 s padded.
2. Size: the bytes of real packed checkpoints (``save_checkpoint``) at 32, 16, 8, 4 and 2 bits,
   against fp32 and the ideal bits/32; and the checkpoints shipped in ``models/``, if any.
3. Front-end: the median time of ``log_mel_spectrogram`` (80 mels) for 1-30 s of speech and of
   ``decode_audio`` for a 3-s WAV, per clip, per second of audio and as a share of the 3-s forward.

Every timed function runs in turn, round after round, in one run (``interleaved_medians``), so
the ratios are side by side; warm-up rounds are not counted. Values of the weights do not change
sizes or timings, so the models are random (seeded). Prints Markdown (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import bench.bench_training as training_bench
from bench.bench_service import N_LABELS, build_model, three_second_clip
from bench.bench_training import interleaved_medians
from core.audio import SAMPLE_RATE, decode_audio, log_mel_spectrogram
from core.checkpoint import load_checkpoint
from core.compute import count_parameters, forward_gmacs
from core.cpu_features import cpu_model
from core.model import WHISPER_TINY, IntentClassifier
from core.tensor_files import atomic_write
from service.cpu import available_cpus

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
CLIP_SECONDS = (1, 2, 3, 5, 10)  # compute table
MEL_SECONDS = (1, 3, 10, 30)  # front-end table; --quick keeps the short ones
QUICK_MEL_SECONDS = (1, 3)
BITS = (32, 16, 8, 4, 2)
MIB = 2**20  # the paper's "MB": 7.64 M params x 4 bytes / 2**20 = 29.16

# Paper, Table 1, QUADS rows (the same GMACs at every bit width; the input length and the
# counting tool are not stated).
PAPER_GMACS_FSC, PAPER_PARAMS_FSC = 18.48, 7.64
PAPER_GMACS_SLURP, PAPER_PARAMS_SLURP = 15.6, 7.25
PAPER_MB_FSC = {32: 29.16, 16: 14.58, 8: 7.29, 4: 3.65}


def host_description(threads: int) -> str:
    """CPU, cores, torch version and threads, and the load at the start (other jobs skew timings)."""
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs visible ({available_cpus()} usable by this process), "
        f"1-min load average {os.getloadavg()[0]:.1f} at start, torch {torch.__version__}, {threads} torch thread(s)"
    )


def speech(seconds: float, clip: torch.Tensor) -> torch.Tensor:
    """``seconds`` of audio (samples,): the speech ``clip`` repeated and cut to length."""
    n = int(seconds * SAMPLE_RATE)
    return clip.repeat(math.ceil(n / clip.numel()))[:n]


def compute_section(model: IntentClassifier, times: dict[str, float] | None) -> list[str]:
    padded = forward_gmacs(model)
    lines = [
        "### Compute per clip (GMACs of one forward pass)",
        "",
        "| clip (s) | GMACs | ratio to 30-s padded | 30-s padded / this |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for seconds in CLIP_SECONDS:
        gmacs = forward_gmacs(model, seconds=seconds)
        lines.append(f"| {seconds} | {gmacs:.2f} | {gmacs / padded:.3f} | {padded / gmacs:.1f}x |")
    lines += [
        f"| any, padded to 30 s (Whisper) | {padded:.2f} | 1.000 | 1.0x |",
        "",
        f"Counted by `torch.utils.flop_counter` (FLOPs / 2): convolutions, linear layers and the attention "
        f"products QK^T and AV; norms, GELU and softmax are not counted. The attention products grow with "
        f"the square of the length, the rest linearly. The paper (Table 1) gives QUADS {PAPER_GMACS_FSC} GMACs "
        f"on FSC with {PAPER_PARAMS_FSC} M parameters - the size of these dims with a {N_LABELS}-intent head "
        f"({count_parameters(model):,} parameters here) - and {PAPER_GMACS_SLURP} GMACs on SLURP "
        f"({PAPER_PARAMS_SLURP} M parameters), the same at every bit width; it does not say how long the "
        f"counted input is. The 30-s padded count above is {padded / PAPER_GMACS_FSC:.3f}x the FSC figure.",
        "",
    ]
    if times is not None:
        real, pad = times["forward 3 s"], times["forward 30 s padded"]
        lines += [
            "Median forward time, one clip, `torch.inference_mode`:",
            "",
            "| input | ms | ratio |",
            "| --- | ---: | ---: |",
            f"| 3-s clip at its real length | {1000 * real:.1f} | 1.0x |",
            f"| same clip padded to 30 s | {1000 * pad:.1f} | {pad / real:.1f}x |",
            "",
        ]
    return lines


def size_section(tmp: Path) -> list[str]:
    sizes = {bits: build_model(tmp, bits).stat().st_size for bits in BITS}
    fp32 = sizes[32]
    lines = [
        "### Checkpoint size (packed safetensors file)",
        "",
        "| bits | file bytes | MiB | ratio to fp32 | ideal (bits/32) | paper, FSC (MB = MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bits, size in sizes.items():
        paper = PAPER_MB_FSC.get(bits)
        lines.append(
            f"| {bits} | {size:,} | {size / MIB:.2f} | {size / fp32:.4f} | {bits / 32:.4f} | "
            f"{paper if paper is not None else '-'} |"
        )
    lines += [
        "",
        "Above the ideal because biases and LayerNorms stay float32, the file has a metadata header and, "
        "at <= 8 bits, each weight matrix carries its own float32 codebook (2**bits centroids). The "
        "paper's sizes are exactly the ideal fraction of its fp32 size.",
        "",
    ]
    return lines + shipped_models_section()


def shipped_models_section() -> list[str]:
    paths = sorted(MODELS_DIR.glob("*.safetensors"))
    if not paths:
        return [f"Shipped models: none in `{MODELS_DIR.name}/`.", ""]
    lines = [
        "Shipped models:",
        "",
        "| file | bits | file bytes | MiB | dims (n_mels, n_state, n_head, n_layer) | parameters | labels |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for path in paths:
        ckpt = load_checkpoint(path)
        d = ckpt.dims
        lines.append(
            f"| `{MODELS_DIR.name}/{path.name}` | {ckpt.bits} | {ckpt.file_bytes:,} | "
            f"{ckpt.file_bytes / MIB:.2f} | {d.n_mels}, {d.n_state}, {d.n_head}, {d.n_layer} | "
            f"{ckpt.n_params:,} | {len(ckpt.labels)} |"
        )
    return lines + [""]


def frontend_section(times: dict[str, float], mel_seconds: tuple[int, ...], wav_bytes: int) -> list[str]:
    forward = times["forward 3 s"]
    lines = [
        "### Front-end (median per clip)",
        "",
        "| step | audio (s) | ms per clip | ms per s of audio | share of the 3-s forward |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def row(step: str, seconds: float, t: float) -> str:
        return f"| {step} | {seconds:g} | {1000 * t:.2f} | {1000 * t / seconds:.3f} | {t / forward:.3f}x |"

    for seconds in mel_seconds:
        lines.append(row("log-mel (80), real length", seconds, times[f"log-mel {seconds} s"]))
    lines += [
        row("log-mel (80), padded to 30 s", 3, times["log-mel 3 s padded"]),
        row(f"decode_audio, 16-bit WAV ({wav_bytes:,} bytes)", 3, times["decode 3 s"]),
        f"| model forward, real length (reference) | 3 | {1000 * forward:.2f} | {1000 * forward / 3:.3f} | 1.000x |",
        "",
    ]
    return lines


def timed_functions(model: IntentClassifier, wav: bytes, mel_seconds: tuple[int, ...], quick: bool) -> dict:
    """Name -> zero-argument function for every timing in the report."""
    clip = decode_audio(wav)
    mel_3s = log_mel_spectrogram(clip)[None]
    mel_padded = log_mel_spectrogram(clip, pad_to_30s=True)[None]

    def forward(mel: torch.Tensor):
        def run():
            with torch.inference_mode():
                model(mel)

        return run

    fns = {"forward 3 s": forward(mel_3s)}
    if not quick:
        fns["forward 30 s padded"] = forward(mel_padded)
    for seconds in mel_seconds:
        audio = speech(seconds, clip)
        fns[f"log-mel {seconds} s"] = lambda audio=audio: log_mel_spectrogram(audio)
    fns["log-mel 3 s padded"] = lambda: log_mel_spectrogram(clip, pad_to_30s=True)
    fns["decode 3 s"] = lambda: decode_audio(wav)
    return fns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (after 2 warm-up rounds)")
    parser.add_argument("--quick", action="store_true", help="skip the 30-s padded forward and the 10/30-s log-mels")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a busy machine, 1 thread)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown here (atomically)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # interleaved_medians reads its clock from bench_training's module setting (see its --clock).
    training_bench.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.manual_seed(0)
    model = IntentClassifier(WHISPER_TINY, N_LABELS).eval()
    wav = three_second_clip()
    mel_seconds = QUICK_MEL_SECONDS if args.quick else MEL_SECONDS
    times = interleaved_medians(timed_functions(model, wav, mel_seconds, args.quick), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        sizes = size_section(Path(tmp))
    lines = [
        "## Model benchmark",
        "",
        f"{host_description(args.threads)}, {args.clock} clock; whisper-tiny encoder dims, {N_LABELS} intents, random weights "
        f"(seed 0); medians of {args.repeats} rounds after 2 warm-up rounds, all timings interleaved in one run; "
        f"input: a 3-s espeak-ng utterance (a chirp without espeak-ng), repeated for longer clips.",
        "",
        *compute_section(model, None if args.quick else times),
        *sizes,
        *frontend_section(times, mel_seconds, len(wav)),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write(args.out, lambda path: path.write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
