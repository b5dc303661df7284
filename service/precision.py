"""The compute dtypes the engine offers, and how each prepares the model and runs it.

* ``float32``: the model as loaded, its linear weights pre-packed for oneDNN
  (``service.onednn_linear``: 1.9x faster than torch's default MKL kernels on the AMD host,
  ``bench/bench_engines.py``); float32 results, within rounding of the unpacked model.
* ``bfloat16``: matrix products in bfloat16 (linear and conv weights cast once, the linear ones
  pre-packed; torch autocast keeps LayerNorm, softmax and the pooling in float32). Faster only
  on CPUs with AMX or AVX512-BF16 (``core.cpu_features.native_bfloat16``).
* ``int8``: the linear layers become dynamic int8 layers (weights int8 per output channel,
  activations quantized per call; torch's fbgemm/x86 kernels, which use AVX512-VNNI where the CPU
  has it). The convolutions, LayerNorms and attention stay float32.

Every path first stacks each attention layer's q, k, v projections into one layer
(``service.served_attention``). ``bench/check_precision.py`` measures how many held-out intents
each path changes.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from service.onednn_linear import pack_linear_layers
from service.served_attention import fuse_attention_projections

COMPUTE_DTYPES = ("float32", "bfloat16", "int8")


def check_compute_dtype(compute_dtype: str) -> str:
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    return compute_dtype


def prepare_model(model: nn.Module, compute_dtype: str, onednn: bool = True) -> None:
    """Make ``model`` compute in ``compute_dtype``, in place, once (call it in the compute thread);
    ``onednn``: pre-pack the float32/bfloat16 linear layers for oneDNN (else torch's own kernels;
    ``service.compute_path`` measures which is faster on this CPU)."""
    fuse_attention_projections(model)
    if compute_dtype == "float32":
        if onednn:
            pack_linear_layers(model)
    elif compute_dtype == "bfloat16":
        # Autocast would cast these weights on every call, to the same values: the answers are
        # the same bit for bit, without the per-call casts.
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.to(torch.bfloat16)
        if onednn:
            pack_linear_layers(model)
    elif compute_dtype == "int8":
        with warnings.catch_warnings():
            # torch 2.11 marks eager-mode quantization deprecated (in favour of torchao, whose CPU
            # int8 kernels are these same fbgemm/x86 ones); torch is pinned, so it is here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def batches_exactly(compute_dtype: str) -> bool:
    """Whether a padded, masked batch gives each clip the answer it gets alone.

    Not for int8: dynamic quantization picks one activation scale per call, from every clip in
    it, so a clip's answer would depend on its neighbours. The engine runs int8 clips one by one.
    """
    return compute_dtype != "int8"


def compute_context(compute_dtype: str) -> contextlib.AbstractContextManager:
    """What the model call runs under: autocast for bfloat16, nothing else otherwise."""
    if compute_dtype == "bfloat16":
        return torch.autocast("cpu", torch.bfloat16)
    return contextlib.nullcontext()
