"""CROMA: contrastive radar-optical masked autoencoder (Fuller et al., NeurIPS 2023), torch only.

Owns: the CROMA architecture (S1 and S2 ViT encoders over 8x8 patches with 2-D ALiBi,
the radar-queries-optical cross-modal encoder, the GAP + FFN projections, the 1-layer
reconstruction decoder and the contrastive head with its radar/optical projections), its configurations
(``croma_base``, ``croma_large``, ``croma_micro``), random patch masking, and the
conversion from and to CROMA's *published* checkpoint layout.

Does not own: the losses (:mod:`reben_tools.learn.models.croma_losses`), reading archives,
training loops, run directories or the encoder registry (:mod:`reben_tools.learn.models.encoders`).

May import: torch, numpy and the standard library only.

Published layout (``CROMA_base.pt`` / ``CROMA_large.pt``, read by the reference
``use_croma.py`` and torchgeo's ``croma.py``): a dict with the keys ``s1_encoder``,
``s1_GAP_FFN``, ``s2_encoder``, ``s2_GAP_FFN`` and ``joint_encoder``, each a state dict.
The sub-modules below carry exactly those parameter names and shapes, e.g.
``s2_encoder.transformer.layers.3.0.to_qkv.weight`` (3D, D) or
``joint_encoder.layers.0.1.to_k.weight`` (D, D). Attention always has 16 heads in the
published models (the number is not stored in the weights).

Input (see ``docs/pretraining.md``): ``s1`` float32 (B, 2, H, W) as VV, VH and ``s2``
float32 (B, 12, H, W) in ESA order B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09,
B11, B12, with H = W a multiple of 8, each band scaled to [0, 1] by CROMA's rule
``clip((x - (mean - 2 std)) / (4 std), 0, 1)`` (:func:`croma_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PUBLISHED_PARTS = ("s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN", "joint_encoder")
"""Top-level keys of CROMA's published checkpoint, in the reference's order."""

S1_BANDS = ("VV", "VH")
"""Radar channels, in CROMA's order."""

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
"""Optical channels, in CROMA's order (SSL4EO-S12's 13 bands without the cirrus band B10)."""


@dataclass(frozen=True)
class CromaConfig:
    """Size of a CROMA model.

    Attributes:
        name: configuration name.
        dim: token width D of every encoder.
        depth: optical encoder depth; the radar and the cross-modal encoder have ``depth // 2``.
        heads: attention heads of the encoders (16 in the published models).
        patch_size: side of a square patch in pixels (8).
        image_size: side of the input in pixels (120 for reBEN).
        decoder_dim: decoder width.
        decoder_depth: decoder layers (1).
        decoder_heads: decoder attention heads (8 in the reference).
        ff_mult: FFN hidden width as a multiple of the width (4).
    """

    name: str
    dim: int
    depth: int
    heads: int = 16
    patch_size: int = 8
    image_size: int = 120
    decoder_dim: int = 512
    decoder_depth: int = 1
    decoder_heads: int = 8
    ff_mult: int = 4

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"{self.name}: widths must divide by the number of heads")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"{self.name}: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.depth < 2 or self.depth % 2:
            raise ValueError(f"{self.name}: depth must be even and >= 2, got {self.depth}")

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per image (225 for 120x120 and 8x8 patches)."""
        return self.grid**2

    def to_dict(self) -> dict:
        """JSON-ready dict (what checkpoints record)."""
        return asdict(self)


CONFIGS: dict[str, CromaConfig] = {
    "croma_base": CromaConfig("croma_base", dim=768, depth=12),
    "croma_large": CromaConfig("croma_large", dim=1024, depth=24),
    "croma_micro": CromaConfig("croma_micro", dim=64, depth=4, decoder_dim=64),
}
"""Known configurations. ``croma_micro`` keeps 16 heads so its exported encoders load into
the reference ``ViT`` (which fixes 16 heads), and trains on a CPU in minutes."""


def config_from_dict(data: Mapping) -> CromaConfig:
    """Rebuild a :class:`CromaConfig` from :meth:`CromaConfig.to_dict` output."""
    return CromaConfig(**{k: data[k] for k in CromaConfig.__dataclass_fields__ if k in data})


# --------------------------------------------------------------------------------------
# Input scaling and ALiBi
# --------------------------------------------------------------------------------------


def croma_scale(z: Tensor) -> Tensor:
    """CROMA's input scaling applied to z-scored bands.

    CROMA maps each band to [0, 1] with ``clip((x - (mean - 2 std)) / (4 std), 0, 1)``,
    which equals ``clip(z / 4 + 1/2, 0, 1)`` for ``z = (x - mean) / std``.

    Args:
        z: float tensor of z-scored bands, any shape.

    Returns:
        Tensor of the same shape and dtype, values in [0, 1].
    """
    return (z * 0.25 + 0.5).clamp(0.0, 1.0)


def alibi_slopes(heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al.), as CROMA uses them.

    For a power of two ``n`` the slopes are ``s, s^2, ..., s^n`` with ``s = 2^(-8/n)``;
    otherwise the slopes of the next lower power of two, then every other slope of the
    next higher one.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    lower = 2 ** math.floor(math.log2(heads))
    return power_of_two(lower) + alibi_slopes(2 * lower)[0::2][: heads - lower]


def alibi_2d(heads: int, grid: int) -> Tensor:
    """2-D ALiBi: ``-slope_h * ||p_i - p_j||`` between patch positions.

    Patches are numbered row-major (index ``row * grid + col``), as a
    ``(B, C, H, W) -> (B, H/8 * W/8, C*8*8)`` patchification numbers them.

    Returns:
        float32 tensor (heads, grid**2, grid**2).
    """
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    points = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    distance = torch.cdist(points, points)
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float64)
    return (-slopes[:, None, None] * distance[None]).to(torch.float32)


def select_bias(bias: Tensor, keep_queries: Tensor | None, keep_keys: Tensor | None) -> Tensor:
    """The ALiBi entries between the kept query and key positions of each sample.

    Args:
        bias: float tensor (heads, N, N).
        keep_queries: int64 tensor (B, Lq) of kept query positions, or None for all.
        keep_keys: int64 tensor (B, Lk) of kept key positions, or None for all.

    Returns:
        (1, heads, N, N) when both are None, else (B, heads, Lq, Lk).
    """
    if keep_queries is None and keep_keys is None:
        return bias.unsqueeze(0)
    n = bias.shape[-1]
    present = keep_queries if keep_queries is not None else keep_keys
    assert present is not None, "both None returned above"
    batch = present.shape[0]
    full = torch.arange(n, device=bias.device).expand(batch, n)
    q = full if keep_queries is None else keep_queries
    k = full if keep_keys is None else keep_keys
    return bias[:, q[:, :, None], k[:, None, :]].permute(1, 0, 2, 3)


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), channel-major within a patch (``c i j``)."""
    b, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


# --------------------------------------------------------------------------------------
# Building blocks (parameter names follow the published checkpoint)
# --------------------------------------------------------------------------------------


class FFN(nn.Module):
    """Pre-norm feed-forward block: ``input_norm``, ``net = [Linear, GELU, Dropout, Linear]``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(0.0), nn.Linear(dim * mult, dim))
        self.input_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_norm(x))


def _heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Pre-norm self-attention with an additive bias: ``input_norm``, ``to_qkv`` (no bias), ``to_out``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.input_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        q, k, v = self.to_qkv(self.input_norm(x)).chunk(3, dim=-1)
        q, k, v = (_heads(t, self.heads) for t in (q, k, v))
        bias = None if bias is None else bias.to(q.dtype)
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias)))


class CrossAttention(nn.Module):
    """Pre-norm cross-attention (one ``input_norm`` shared by queries and context):
    ``to_q``, ``to_k``, ``to_v`` (no bias), ``to_out``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.input_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, bias: Tensor) -> Tensor:
        x, context = self.input_norm(x), self.input_norm(context)
        q = _heads(self.to_q(x), self.heads)
        k = _heads(self.to_k(context), self.heads)
        v = _heads(self.to_v(context), self.heads)
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))))


class Transformer(nn.Module):
    """``layers.i = [Attention, FFN]`` with residuals, then ``norm_out``."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([Attention(dim, heads), FFN(dim, ff_mult)]) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        for attn, ffn in cast("Iterable[nn.ModuleList]", self.layers):  # ModuleList is not generic: say its items
            x = attn(x, bias) + x
            x = ffn(x) + x
        return self.norm_out(x)


class CrossTransformer(nn.Module):
    """``layers.i = [Attention, CrossAttention, FFN]`` with residuals, then ``norm_out``."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads), CrossAttention(dim, heads), FFN(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, self_bias: Tensor, cross_bias: Tensor) -> Tensor:
        for attn, cross, ffn in cast("Iterable[nn.ModuleList]", self.layers):  # ModuleList is not generic
            x = attn(x, self_bias) + x
            x = cross(x, context, cross_bias) + x
            x = ffn(x) + x
        return self.norm_out(x)


class ViTEncoder(nn.Module):
    """Patch embedding ``linear_input`` (C*p*p -> D) and a :class:`Transformer` ``transformer``."""

    def __init__(self, in_channels: int, config: CromaConfig, depth: int) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.linear_input = nn.Linear(in_channels * config.patch_size**2, config.dim)
        self.transformer = Transformer(config.dim, depth, config.heads, config.ff_mult)

    def forward(self, imgs: Tensor, bias: Tensor, keep: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, L, D) tokens; L = N, or the kept count when ``keep`` (B, L) is given."""
        x = self.linear_input(patchify(imgs, self.patch_size))
        if keep is not None:
            x = torch.gather(x, 1, keep[:, :, None].expand(-1, -1, x.shape[-1]))
        return self.transformer(x, bias)


def gap_ffn(dim: int) -> nn.Sequential:
    """The pooled-embedding projection ``[LayerNorm, Linear(D, 4D), GELU, Linear(4D, D)]``."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE style), float32 (grid**2, dim).

    The first half of the channels encodes the column, the second half the row; each half
    is ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/4))``.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def one(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one(cols), one(rows)], dim=1).to(torch.float32)


class Decoder(nn.Module):
    """1-layer reconstruction decoder over the joint tokens (both modalities' pixels).

    Joint tokens (at the radar's kept positions) are projected to ``decoder_dim``, the
    radar's masked positions get a learnt ``mask_token``, fixed 2-D sine-cosine positions
    are added, a transformer without ALiBi runs, and ``linear_output`` predicts each
    patch's 14 x p x p pixels: the 12 optical channels, then the 2 radar channels.
    """

    decoder_pos_embed: Tensor  # a buffer (registered in __init__)

    def __init__(self, config: CromaConfig) -> None:
        super().__init__()
        self.encoder_to_decoder = nn.Linear(config.dim, config.decoder_dim)
        self.decoder = Transformer(config.decoder_dim, config.decoder_depth, config.decoder_heads, config.ff_mult)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos_embed", sincos_2d(config.decoder_dim, config.grid)[None], persistent=False)
        self.linear_output = nn.Linear(config.decoder_dim, 14 * config.patch_size**2)

    def forward(self, joint: Tensor, restore: Tensor) -> Tensor:
        """(B, L, D) joint tokens, (B, N) radar ``ids_restore`` -> (B, N, 14*p*p) predictions."""
        x = self.encoder_to_decoder(joint)
        b, n = restore.shape
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, n - x.shape[1], -1)], dim=1)
        x = torch.gather(x, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        return self.linear_output(self.decoder(x + self.decoder_pos_embed.to(x.dtype)))


class ContrastiveHead(nn.Module):
    """CROMA's contrastive projection (``ContrastLossInput`` of the reference ``pretrain_croma.py``).

    ``radar_proj`` and ``optical_proj`` (``Linear(D, D)`` with bias) map the pooled
    ``*_GAP_FFN`` outputs into the contrastive space, where they are L2-normalised and compared
    by InfoNCE at the learnable inverse temperature ``exp(logit_scale)`` (``logit_scale``
    initialised to ``log(1 / 0.07)``, not capped). The projections are pretraining-only: they
    live in the pretraining checkpoint (``contrast``), not in CROMA's published layout, so the
    embeddings users probe (:meth:`CROMA.embed`, the ``*_GAP_FFN`` outputs) sit one layer
    before the contrastive space, as in the published models.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.radar_proj = nn.Linear(dim, dim)
        self.optical_proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, s1_gap: Tensor, s2_gap: Tensor) -> tuple[Tensor, Tensor]:
        """Projected, L2-normalised radar and optical embeddings, each float32 (B, D)."""
        return (
            F.normalize(self.radar_proj(s1_gap).float(), dim=-1),
            F.normalize(self.optical_proj(s2_gap).float(), dim=-1),
        )


# --------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------


@dataclass
class MaskInfo:
    """Random patch masking of one modality.

    Attributes:
        keep: int64 (B, L) kept positions, in random order.
        restore: int64 (B, N) inverse permutation (un-shuffles ``[kept, masked]``).
        mask: float32 (B, N), 1 where a patch is masked (to reconstruct), 0 where kept.
    """

    keep: Tensor
    restore: Tensor
    mask: Tensor


def random_masking(
    batch: int,
    num_patches: int,
    ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> MaskInfo:
    """Mask ``ratio`` of each sample's patches uniformly at random.

    Keeps ``int(num_patches * (1 - ratio))`` patches (56 of 225 at 0.75), as CROMA does.

    Raises:
        ValueError: ``ratio`` not in (0, 1) or nothing would be kept.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    keep_count = int(num_patches * (1 - ratio))
    if keep_count < 1:
        raise ValueError(f"mask ratio {ratio} keeps no patch of {num_patches}")
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device if generator else device).to(
        device
    )
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep_count] = 0
    return MaskInfo(keep=shuffle[:, :keep_count], restore=restore, mask=torch.gather(mask, 1, restore))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class CROMA(nn.Module):
    """CROMA encoders (published layout) and, with ``pretraining=True``, its decoder and contrastive head.

    Args:
        config: the size (see :data:`CONFIGS`).
        pretraining: also build ``decoder`` and ``contrast`` (not part of the published checkpoint).
    """

    attn_bias: Tensor  # a buffer (registered in __init__)

    def __init__(self, config: CromaConfig, pretraining: bool = False) -> None:
        super().__init__()
        self.config = config
        half = config.depth // 2
        self.s1_encoder = ViTEncoder(len(S1_BANDS), config, half)
        self.s1_GAP_FFN = gap_ffn(config.dim)
        self.s2_encoder = ViTEncoder(len(S2_BANDS), config, config.depth)
        self.s2_GAP_FFN = gap_ffn(config.dim)
        self.joint_encoder = CrossTransformer(config.dim, half, config.heads, config.ff_mult)
        self.register_buffer("attn_bias", alibi_2d(config.heads, config.grid), persistent=False)
        self.decoder = Decoder(config) if pretraining else None
        self.contrast = ContrastiveHead(config.dim) if pretraining else None

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self.config.dim

    def _check(self, name: str, x: Tensor, channels: int) -> None:
        size = self.config.image_size
        if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"{name} must be (B, {channels}, {size}, {size}), got {tuple(x.shape)}")

    def embed(self, s1: Tensor | None = None, s2: Tensor | None = None, tokens: bool = False) -> dict[str, Tensor]:
        """Pooled embeddings, as CROMA's reference forward computes them.

        Args:
            s1: float32 (B, 2, H, W) radar in [0, 1] (see :func:`croma_scale`), or None.
            s2: float32 (B, 12, H, W) optical in [0, 1], or None.
            tokens: also return the token sequences (``*_tokens``, (B, N, D)).

        Returns:
            ``{"s1": sar_GAP, "s2": optical_GAP, "joint": joint_GAP}`` (each (B, D)); a key is
            present only when its inputs are (``joint`` needs both).
        """
        if s1 is None and s2 is None:
            raise ValueError("embed needs s1, s2 or both")
        out: dict[str, Tensor] = {}
        bias = self.attn_bias.unsqueeze(0)
        if s1 is not None:
            self._check("s1", s1, len(S1_BANDS))
            s1_tokens = self.s1_encoder(s1, bias)
            out["s1"] = self.s1_GAP_FFN(s1_tokens.mean(dim=1))
        if s2 is not None:
            self._check("s2", s2, len(S2_BANDS))
            s2_tokens = self.s2_encoder(s2, bias)
            out["s2"] = self.s2_GAP_FFN(s2_tokens.mean(dim=1))
        if s1 is not None and s2 is not None:
            joint_tokens = self.joint_encoder(s1_tokens, s2_tokens, bias, bias)
            out["joint"] = joint_tokens.mean(dim=1)
        if tokens:
            if s1 is not None:
                out["s1_tokens"] = s1_tokens
            if s2 is not None:
                out["s2_tokens"] = s2_tokens
            if "joint" in out:
                out["joint_tokens"] = joint_tokens
        return out

    def forward(
        self, s1: Tensor, s2: Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """One pretraining forward pass with independent random masks per modality.

        Args:
            s1: float32 (B, 2, H, W) radar in [0, 1].
            s2: float32 (B, 12, H, W) optical in [0, 1].
            mask_ratio: fraction of each modality's patches hidden from the encoders.
            generator: random source of the masks (default: torch's global one).

        Returns:
            dict with ``s1_proj``, ``s2_proj`` (B, D) the L2-normalised contrastive projections
            of the pooled embeddings, ``logit_scale`` (scalar, ``exp`` of the learnt log-scale),
            ``pred`` (B, N, 14*p*p) decoder output, ``target`` (B, N, 14*p*p) the patchified
            ``[s2, s1]`` input, ``mask_s1`` and ``mask_s2`` (B, N) (1 = masked).
        """
        if self.decoder is None or self.contrast is None:
            raise RuntimeError("this CROMA was built without pretraining heads (pretraining=False)")
        self._check("s1", s1, len(S1_BANDS))
        self._check("s2", s2, len(S2_BANDS))
        b, n = s1.shape[0], self.config.num_patches
        m1 = random_masking(b, n, mask_ratio, s1.device, generator)
        m2 = random_masking(b, n, mask_ratio, s1.device, generator)
        s1_tokens = self.s1_encoder(s1, select_bias(self.attn_bias, m1.keep, m1.keep), m1.keep)
        s2_tokens = self.s2_encoder(s2, select_bias(self.attn_bias, m2.keep, m2.keep), m2.keep)
        s1_proj, s2_proj = self.contrast(self.s1_GAP_FFN(s1_tokens.mean(dim=1)), self.s2_GAP_FFN(s2_tokens.mean(dim=1)))
        joint = self.joint_encoder(
            s1_tokens,
            s2_tokens,
            select_bias(self.attn_bias, m1.keep, m1.keep),
            select_bias(self.attn_bias, m1.keep, m2.keep),
        )
        pred = self.decoder(joint, m1.restore)
        target = patchify(torch.cat([s2, s1], dim=1), self.config.patch_size)
        return {
            "s1_proj": s1_proj,
            "s2_proj": s2_proj,
            "logit_scale": self.contrast.logit_scale.exp(),
            "pred": pred,
            "target": target,
            "mask_s1": m1.mask,
            "mask_s2": m2.mask,
        }


# --------------------------------------------------------------------------------------
# Published checkpoint layout
# --------------------------------------------------------------------------------------
