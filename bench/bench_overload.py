"""The shape of ``POST /intent`` under overload, measured with wrk against a real ``quads-serve``.

At each connection count, ``wrk -t1`` posts a 1.5-s WAV as a raw body, every connection sending
again as soon as it is answered (503s included), for ``--seconds``. wrk reports one latency
distribution for answers and refusals together, so the latency of *admitted* requests (200) is
read from the server's ``quads_http_request_duration_seconds`` histogram (head received to last
byte sent), as the difference of two scrapes around the level: the p99 is the upper edge of
the bucket where 99% is reached. The report gives answered requests/s, refused/s, the answered
rate as a share of the best level (the peak), and those percentiles. Client and server share
the host, as the issue's measurement did.

    python -m bench.bench_overload --threads 2 --out bench/results/overload.md

Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import tempfile
from pathlib import Path

import httpx
import soundfile

from bench.bench_service import Server, three_second_clip
from bench.report_output import publish
from bench.wrk import run_wrk, write_post_script, wrk_available
from service.cpu import resolve_threads

CLIP_SECONDS = 1.5
DEFAULT_MODEL = Path("models/quads-fsc-4bit.safetensors")


def short_clip(seconds: float = CLIP_SECONDS) -> bytes:
    """The benchmark's 3-s espeak-ng clip, cut to ``seconds``."""
    samples, rate = soundfile.read(io.BytesIO(three_second_clip()), dtype="int16")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples[: int(seconds * rate)], rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def duration_buckets(url: str, status: str) -> dict[float, float]:
    """Cumulative counts of ``quads_http_request_duration_seconds`` for POST /intent answers with ``status``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = re.compile(
        r'^quads_http_request_duration_seconds_bucket\{le="([^"]+)",route="/intent",status="' + status + r'"\} (\S+)$',
        re.M,
    )
    return {float(le): float(count) for le, count in pattern.findall(text)}


def bucket_percentile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[int, float]:
    """(answers, upper bucket edge in ms where the q-th percentile falls) of the answers between two scrapes."""
    counts = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if total == 0:
        return 0, float("nan")
    edge = next(le for le, count in counts.items() if count >= q / 100 * total)
    return int(total), 1000 * edge


def run_level(url: str, script: Path, connections: int, seconds: int) -> dict:
    before = {status: duration_buckets(url, status) for status in ("200", "503")}
    run = run_wrk(url, script, connections, seconds)
    after = {status: duration_buckets(url, status) for status in ("200", "503")}
    return {
        "connections": connections,
        "answered_rps": (run.requests - run.non_2xx) / run.seconds,
        "refused_rps": run.non_2xx / run.seconds,
        "timeouts": run.timeouts,
        "admitted": {q: bucket_percentile(before["200"], after["200"], q) for q in (50, 99)},
        "refusals": {q: bucket_percentile(before["503"], after["503"], q) for q in (50, 99)},
    }


def report(args, levels: list[dict], clip: bytes, compute_path: str) -> str:
    peak = max(level["answered_rps"] for level in levels)
    lines = [
        "## Overload: wrk against POST /intent",
        "",
        f"- Host: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}; wrk (-t1) shares "
        "the host with the server; loopback HTTP. Latency percentiles: the server's histogram (bucket upper edges).",
        f"- Model: {args.model}. Clip: {CLIP_SECONDS:g}-s 16 kHz WAV ({len(clip)} bytes), raw body. "
        f"{args.seconds} s per level; every connection sends again as soon as it is answered.",
        "- Server settings: "
        + (", ".join(f"`{item}`" for item in args.env) or "the defaults")
        + " (`QUADS_MAX_QUEUE`, `QUADS_MAX_BATCH_SIZE`, `QUADS_REFUSALS_PER_SECOND`, `QUADS_PRECISION`); "
        f"compute path chosen at start: {compute_path}.",
        "",
        "| connections | answered/s | share of peak | refused (503)/s | admitted p50 / p99 ms, at most "
        "| refused p50 / p99 ms, at most | wrk timeouts |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        ok, no = level["admitted"], level["refusals"]
        lines.append(
            f"| {level['connections']} | {level['answered_rps']:.0f} | {level['answered_rps'] / peak:.0%} | "
            f"{level['refused_rps']:.0f} | {ok[50][1]:.0f} / {ok[99][1]:.0f} | {no[50][1]:.0f} / {no[99][1]:.0f} | {level['timeouts']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=resolve_threads(0), help="QUADS_THREADS of the server")
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 16, 32, 64, 256])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per level")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="QUADS_X=V",
        help="a server setting, e.g. QUADS_REFUSALS_PER_SECOND=1000000 to refuse without pacing",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if not wrk_available():
        parser.exit(2, "bench_overload.py needs wrk (Debian: apt-get install wrk)\n")

    clip = short_clip()
    settings = {"QUADS_PRECISION": "auto", **dict(item.split("=", 1) for item in args.env)}  # the service's default
    with tempfile.TemporaryDirectory() as tmp, Server(args.model, args.threads, **settings) as server:
        compute_path = httpx.get(f"{server.url}/v1/model", timeout=10).json()["compute_path"]
        script = write_post_script(clip, Path(tmp))
        levels = [run_level(server.url, script, c, args.seconds) for c in args.connections]
    text = report(args, levels, clip, compute_path)
    publish(text, args.out)


if __name__ == "__main__":
    main()
