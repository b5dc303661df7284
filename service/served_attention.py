"""The served model's self-attention: one projection for queries, keys and values.

``core.model.MultiHeadAttention`` keeps Whisper's three projections (its parameter names map
one-to-one onto Whisper checkpoints, and training needs nothing else). At serving time the three
are one ``nn.Linear`` of three times the width: one matrix product instead of three on the same
input, which ``service.precision`` then packs for oneDNN or quantizes to int8 like any other
linear layer. Whisper's key projection has no bias, so the fused bias is zero there.

The attention itself runs as two batched matrix products with a float32 softmax between them
(``short_attention``) for clips of at most ``SHORT_ATTENTION_POSITIONS`` encoder positions
(3.6 s of audio), and as torch's ``scaled_dot_product_attention`` beyond. torch's fused kernel
is built for long sequences. On the AMD development host, from 2 to 3.5 s, the two products took
0.37-0.63x its time in bfloat16 and 0.76-0.84x in float32, and batches of 4 and 8 clips gained
as much; at 4 s and beyond they often took 2x or more (``bench/bench_attention.py``, table in
docs/benchmarks.md). Below 2 s in bfloat16 they lose a few microseconds a layer, which is not
worth a second threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model import MultiHeadAttention

SHORT_ATTENTION_POSITIONS = 180


class FusedQkvAttention(nn.Module):
    """``MultiHeadAttention`` with its q, k, v projections stacked into one ``qkv`` layer. Inference only."""

    def __init__(self, attention: MultiHeadAttention):
        super().__init__()
        self.n_head = attention.n_head
        n_state = attention.query.in_features
        self.qkv = nn.Linear(n_state, 3 * n_state)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]))
            self.qkv.bias.copy_(torch.cat([attention.query.bias, torch.zeros(n_state), attention.value.bias]))
        self.qkv.to(attention.query.weight.dtype)
        self.out = attention.out

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, n_state); attn_mask: (B, 1, 1, T) bool, True where a key may be attended."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        if T <= SHORT_ATTENTION_POSITIONS:
            y = short_attention(q, k, v, attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


def short_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(D)) v for (B, H, T, D) inputs, the softmax in float32 (as SDPA's)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores.masked_fill_(~attn_mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def fuse_attention_projections(model: nn.Module) -> int:
    """Replace every ``MultiHeadAttention`` of ``model`` with a ``FusedQkvAttention``, in place; returns how many."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, MultiHeadAttention)
    ]
    for parent, name, child in found:
        setattr(parent, name, FusedQkvAttention(child))
    return len(found)
