"""Compute accounting: parameters and multiply-accumulates of one forward pass, counted by torch."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from core.audio import FRAMES_PER_SECOND, N_FRAMES


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_gmacs(model: nn.Module, seconds: float | None = None, frames: int | None = None) -> float:
    """GMACs (1e9 multiply-accumulates) of one forward pass on one clip of ``seconds`` (or ``frames``).

    Counted with ``torch.utils.flop_counter`` (FLOPs / 2). Attention runs through the math
    backend while counting because the fused CPU kernels are not registered with the counter.
    """
    if frames is None:
        frames = N_FRAMES if seconds is None else max(1, round(seconds * FRAMES_PER_SECOND))
    dims = model.dims
    mel = torch.zeros(1, dims.n_mels, frames)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(mel)
    return counter.get_total_flops() / 2 / 1e9
