"""Load and soak test of POST /intent: N requests at concurrency C over loopback HTTP.

Reports latency percentiles (p50/p95/p99/max) overall and per status, the count of each status
and transport error, and throughput. When the server's process id is known, it also reports
the server's resident memory through the run: VmRSS from /proc/<pid>/status, and RssAnon, its
heap part. File-backed pages such as torch's libraries come and go with the host's page cache;
a leak does not. Writes Markdown to stdout and, with ``--out``, to a file. The run is bounded:
at most ``--requests`` requests and ``--max-seconds``.

    # against a running server (give --pid to follow its memory)
    python -m bench.load_test --url http://127.0.0.1:8000 --pid 1234 -n 2000 -c 8
    # start quads-serve on 127.0.0.1 with a model (default: random whisper-tiny dims, 4-bit)
    python -m bench.load_test --model models/quads-fsc-4bit.safetensors -n 2000 -c 8
    # soak: N requests, memory after a warm-up vs at the end; exit status 1 on errors or growth
    python -m bench.load_test --soak 3000 -c 4 --out bench/soak.md
    # overload: a short queue and many clients; expect quick 503s
    python -m bench.load_test -n 500 -c 32 --env QUADS_MAX_QUEUE=2 --env QUADS_MAX_BATCH_SIZE=1

The client and the server share the host's CPUs; on a small host the client's own work is part
of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import soundfile

MiB = 1024 * 1024
MEMORY_SAMPLES = 10  # readings per run
# The soak passes if anonymous RSS grew by at most this over the second half of the run (after
# the warm-up, allocator pools and caches have settled; a leak keeps growing).
SOAK_GROWTH_TOLERANCE_BYTES = 4 * MiB


class Memory(NamedTuple):
    """Resident memory of a process, bytes: all of it, and its anonymous (heap) part."""

    rss: int
    anon: int


def read_memory(pid: int) -> Memory:
    """VmRSS and RssAnon of process ``pid`` (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return Memory(*(int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "RssAnon")))  # reported in kB


@dataclass
class LoadResult:
    """What a run observed. Status keys are HTTP codes ("200", "503") or transport errors ("ReadTimeout")."""

    requested: int
    concurrency: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)  # status -> seconds per request
    first_answer: dict[str, tuple[dict[str, str], bytes]] = field(default_factory=dict)  # status -> (headers, body)
    answers: Counter = field(default_factory=Counter)  # 200 bodies' (intent, confidence to 4 places) -> count
    memory: list[tuple[int, Memory]] = field(default_factory=list)  # (requests completed, memory), after the warm-up
    memory_before_warmup: Memory | None = None

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def counts(self) -> dict[str, int]:
        return {status: len(v) for status, v in sorted(self.latencies.items())}

    @property
    def errors(self) -> int:
        """Requests that did not get a 200."""
        return self.completed - len(self.latencies.get("200", []))

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentiles_ms(self, status: str | None = None) -> dict[str, float]:
        """p50/p95/p99/max in ms, over one status or (None) every request."""
        values = self.latencies.get(status, []) if status else [x for v in self.latencies.values() for x in v]
        if not values:
            return {}
        ms = 1000 * np.asarray(values)
        return {
            "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max()),
        }

    def anon_growth_second_half(self) -> int | None:
        """Anonymous RSS at the end minus halfway through the measured requests (bytes)."""
        if len(self.memory) < 2:
            return None
        end_count, end = self.memory[-1]
        _, middle = min(self.memory, key=lambda sample: abs(sample[0] - end_count / 2))
        return end.anon - middle.anon

    def record(self, status: str, seconds: float, headers: dict[str, str], body: bytes) -> None:
        self.latencies.setdefault(status, []).append(seconds)
        self.first_answer.setdefault(status, (headers, body))
        if status == "200":
            try:
                answer = json.loads(body)
                self.answers[(answer["intent"], round(answer["confidence"], 4))] += 1
            except (ValueError, KeyError, TypeError):
                self.answers[("unreadable 200 body", 0.0)] += 1


async def run_load(
    url: str,
    clip: bytes | list[bytes],
    requests: int,
    concurrency: int,
    *,
    content_type: str = "audio/wav",
    warmup: int = 0,
    max_seconds: float = 600.0,
    timeout: float = 60.0,
    pid: int | None = None,
) -> LoadResult:
    """POST ``clip`` to ``url``/intent ``requests`` times from ``concurrency`` closed-loop clients
    (a list of clips: each request sends the next one, in turn).

    ``warmup`` requests go first, the same way, and are not counted. No request starts later
    than ``max_seconds`` after the call. With ``pid``, the server's memory is read before the
    warm-up and at about ``MEMORY_SAMPLES`` points of the run.
    """
    result = LoadResult(requested=requests, concurrency=concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": content_type}
    memory_every = max(1, requests // MEMORY_SAMPLES)
    clips = [clip] if isinstance(clip, bytes) else clip
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def drive(count: int, deadline: float, measured: LoadResult | None) -> None:
            """``count`` requests from ``concurrency`` closed-loop clients, recorded in ``measured``."""
            started = 0

            async def client_loop() -> None:
                nonlocal started
                while started < count and time.perf_counter() < deadline:
                    body = clips[started % len(clips)]
                    started += 1
                    t0 = time.perf_counter()
                    try:
                        response = await client.post("/intent", content=body, headers=headers)
                        status, answer_headers, body = (
                            str(response.status_code),
                            dict(response.headers),
                            response.content,
                        )
                    except httpx.HTTPError as e:
                        status, answer_headers, body = type(e).__name__, {}, str(e).encode()
                    if measured is None:
                        continue
                    measured.record(status, time.perf_counter() - t0, answer_headers, body)
                    if pid is not None and (measured.completed % memory_every == 0 or measured.completed == count):
                        measured.memory.append((measured.completed, read_memory(pid)))

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))

        deadline = time.perf_counter() + max_seconds
        if pid is not None:
            result.memory_before_warmup = read_memory(pid)
        # The warm-up runs at the same concurrency, so that every batch size has been seen.
        await drive(warmup, deadline, None)
        if pid is not None:
            result.memory.append((0, read_memory(pid)))
        start = time.perf_counter()
        await drive(requests, deadline, result)
        result.seconds = time.perf_counter() - start
    return result


def markdown(result: LoadResult, context: list[str], soak: bool = False) -> str:
    """The report: context lines, the latency table, and the memory table when memory was read."""
    stopped_early = result.completed < result.requested
    lines = [
        "## POST /intent load test" + (" (soak)" if soak else ""),
        "",
        *[f"- {line}" for line in context],
        f"- Requests: {result.completed} of {result.requested} at concurrency {result.concurrency} in "
        f"{result.seconds:.1f} s: **{result.throughput:.1f} req/s**"
        + (" (stopped early: time limit)" if stopped_early else ""),
        "- Answers: "
        + ", ".join(f"{status}: {count}" for status, count in result.counts.items())
        + f"; not 200: **{result.errors}**",
        "",
        "| answers | count | p50 ms | p95 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for status in [None, *result.counts]:
        p = result.percentiles_ms(status)
        count = result.completed if status is None else result.counts[status]
        if p:
            lines.append(
                f"| {status or 'all'} | {count} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | {p['max']:.1f} |"
            )
    if len(result.answers) > 1:
        lines += ["", f"- Distinct 200 answers (intent, confidence): {dict(result.answers.most_common(5))}"]
    if result.memory:
        before, first, last = result.memory_before_warmup, result.memory[0][1], result.memory[-1][1]
        lines += [
            "",
            "### Server resident memory",
            "",
            f"- VmRSS: {before.rss / MiB:.1f} MiB before the warm-up, **{first.rss / MiB:.1f} MiB** after it (start), "
            f"**{last.rss / MiB:.1f} MiB** at the end ({(last.rss - first.rss) / MiB:+.1f} MiB).",
            f"- RssAnon (heap): {before.anon / MiB:.1f} MiB before the warm-up, **{first.anon / MiB:.1f} MiB** at the start, "
            f"**{last.anon / MiB:.1f} MiB** at the end ({(last.anon - first.anon) / MiB:+.1f} MiB; "
            f"{result.anon_growth_second_half() / MiB:+.1f} MiB over the second half).",
            "",
            "| requests done | VmRSS MiB | RssAnon MiB |",
            "| ---: | ---: | ---: |",
            *[f"| {count} | {m.rss / MiB:.1f} | {m.anon / MiB:.1f} |" for count, m in result.memory],
        ]
    return "\n".join(lines) + "\n"


def soak_verdict(result: LoadResult) -> tuple[bool, str]:
    """Passed when every request got a 200 and anonymous RSS stopped growing (second half within the tolerance)."""
    growth = result.anon_growth_second_half()
    problems = []
    if result.errors or result.completed < result.requested:
        problems.append(f"{result.errors} answers other than 200, {result.requested - result.completed} not sent")
    if growth is not None and growth > SOAK_GROWTH_TOLERANCE_BYTES:
        problems.append(
            f"anonymous RSS grew {growth / MiB:.1f} MiB over the second half (tolerance {SOAK_GROWTH_TOLERANCE_BYTES / MiB:.0f} MiB)"
        )
    if problems:
        return False, "Soak FAILED: " + "; ".join(problems) + "."
    return True, "Soak passed: no errors" + (
        ", and the resident memory stopped growing." if growth is not None else "."
    )


def default_clip() -> bytes:
    from bench_service import three_second_clip  # noqa: PLC0415 - a sibling script

    return three_second_clip()


def clips_of_lengths(clip: bytes, count: int, shortest: float = 0.5, longest: float = 20.0) -> list[bytes]:
    """``count`` WAVs of evenly spaced lengths from ``shortest`` to ``longest`` seconds, the clip
    repeated or cut to each, in a shuffled (seeded) order."""
    samples, rate = soundfile.read(io.BytesIO(clip), dtype="int16")
    lengths = np.linspace(shortest, longest, count)
    np.random.default_rng(0).shuffle(lengths)
    out = []
    for seconds in lengths:
        n = int(seconds * rate)
        buffer = io.BytesIO()
        soundfile.write(buffer, np.resize(samples, n), rate, format="WAV", subtype="PCM_16")
        out.append(buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--model",
        type=Path,
        help="start quads-serve on 127.0.0.1 with this checkpoint (default: a random whisper-tiny-dims 4-bit model)",
    )
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, to follow its memory")
    parser.add_argument("--threads", type=int, default=1, help="QUADS_THREADS of a server this script starts")
    parser.add_argument("--env", action="append", default=[], metavar="QUADS_X=V", help="more settings for that server")
    parser.add_argument("-n", "--requests", type=int, default=500)
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--soak", type=int, metavar="N", help="soak mode: N requests, memory through the run, verdict")
    parser.add_argument("--warmup", type=int, help="requests before measuring (default 10, or N/10 in soak mode)")
    parser.add_argument("--clip", type=Path, help="audio file to send (default: a 3-s 16 kHz espeak-ng WAV)")
    parser.add_argument(
        "--lengths",
        type=int,
        metavar="N",
        help="send N lengths of the default clip in turn (0.5-20 s): clips of many sizes, as real traffic has",
    )
    parser.add_argument("--max-seconds", type=float, default=600, help="start no request after this long")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    requests = args.soak or args.requests
    warmup = args.warmup if args.warmup is not None else (requests // 10 if args.soak else 10)
    if not 1 <= requests <= 100_000 or not 1 <= args.concurrency <= 1024:
        parser.error("keep it bounded: 1-100000 requests at a concurrency of 1-1024")
    if args.lengths and args.clip:
        parser.error("--lengths varies the default clip; it cannot be combined with --clip")
    clip = args.clip.read_bytes() if args.clip else default_clip()
    media = {".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
    content_type = media.get(args.clip.suffix.lower(), "audio/wav") if args.clip else "audio/wav"
    described = f"{args.clip.name if args.clip else '3-s 16 kHz mono 16-bit WAV (espeak-ng)'}, {len(clip)} bytes"
    if args.lengths:
        clip = clips_of_lengths(clip, args.lengths)
        described = (
            f"16 kHz mono 16-bit WAVs (espeak-ng, repeated) of {args.lengths} lengths from 0.5 to 20 s, sent in turn"
        )
    context = [
        f"Host: {platform.machine()}, {os.cpu_count()} CPUs; client and server on one host, loopback HTTP, httpx.",
        f"Clip: {described}, raw {content_type} body; {warmup} warm-up requests first, not counted.",
    ]

    def run(url: str, pid: int | None) -> LoadResult:
        return asyncio.run(
            run_load(
                url,
                clip,
                requests,
                args.concurrency,
                content_type=content_type,
                warmup=warmup,
                max_seconds=args.max_seconds,
                pid=pid,
            )
        )

    if args.url:
        context.insert(0, f"Target: {args.url}" + (f" (pid {args.pid})" if args.pid else ""))
        result = run(args.url, args.pid)
    else:
        from bench_service import Server, build_model  # noqa: PLC0415 - a sibling script

        env = dict(item.split("=", 1) for item in args.env)
        with tempfile.TemporaryDirectory() as tmp:
            model = args.model or build_model(Path(tmp))
            with Server(model, args.threads, **env) as server:
                settings = ", ".join(f"{k}={v}" for k, v in env.items())
                context.insert(
                    0,
                    f"Target: quads-serve started by this script, model {model.name}, "
                    f"QUADS_THREADS={args.threads}" + (f", {settings}" if settings else ""),
                )
                result = run(server.url, server.process.pid)

    text = markdown(result, context, soak=bool(args.soak))
    passed = True
    if args.soak:
        passed, verdict = soak_verdict(result)
        text += f"\n{verdict}\n"
    print(text)
    if args.out:
        from core.tensor_files import atomic_write  # noqa: PLC0415

        atomic_write(args.out, lambda path: path.write_text(text))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
