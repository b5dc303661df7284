"""Measurements taken on a running ``quads-serve`` for ``bench_service.py``, each paired with its
reference in the same minute.

The development host changes speed by up to 30% from one minute to the next, so a ratio whose
two sides are timed minutes apart says more about the host than about the service. Here each
ratio is taken block by block, both sides back to back, and the median of the blocks' ratios is
reported:

* ``paired_model_call``: the model call inside the service (the server's ``timing_ms.inference``
  over sequential requests) against a bare forward of the same model in this process;
* ``paired_share``: answers/s at N wrk connections against 1 / the model call measured over one
  wrk connection just before (the server's own histogram of the inference stage);
* ``server_cpu_per_request``: the server's CPU per answer, event-loop thread and whole process.
"""

from __future__ import annotations

import copy
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bench.wrk import run_wrk, write_post_script, wrk_available
from core.audio import decode_audio, log_mel_spectrogram
from service.precision import prepare_model

_INFERENCE_STAGE = re.compile(r'^quads_stage_duration_seconds_(sum|count)\{stage="inference"\} (\S+)$', re.M)


def inference_stage_totals(url: str) -> dict[str, float]:
    """The server's cumulative ``sum`` (seconds) and ``count`` of model calls, from /metrics."""
    return {
        kind: float(value) for kind, value in _INFERENCE_STAGE.findall(httpx.get(f"{url}/metrics", timeout=10).text)
    }


def paired_model_call(
    url: str, checkpoint, clip: bytes, threads: int, rounds: int = 5, per_block: int = 40
) -> dict[str, float]:
    """Medians (ms) of the service's model call and of a bare forward prepared as the float32
    service prepares it (oneDNN-packed linear layers), in alternating blocks, and the median of
    the blocks' ratios (service / bare)."""
    torch.set_num_threads(threads)
    model = copy.deepcopy(checkpoint.model)
    prepare_model(model, "float32")
    mel = log_mel_spectrogram(decode_audio(clip), checkpoint.dims.n_mels)[None]
    service, bare, ratios = [], [], []
    with httpx.Client(base_url=url, timeout=120) as client, torch.inference_mode():
        for _ in range(10):
            model(mel)
            client.post("/intent", content=clip, headers={"Content-Type": "audio/wav"})
        for _ in range(rounds):
            calls = []
            for _ in range(per_block):
                answer = client.post("/intent", content=clip, headers={"Content-Type": "audio/wav"})
                calls.append(answer.raise_for_status().json()["timing_ms"]["inference"])
            forwards = []
            for _ in range(per_block):
                start = time.perf_counter()
                model(mel)
                forwards.append(1000 * (time.perf_counter() - start))
                time.sleep(0.005)  # the gap between sequential requests, as the service sees them
            service += calls
            bare += forwards
            ratios.append(statistics.median(calls) / statistics.median(forwards))
    return {"service": statistics.median(service), "bare": statistics.median(bare), "ratio": statistics.median(ratios)}


def paired_share(url: str, clip: bytes, clients: int, seconds: float, repeats: int) -> dict[str, float] | None:
    """Answers/s at ``clients`` wrk connections, and their share of 1 / the model call measured over
    one connection just before, per pair; medians of ``repeats`` pairs. None without wrk."""
    if not wrk_available():
        return None
    rates, shares = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = write_post_script(clip, Path(tmp))
        for _ in range(repeats):
            before = inference_stage_totals(url)
            run_wrk(url, script, 1, 2.0)
            after = inference_stage_totals(url)
            call = (after["sum"] - before["sum"]) / (after["count"] - before["count"])  # seconds, one clip per batch
            run = run_wrk(url, script, clients, seconds)
            rate = (run.requests - run.non_2xx) / run.seconds
            rates.append(rate)
            shares.append(rate * call)
    return {"rps": statistics.median(rates), "share": statistics.median(shares)}


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of process ``pid`` has used, by thread id (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def server_cpu_per_request(pid: int, url: str, clip: bytes, seconds: float) -> tuple[float, float] | None:
    """(event-loop thread, whole process) CPU ms per answer while one wrk connection posts ``clip``
    back to back; None without wrk or /proc. The event loop runs in the process's main thread."""
    if not wrk_available() or not Path(f"/proc/{pid}/task").exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = write_post_script(clip, Path(tmp))
        before = thread_cpu_seconds(pid)
        run = run_wrk(url, script, 1, seconds)
        after = thread_cpu_seconds(pid)
    answers = run.requests - run.non_2xx
    loop = after[pid] - before[pid]
    process = sum(after[t] - before.get(t, 0.0) for t in after)
    return 1000 * loop / answers, 1000 * process / answers
