"""Bit widths and codebooks: the one place that says how a weight matrix is stored at ``b`` bits.

* 1..8 bits (``CODEBOOK_BITS``): a codebook of ``2**b`` float32 centroids and one b-bit code per
  weight, the codes densely bit-packed into bytes (LSB first);
* 16 bits: float16; 32 bits: float32.

Widths 9..15 would need codes wider than a byte for no gain over float16, so nothing accepts them.
Biases, LayerNorms and other 1-D tensors are never quantized (``is_quantizable``).

torch is imported inside the functions that compute, so that the service's settings can check a
width without loading torch (a second of start-up for ``quads-serve --help``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import Tensor

CODEBOOK_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
SUPPORTED_BITS = (*CODEBOOK_BITS, 16, 32)

Storage = Literal["codebook", "float16", "float32"]


def check_bits(bits: int, what: str = "bits") -> int:
    """``bits`` if it is a supported width, else a ValueError that lists the supported ones."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{what} must be one of {list(SUPPORTED_BITS)}, got {bits!r}")
    return bits


def storage(bits: int) -> Storage:
    """How weight matrices are stored at ``bits``: a codebook (<= 8), float16 (16) or float32 (32)."""
    check_bits(bits)
    return "codebook" if bits in CODEBOOK_BITS else ("float16" if bits == 16 else "float32")


def is_quantizable(tensor: Tensor) -> bool:
    """Weight matrices and conv kernels are quantized; biases and LayerNorms stay float32."""
    return tensor.dim() > 1


@dataclass(frozen=True)
class Codebook:
    """One weight matrix at ``bits`` <= 8: ``centroids`` (2**bits,) float32 and ``codes`` (numel,) int64.

    ``centroids[codes].reshape(shape)`` is the weight.
    """

    centroids: Tensor
    codes: Tensor
    bits: int

    def __post_init__(self):
        if self.bits not in CODEBOOK_BITS:
            raise ValueError(f"codebooks hold 1..8 bits, got {self.bits}")
        if self.centroids.shape != (2**self.bits,):
            raise ValueError(f"{tuple(self.centroids.shape)} centroids for {self.bits} bits; need ({2**self.bits},)")

    def weight(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        return self.centroids.float()[self.codes].reshape(shape)

    @classmethod
    def of_snapped(cls, weight: Tensor, bits: int) -> Codebook:
        """The codebook of a weight that already holds at most 2**bits distinct values.

        For a model quantized elsewhere; a ``KMeansQuantizer`` hands over its own codebooks.
        Unused slots repeat the largest value.
        """
        import torch

        values = torch.unique(weight.detach().float())
        k = 2**bits
        if values.numel() > k:
            raise ValueError(
                f"tensor has {values.numel()} distinct values, more than 2**{bits}={k}; "
                "quantize it first (training.quantize.quantize_model)"
            )
        codes = torch.searchsorted(values, weight.detach().float().reshape(-1))
        return cls(torch.cat([values, values[-1:].expand(k - values.numel())]), codes, bits)


def packed_size(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Densely pack integer codes in [0, 2**bits) into a 1-D uint8 tensor of ceil(n * bits / 8) bytes."""
    import torch

    if bits not in CODEBOOK_BITS:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    codes = codes.reshape(-1).to(torch.uint8)
    bitplanes = (codes[:, None] >> torch.arange(bits, dtype=torch.uint8)) & 1  # (n, bits), LSB first
    flat = torch.nn.functional.pad(bitplanes.reshape(-1), (0, (-codes.numel() * bits) % 8))
    byte_weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (flat.view(-1, 8) * byte_weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of ``pack_codes``: the first ``count`` codes as a 1-D int64 tensor."""
    import torch

    if packed.numel() != packed_size(count, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {count} codes of {bits} bits")
    flat = ((packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[: count * bits]
    return (flat.view(count, bits).long() << torch.arange(bits)).sum(dim=1)
