"""Linear layers with their weights pre-packed for oneDNN: the served model's matrix products.

Why not ``nn.Linear``: torch's float32 ``F.linear`` calls MKL's sgemm, and MKL takes a generic
code path on AMD CPUs. On the development host (AMD EPYC, AVX512, 2 cores) a 2048^3 product ran
at 199 GFLOP/s through MKL and 483 GFLOP/s through oneDNN with the weight packed once in its
blocked layout, and the 3-s forward took 8.9 ms against 16.5 ms (``bench/bench_engines.py`` times
both side by side). In bfloat16, torch already uses oneDNN; packing once saves the per-call reorder.

``torch.ops.mkldnn._linear_pointwise`` and ``_reorder_linear_weight`` are the ops torch's own
compiler emits for CPU linear layers. They are not public API, but torch is pinned to one
version; ``pack_linear_layers`` checks them on a layer before swapping anything and keeps
``nn.Linear`` where they fail (a torch built without oneDNN, a CPU it does not support).
The answers are float32 results in a different summation order: within float rounding of
``nn.Linear`` (tests/service/test_onednn_linear.py).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

logger = logging.getLogger("service")


class OneDnnLinear(nn.Module):
    """Inference-only ``nn.Linear``: ``y = x W^T + b`` with W pre-packed for oneDNN, in W's dtype.

    Takes (..., in_features) in any float dtype: it is cast to the weight's dtype, as autocast
    would. Returns (..., out_features) in that dtype. No gradients.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.dtype = weight.dtype
        # An opaque oneDNN tensor (no storage): kept as a plain attribute, since buffers must
        # support .to(), state_dict() and deepcopy, which it does not.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.bias = None if linear.bias is None else linear.bias.detach().to(self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed_weight, self.bias, "none", [], "")

    def packed_tensors(self) -> list[Tensor]:
        """The tensors held outside ``parameters()``: ``core.checkpoint.HoldsPackedTensors``, so that
        ``Checkpoint.memory_bytes`` counts them."""
        return [self.packed_weight] + ([self.bias] if self.bias is not None else [])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}"


def onednn_linear_works(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU run ``OneDnnLinear`` in ``dtype`` and match ``nn.Linear``."""
    if not torch.backends.mkldnn.is_available():
        return False
    probe = nn.Linear(8, 4).to(dtype)
    x = torch.randn(2, 3, 8).to(dtype)
    try:
        with torch.inference_mode():
            got, expected = OneDnnLinear(probe)(x), probe(x)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return got.shape == expected.shape and bool(
        torch.allclose(got.float(), expected.float(), atol=1e-2 if dtype != torch.float32 else 1e-5)
    )


def pack_linear_layers(model: nn.Module) -> bool:
    """Replace every ``nn.Linear`` of ``model`` with a ``OneDnnLinear`` of the same dtype, in place.

    Returns whether it did; if oneDNN cannot run here the model is left as it was.
    """
    linears = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    if not linears:
        return False
    if not all(onednn_linear_works(dtype) for dtype in {child.weight.dtype for _, _, child in linears}):
        logger.warning("oneDNN linear layers are not available here: keeping torch's default kernels")
        return False
    for parent, name, child in linears:
        setattr(parent, name, OneDnnLinear(child))
    return True
