"""Building blocks shared by the encoders: stochastic depth, norms, patch embedding, transformer blocks.

Owns: Encoder (the encoder interface), DropPath, drop_path_rates, LayerNorm2d, PatchEmbed, Mlp, Attention,
TransformerBlock, init_transformer.
Does not own: whole encoders and their registry (backbones.py), classifiers and fusion (models.py).
May import: torch; reben_tools.format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reben_tools.format.bands import OUTPUT_SIZE


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples while training.

    Surviving samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic-depth rates growing linearly from 0 to ``rate`` over ``blocks`` blocks."""
    if blocks <= 1:
        return [rate] * blocks
    return [rate * i / (blocks - 1) for i in range(blocks)]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Encoder(nn.Module):
    """Base of all encoders: ``forward(x: (B, C, H, W)) -> (B, num_features)``."""

    num_features: int
    in_channels: int


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> tokens ``(B, N, dim)``.

    A side that ``patch`` does not divide is zero-padded on the right/bottom (zero is the
    band mean after normalisation), so no pixel is dropped.
    """

    def __init__(self, in_channels: int, dim: int, patch: int, image_size: int = OUTPUT_SIZE) -> None:
        super().__init__()
        if patch < 1 or patch > image_size:
            raise ValueError(f"patch size must be in 1..{image_size}, got {patch}")
        self.patch = patch
        self.grid = math.ceil(image_size / patch)
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-x.shape[-2]) % self.patch, (-x.shape[-1]) % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_transformer(m: nn.Module) -> None:
    """ViT-style init for ``module.apply``: truncated-normal (std 0.02) Linear weights, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
