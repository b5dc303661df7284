"""Benchmark POST /intent over loopback HTTP against real ``quads-serve`` processes.

Measures, for one 3-s 16 kHz mono WAV and a whisper-tiny-dims 4-bit model:

* p50/p95 latency of sequential requests, with the clip at its real length and with the same
  weights on the clip padded to 30 s (Whisper's fixed input, ``QUADS_PAD_TO_30S=1``), and the ratio;
* sustained requests/s at 1, 4 and 16 concurrent clients (micro-batching on, and off).

Writes a Markdown report to stdout and, with ``--out``, to a file. Timings depend on the host:
compare the ratios, and rerun on the target machine for absolute numbers.

    python -m bench.bench_service --threads 2 --out bench/results.md
"""

from __future__ import annotations

import os

# The servers get this from quads-serve; the bare forward measured here gets the same (read when torch loads).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse
import contextlib
import io
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import soundfile
import torch

from bench.report_output import publish
from bench.server_measures import paired_model_call, paired_share, server_cpu_per_request
from bench.wrk import run_wrk, write_post_script, wrk_available
from core.audio import SAMPLE_RATE, resample
from core.checkpoint import load_checkpoint, save_checkpoint
from core.compute import forward_gmacs
from core.cpu_features import native_bfloat16
from core.model import WHISPER_TINY, IntentClassifier
from service.cpu import resolve_threads
from training.quantize import quantize_model

CLIP_SECONDS = 3.0
N_LABELS = 31  # Fluent Speech Commands has 31 intents
PHRASE = "turn the lights on in the kitchen please"
WRK_SECONDS = 3.0  # per wrk throughput run


def build_model(directory: Path, bits: int = 4) -> Path:
    """A random whisper-tiny-dims classifier, k-means quantized to ``bits`` (speed does not depend on the values)."""
    torch.manual_seed(0)
    model = IntentClassifier(WHISPER_TINY, N_LABELS).eval()
    quantize_model(model, bits)
    labels = [f"intent_{i:02d}" for i in range(N_LABELS)]
    return save_checkpoint(
        directory / f"bench-tiny-{bits}bit.safetensors", model, labels, bits, provenance={"purpose": "benchmark"}
    )


def three_second_clip() -> bytes:
    """espeak-ng speech (or, without espeak-ng, a chirp) fitted to exactly 3 s, as 16 kHz 16-bit WAV."""
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    if shutil.which("espeak-ng"):
        wav = subprocess.run(["espeak-ng", "--stdout", PHRASE], check=True, capture_output=True).stdout
        samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        wave = resample(torch.from_numpy(samples), rate).numpy()
    else:
        t = np.arange(n) / SAMPLE_RATE
        wave = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
    wave = np.pad(wave[:n], (0, max(0, n - len(wave))))
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class Server:
    """A ``quads-serve`` process on a free loopback port."""

    def __init__(self, model: Path, threads: int, **env: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # float32 unless asked: the rows name their precision (the service's default, auto, picks per CPU).
        environment = {
            **os.environ,
            "QUADS_MODEL": str(model),
            "QUADS_THREADS": str(threads),
            "QUADS_PRECISION": "float32",
            **env,
        }
        script = Path(sys.executable).with_name("quads-serve")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), "--log-level", "warning"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.cold_start_seconds: float | None = None  # process start to the first /readyz 200

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"quads-serve failed:\n{self.process.stderr.read().decode()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    self.cold_start_seconds = time.monotonic() - self.started
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("quads-serve did not become ready in 120 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def post(client: httpx.Client, clip: bytes) -> tuple[float, dict]:
    """One POST /intent: (client-side seconds, response JSON)."""
    start = time.perf_counter()
    response = client.post("/intent", content=clip, headers={"Content-Type": "audio/wav"})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def interleaved_latency(urls: dict[str, str], clip: bytes, requests: dict[str, int], rounds: int) -> dict[str, dict]:
    """p50/p95 of client-side latency (ms) and the server's median total and inference times, per server.

    The servers take turns in ``rounds`` blocks, so background load on a shared host falls on
    every variant alike and their ratio stays meaningful.
    """
    clients = {name: httpx.Client(base_url=url, timeout=120) for name, url in urls.items()}
    runs: dict[str, list] = {name: [] for name in urls}
    try:
        for client in clients.values():
            for _ in range(3):
                post(client, clip)  # warm up
        for _ in range(rounds):
            for name, client in clients.items():
                runs[name] += [post(client, clip) for _ in range(max(1, requests[name] // rounds))]
    finally:
        for client in clients.values():
            client.close()
    stats = {}
    for name, results in runs.items():
        latencies = [1000 * t for t, _ in results]
        stats[name] = {
            "n": len(results),
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "server_total": statistics.median(r["timing_ms"]["total"] for _, r in results),
            "inference": statistics.median(r["timing_ms"]["inference"] for _, r in results),
            "decode": statistics.median(r["timing_ms"]["decode"] for _, r in results),
            "features": statistics.median(r["timing_ms"]["features"] for _, r in results),
        }
    return stats


def throughput(url: str, clip: bytes, clients: int, requests_per_client: int) -> dict[str, float]:
    """Answers/s with ``clients`` closed-loop clients, each sending ``requests_per_client`` requests,
    the p50/p95 latency (ms) of the answers, and the share refused with 503 (past the admission
    limit, a client sends again at once)."""
    latencies: list[float] = []
    refused = [0]
    lock = threading.Lock()

    def run_client() -> None:
        own, own_refused = [], 0
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/intent", content=clip, headers={"Content-Type": "audio/wav"})  # connect + warm up, not timed
            barrier.wait()
            for _ in range(requests_per_client):
                start = time.perf_counter()
                response = client.post("/intent", content=clip, headers={"Content-Type": "audio/wav"})
                if response.status_code == 503:
                    own_refused += 1
                    continue
                response.raise_for_status()
                own.append(1000 * (time.perf_counter() - start))
        with lock:
            latencies.extend(own)
            refused[0] += own_refused

    barrier = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(run_client) for _ in range(clients)]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - start
    return {
        "rps": len(latencies) / wall,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "refused": refused[0] / (refused[0] + len(latencies)),
    }


def median_throughput(urls: dict[str, str], clip: bytes, clients: int, total: int, repeats: int) -> dict[str, dict]:
    """``throughput`` per server, repeated ``repeats`` times in turns; the run with the median req/s."""
    runs: dict[str, list] = {name: [] for name in urls}
    for _ in range(repeats):
        for name, url in urls.items():
            runs[name].append(throughput(url, clip, clients, max(1, total // clients)))
    return {name: sorted(r, key=lambda x: x["rps"])[len(r) // 2] for name, r in runs.items()}


def wrk_throughput(url: str, clip: bytes, clients: int, seconds: float, repeats: int) -> float | None:
    """Answers/s with ``clients`` wrk connections (a C client: little of the shared CPU) over
    ``seconds``, the median of ``repeats`` runs; None without wrk."""
    if not wrk_available():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = write_post_script(clip, Path(tmp))
        runs = [run_wrk(url, script, clients, seconds) for _ in range(repeats)]
    return statistics.median((run.requests - run.non_2xx) / run.seconds for run in runs)


def report(args, model_path: Path, clip: bytes) -> str:
    checkpoint = load_checkpoint(model_path)
    gmacs_clip = forward_gmacs(checkpoint.model, seconds=CLIP_SECONDS)
    gmacs_30s = forward_gmacs(checkpoint.model)

    bf16 = native_bfloat16()  # then also QUADS_PRECISION=bfloat16, side by side
    with (
        Server(model_path, args.threads) as real_length,
        Server(model_path, args.threads, QUADS_MAX_BATCH_SIZE="1") as unbatched,
        Server(model_path, args.threads, QUADS_PAD_TO_30S="1") as padded_server,
        Server(model_path, args.threads, QUADS_PRECISION="bfloat16")
        if bf16
        else contextlib.nullcontext() as bf16_server,
        Server(model_path, args.threads, QUADS_PRECISION="int8") as int8_server,
    ):
        urls = {"real": real_length.url, "padded": padded_server.url}
        requests = {"real": args.requests, "padded": args.padded_requests}
        if bf16:
            urls["bf16"], requests["bf16"] = bf16_server.url, args.requests
        urls["int8"], requests["int8"] = int8_server.url, args.requests
        latency = interleaved_latency(urls, clip, requests, rounds=10)
        load = {
            c: median_throughput(
                {"batched": real_length.url, "unbatched": unbatched.url}, clip, c, args.per_level, args.repeats
            )
            for c in args.clients
        }
        wrk_load = {c: wrk_throughput(real_length.url, clip, c, WRK_SECONDS, args.repeats) for c in args.clients}
        cpu = server_cpu_per_request(real_length.process.pid, real_length.url, clip, WRK_SECONDS)
        four = paired_share(real_length.url, clip, 4, WRK_SECONDS, args.repeats) if 4 in args.clients else None
        call = paired_model_call(real_length.url, checkpoint, clip, args.threads)  # the other servers are idle now
        cold_start = real_length.cold_start_seconds  # started first, alone
    real, padded = latency["real"], latency["padded"]

    lines = [
        "## POST /intent benchmark",
        "",
        f"- Host: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}; "
        f"client and server share the host; loopback HTTP, one uvicorn worker.",
        f"- Model: {model_path.name}, dims {checkpoint.dims.n_state}x{checkpoint.dims.n_layer} "
        f"({checkpoint.n_params / 1e6:.2f} M parameters, {len(checkpoint.labels)} labels), "
        f"{checkpoint.bits}-bit, file {checkpoint.file_bytes / 1e6:.2f} MB.",
        f"- Clip: {CLIP_SECONDS:g}-s 16 kHz mono 16-bit WAV ({len(clip)} bytes), raw body. "
        f"Compute per clip: {gmacs_clip:.2f} GMACs at its length, {gmacs_30s:.2f} GMACs padded to 30 s "
        f"({gmacs_30s / gmacs_clip:.1f}x).",
        "",
        f"### Latency, sequential requests ({real['n']} at real length, {padded['n']} padded, in alternating blocks; ms)",
        "",
        "| input | p50 | p95 | server total (median) | model inference (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| 3-s clip at its real length | {real['p50']:.1f} | {real['p95']:.1f} | {real['server_total']:.1f} | {real['inference']:.1f} |",
        f"| same clip padded to 30 s (Whisper) | {padded['p50']:.1f} | {padded['p95']:.1f} | "
        f"{padded['server_total']:.1f} | {padded['inference']:.1f} |",
        f"| **padded / real** | **{padded['p50'] / real['p50']:.1f}x** | {padded['p95'] / real['p95']:.1f}x | "
        f"{padded['server_total'] / real['server_total']:.1f}x | {padded['inference'] / real['inference']:.1f}x |",
    ]
    if bf16:
        b = latency["bf16"]
        lines += [
            f"| 3-s clip, `QUADS_PRECISION=bfloat16` | {b['p50']:.1f} | {b['p95']:.1f} | {b['server_total']:.1f} | {b['inference']:.1f} |",
            f"| **padded (float32) / real (bfloat16)** | **{padded['p50'] / b['p50']:.1f}x** | {padded['p95'] / b['p95']:.1f}x | "
            f"{padded['server_total'] / b['server_total']:.1f}x | {padded['inference'] / b['inference']:.1f}x |",
        ]
    i = latency["int8"]
    lines += [
        f"| 3-s clip, `QUADS_PRECISION=int8` | {i['p50']:.1f} | {i['p95']:.1f} | {i['server_total']:.1f} | {i['inference']:.1f} |",
        f"| **padded (float32) / real (int8)** | **{padded['p50'] / i['p50']:.1f}x** | {padded['p95'] / i['p95']:.1f}x | "
        f"{padded['server_total'] / i['server_total']:.1f}x | {padded['inference'] / i['inference']:.1f}x |",
    ]
    if not bf16:
        lines += ["", "(This CPU has no bfloat16 matrix hardware, so `QUADS_PRECISION=bfloat16` was not measured.)"]
    lines += [
        "",
        f"Model call inside the service (median, float32): {call['service']:.1f} ms; a bare forward of the same model "
        f"on the same clip in the benchmark's process, with the same threads: {call['bare']:.1f} ms "
        f"({call['ratio']:.2f}x, the median of 5 alternating blocks' ratios).",
        "",
        f"Stages inside the server (median ms, float32, 3-s clip): decoding {real['decode']:.2f}, log-mel "
        f"{real['features']:.2f}, model {real['inference']:.2f}, the route's total {real['server_total']:.2f}.",
        "",
        f"Cold start of the first server (started alone): {cold_start:.2f} s from process start to `/readyz` 200, "
        "polled every 50 ms.",
    ]
    if cpu is not None:
        lines += [
            "",
            f"Server CPU per answer (float32, one wrk connection, {WRK_SECONDS:g} s): {cpu[0]:.2f} ms in the "
            f"event loop's thread (HTTP, routing, the route), {cpu[1]:.2f} ms in the whole process (both cores).",
        ]
    lines += [
        "",
        f"### Sustained throughput, closed-loop clients ({args.per_level} requests per level; median of {args.repeats} runs)",
        "",
        "| clients | answers/s, batches <= 8 | p50 / p95 ms | refused | answers/s, no batching | p50 / p95 ms | refused "
        f"| answers/s, batches <= 8, wrk client ({WRK_SECONDS:g} s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in args.clients:
        b, u, w = load[c]["batched"], load[c]["unbatched"], wrk_load[c]
        lines.append(
            f"| {c} | {b['rps']:.1f} | {b['p50']:.0f} / {b['p95']:.0f} | {b['refused']:.0%} | "
            f"{u['rps']:.1f} | {u['p50']:.0f} / {u['p95']:.0f} | {u['refused']:.0%} | "
            + ("-" if w is None else f"{w:.1f}")
            + " |"
        )
    if 4 in load:
        ideal = 1000 / real["inference"]
        lines += [
            "",
            f"With 4 clients: {load[4]['batched']['rps']:.1f} answers/s (httpx clients), {load[4]['batched']['rps'] / ideal:.0%} of "
            f"1 / (the single-clip model call of the latency table, {real['inference']:.1f} ms) = {ideal:.1f}/s.",
        ]
    if four is not None:
        lines += [
            "",
            f"With 4 wrk connections, each run paired with a 1-connection run just before it ({args.repeats} pairs, "
            f"medians): {four['rps']:.1f} answers/s, {four['share']:.0%} of 1 / the single-clip model call of its pair.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a checkpoint to serve (default: a random whisper-tiny-dims 4-bit model)"
    )
    parser.add_argument("--threads", type=int, default=resolve_threads(0), help="QUADS_THREADS of the server")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests at real length")
    parser.add_argument("--padded-requests", type=int, default=30, help="sequential requests padded to 30 s")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--per-level", type=int, default=96, help="requests per concurrency level and run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per level (the median is reported)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or build_model(Path(tmp))
        text = report(args, model_path, three_second_clip())
    publish(text, args.out)


if __name__ == "__main__":
    main()
