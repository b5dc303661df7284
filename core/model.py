"""A Whisper-compatible audio encoder that runs at the clip's real length, and the intent classifier.

Parameter names follow openai-whisper's ``AudioEncoder`` so its checkpoints map one-to-one.
Unlike Whisper, inputs are not padded to 30 s: the positional table is sliced to the input
length, and a batch of clips of different lengths carries a padding mask so that every clip's
output is the same as if it were run alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelDims:
    n_mels: int = 80
    n_ctx: int = 1500  # max encoder positions: 30 s of audio after the stride-2 conv
    n_state: int = 384
    n_head: int = 6
    n_layer: int = 4
    n_mlp: int = 0  # MLP width; 0 means 4 * n_state, as in Whisper

    def __post_init__(self):
        if self.n_mlp == 0:
            object.__setattr__(self, "n_mlp", 4 * self.n_state)
        if self.n_state % self.n_head:
            raise ValueError(f"n_state={self.n_state} is not divisible by n_head={self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)


WHISPER_TINY = ModelDims(n_mels=80, n_ctx=1500, n_state=384, n_head=6, n_layer=4)
WHISPER_BASE = ModelDims(n_mels=80, n_ctx=1500, n_state=512, n_head=8, n_layer=6)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal positional table, (length, channels)."""
    log_timescale_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def encoder_lengths(mel_lengths: Tensor) -> Tensor:
    """Encoder positions produced by ``mel_lengths`` frames (the second conv has stride 2)."""
    return (mel_lengths + 1) // 2


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, n_state); attn_mask: (B, 1, 1, T) bool, True where a key may be attended."""
        B, T, C = x.shape
        q, k, v = (
            p(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        # SDPA's default scale 1/sqrt(d_head) equals Whisper's d_head**-0.25 applied to q and k.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_ln(x), attn_mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_state, dims.n_state, kernel_size=3, stride=2, padding=1)
        # Recomputed from dims, so it is not part of the state dict (nor of checkpoints).
        self.register_buffer("positional_embedding", sinusoids(dims.n_ctx, dims.n_state), persistent=False)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.n_state, dims.n_head, dims.n_mlp) for _ in range(dims.n_layer)
        )
        self.ln_post = nn.LayerNorm(dims.n_state)

    def forward(self, mel: Tensor, mel_lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """mel: (B, n_mels, T) zero-padded past each clip's length; mel_lengths: (B,) or None (all T).

        Returns (x, mask): x is (B, ceil(T/2), n_state); mask is (B, ceil(T/2)) bool, True at
        real positions, or None when no lengths were given.
        """
        x = F.gelu(self.conv1(mel))
        mask = None
        if mel_lengths is not None:
            # Zero conv1's output past each clip's end, so conv2 sees there the same zeros its
            # padding gives a clip run alone; otherwise the last position would depend on the batch.
            frame_mask = torch.arange(mel.shape[-1], device=mel.device) < mel_lengths[:, None]
            x = x * frame_mask[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', n_state)
        T = x.shape[1]
        if T > self.dims.n_ctx:
            raise ValueError(f"input has {T} positions; this encoder takes at most {self.dims.n_ctx} (30 s)")
        x = x + self.positional_embedding[:T]
        attn_mask = None
        if mel_lengths is not None:
            mask = torch.arange(T, device=mel.device) < encoder_lengths(mel_lengths)[:, None]
            attn_mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_post(x), mask


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over time of x (B, T, C) at positions where mask (B, T) is True; all of them if None."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class IntentClassifier(nn.Module):
    def __init__(self, dims: ModelDims, n_labels: int):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.head = nn.Linear(dims.n_state, n_labels)

    def forward(self, mel: Tensor, mel_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """mel: (B, n_mels, T); mel_lengths: (B,) or None. Returns (embedding (B, n_state), logits (B, n_labels))."""
        x, mask = self.encoder(mel, mel_lengths)
        embedding = masked_mean(x, mask)
        return embedding, self.head(embedding)
