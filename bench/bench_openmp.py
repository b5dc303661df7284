"""Why the service runs all torch work in one thread with a short OpenMP spin: the same forward under
each OpenMP wait policy, with one OpenMP team or two.

libgomp reads its policy once, when torch loads, so each case runs in a fresh process. In each,
a 3-s clip's forward is timed 200 times with a 5-ms gap (as between sequential requests):

* one team: the checkpoint is loaded and run in the same worker thread (what the service does);
* two teams: the main thread loads it and runs one forward (its own team), a worker runs the rest
  (what the service did before: more OpenMP threads than cores, so libgomp throttles spinning).

    python -m bench.bench_openmp --threads 2 --out bench/results/openmp.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench.report_output import publish

DEFAULT_MODEL = Path("models/quads-fsc-4bit.safetensors")
POLICIES = {
    "libgomp default (spin ~300k)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000 (quads-serve)": {"GOMP_SPINCOUNT": "10000"},
}

CHILD = """
import json, statistics, sys, threading, time
import torch
from core.checkpoint import load_checkpoint

model_path, threads, two_teams = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "two"
mel = torch.randn(1, 80, 300)

def load():
    torch.set_num_threads(threads)
    model = load_checkpoint(model_path).model
    with torch.inference_mode():
        model(mel)
    return model

def timed(model, out):
    torch.set_num_threads(threads)
    seconds = []
    with torch.inference_mode():
        for i in range(210):
            start = time.perf_counter()
            model(mel)
            if i >= 10:
                seconds.append(time.perf_counter() - start)
            time.sleep(0.005)
    out.append(1000 * statistics.median(seconds))

out = []
if two_teams:
    model = load()
    worker = threading.Thread(target=timed, args=(model, out))
else:
    worker = threading.Thread(target=lambda: timed(load(), out))
worker.start()
worker.join()
print(json.dumps(out[0]))
"""


def forward_ms(model: Path, threads: int, teams: str, env: dict[str, str]) -> float:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(threads), teams],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="each case is run this many times, in turns; the median is kept"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    cases = [(policy, teams) for policy in POLICIES for teams in ("one", "two")]
    runs: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for policy, teams in cases:
            runs[(policy, teams)].append(forward_ms(args.model, args.threads, teams, POLICIES[policy]))
    median = {case: sorted(values)[len(values) // 2] for case, values in runs.items()}
    lines = [
        "## OpenMP wait policy and teams: one 3-s forward (median ms)",
        "",
        f"- Host: {platform.machine()}, {os.cpu_count()} CPUs visible, {args.threads} torch threads; model {args.model.name}; "
        f"median of 200 forwards with 5-ms gaps, median of {args.rounds} processes per case.",
        "",
        "| policy | one team (load and run in one thread) | two teams (load in main, run in a worker) |",
        "| --- | ---: | ---: |",
    ]
    for policy in POLICIES:
        lines.append(f"| {policy} | {median[(policy, 'one')]:.1f} | {median[(policy, 'two')]:.1f} |")
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
