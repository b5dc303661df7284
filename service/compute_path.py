"""The compute path for this host, chosen at start: the fastest way to run the model here that stays correct.

Kernel speed depends on the CPU more than on anything we control: on the AMD development host
oneDNN's pre-packed float32 linear layers ran the 3-s forward 1.9x faster than torch's default
(MKL) ones, and on an Intel Xeon with AMX they gained nothing (28.4 against 26.9 ms,
``bench/bench_engines.py``); bfloat16 pays only where the CPU has AMX or AVX512-BF16. So with
``QUADS_PRECISION=auto`` (the default) the service times every candidate path on this CPU, on a
3-s input, and takes the fastest whose probabilities stay within ``TOLERANCE`` of the plain
float32 model's (bfloat16 moved no held-out probability by more than 0.03:
``bench/check_precision.py``). A fixed ``QUADS_PRECISION`` keeps its dtype, and only the kernels
(oneDNN packing or torch's) are measured. The choice and the timings are logged, and
``/v1/model`` and ``quads_model_info`` name the path.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from core.audio import FRAMES_PER_SECOND
from core.cpu_features import native_bfloat16
from service.precision import compute_context, prepare_model

TOLERANCE = 0.05  # largest change of any probability against float32 that a path may make
PROBE_SECONDS = 3.0  # the clip length the paths are timed on: a typical command
REPEATS = 7


@dataclass(frozen=True)
class ComputePath:
    """A compute dtype and whether its linear layers are pre-packed for oneDNN."""

    dtype: str
    onednn: bool = True

    @property
    def name(self) -> str:
        return self.dtype if self.dtype == "int8" else f"{self.dtype}-{'onednn' if self.onednn else 'torch'}"


@dataclass
class PathChoice:
    path: ComputePath
    milliseconds: dict[str, float] = field(default_factory=dict)  # median forward per path measured
    rejected: dict[str, str] = field(default_factory=dict)  # path -> why it was not correct enough

    def describe(self) -> str:
        if not self.milliseconds:
            return f"{self.path.name} (the only candidate)"
        times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(self.milliseconds.items(), key=lambda kv: kv[1]))
        rejected = "".join(f"; {name} rejected: {why}" for name, why in self.rejected.items())
        return f"{self.path.name}, the fastest correct path on this CPU ({times} per {PROBE_SECONDS:g}-s forward{rejected})"


def candidate_paths(precision: str, bfloat16_hardware: bool | None = None) -> list[ComputePath]:
    """The paths ``precision`` allows: ``auto`` is float32, plus bfloat16 where the CPU has it."""
    if precision == "int8":
        return [ComputePath("int8", onednn=False)]
    if precision == "auto":
        hardware = native_bfloat16() if bfloat16_hardware is None else bfloat16_hardware
        dtypes = ["float32", "bfloat16"] if hardware else ["float32"]
    else:
        dtypes = [precision]
    return [ComputePath(dtype, onednn) for dtype in dtypes for onednn in (True, False)]


@torch.inference_mode()
def choose_compute_path(
    model: nn.Module, precision: str, *, repeats: int = REPEATS, candidates: list[ComputePath] | None = None
) -> PathChoice:
    """Time each candidate on copies of ``model`` (float32, as loaded) and pick the fastest correct one."""
    candidates = candidate_paths(precision) if candidates is None else candidates
    if len(candidates) == 1:
        return PathChoice(candidates[0])
    generator = torch.Generator().manual_seed(0)
    frames = int(PROBE_SECONDS * FRAMES_PER_SECOND)
    probe = torch.randn(2, model.dims.n_mels, frames, generator=generator)  # two clips: a batch, as served
    reference = model.eval()(probe)[1].float().softmax(-1)
    choice = PathChoice(candidates[0])
    for path in candidates:
        served = copy.deepcopy(model)
        prepare_model(served, path.dtype, onednn=path.onednn)
        with compute_context(path.dtype):
            change = float((served(probe)[1].float().softmax(-1) - reference).abs().max())
            if change > TOLERANCE:
                choice.rejected[path.name] = f"a probability moved by {change:.3f} (> {TOLERANCE})"
                continue
            one = probe[:1]
            served(one)  # warm-up: first calls allocate and pick kernels
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                served(one)
                times.append(time.perf_counter() - start)
        choice.milliseconds[path.name] = 1000 * statistics.median(times)
    fastest = min(choice.milliseconds, key=choice.milliseconds.get)
    choice.path = next(p for p in candidates if p.name == fastest)
    return choice
