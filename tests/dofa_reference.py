"""DOFA's published checkpoint layout, hand-built checkpoints in it, and an independent
implementation of the published forward pass, for the DOFA tests.

The reference is written from the published forward pass (zhu-xlab/DOFA
``wave_dynamic_layer.py`` + ``OFAViT.forward_features``; torchgeo ``dofa.py``) with plain
tensor algebra: explicit layer norms, softmax attention, erf-GELU and a reshape-based
strided convolution, none of the module's classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- the published layout


def published_layout(embed: int, depth: int, patch: int = 16, grid: int = 14) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a published DOFA encoder state dict (v1, patch 16), written out by hand.

    Generator: wv_planes 128, 128 weight tokens, one torch TransformerEncoderLayer (d 128,
    ff 2048); fc_weight maps 128 -> patch*patch*embed. Then cls/pos tokens and timm ViT blocks.
    """
    g = "patch_embed.weight_generator."
    t = g + "transformer_encoder.layers.0."
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, embed),
        "pos_embed": (1, grid * grid + 1, embed),
        g + "weight_tokens": (128, 128),
        g + "bias_token": (1, 128),
        t + "self_attn.in_proj_weight": (384, 128),
        t + "self_attn.in_proj_bias": (384,),
        t + "self_attn.out_proj.weight": (128, 128),
        t + "self_attn.out_proj.bias": (128,),
        t + "linear1.weight": (2048, 128),
        t + "linear1.bias": (2048,),
        t + "linear2.weight": (128, 2048),
        t + "linear2.bias": (128,),
        t + "norm1.weight": (128,),
        t + "norm1.bias": (128,),
        t + "norm2.weight": (128,),
        t + "norm2.bias": (128,),
        g + "fc_weight.weight": (patch * patch * embed, 128),
        g + "fc_weight.bias": (patch * patch * embed,),
        g + "fc_bias.weight": (embed, 128),
        g + "fc_bias.bias": (embed,),
        "patch_embed.fclayer.w1.weight": (128, 128),
        "patch_embed.fclayer.w1.bias": (128,),
        "patch_embed.fclayer.w2.weight": (128, 128),
        "patch_embed.fclayer.w2.bias": (128,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (embed,),
                b + "norm1.bias": (embed,),
                b + "attn.qkv.weight": (3 * embed, embed),
                b + "attn.qkv.bias": (3 * embed,),
                b + "attn.proj.weight": (embed, embed),
                b + "attn.proj.bias": (embed,),
                b + "norm2.weight": (embed,),
                b + "norm2.bias": (embed,),
                b + "mlp.fc1.weight": (4 * embed, embed),
                b + "mlp.fc1.bias": (4 * embed,),
                b + "mlp.fc2.weight": (embed, 4 * embed),
                b + "mlp.fc2.bias": (embed,),
            }
        )
    return shapes


def hand_built_checkpoint(embed: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout, plus the pretraining extras published files carry
    (``mask_token``, ``norm``, ``projector``) and no ``fc_norm`` / ``head``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in published_layout(embed, depth).items():
        if name.endswith(("norm1.weight", "norm2.weight")):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 2 and not name.endswith(("_tokens", "_token")):
            value = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            value = 0.3 * torch.randn(shape, generator=gen)
        state[name] = value
    state["mask_token"] = torch.randn(1, 1, embed, generator=gen)
    state["norm.weight"] = torch.ones(embed)
    state["norm.bias"] = torch.zeros(embed)
    state["projector.weight"] = torch.randn(embed, embed, generator=gen)
    state["projector.bias"] = torch.zeros(embed)
    return state


# --------------------------------------------------------------------------- independent reference


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _mha(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor, heads: int
) -> torch.Tensor:
    """x (..., N, W) -> (..., N, W) softmax attention with packed qkv weights (3W, W)."""
    width = x.shape[-1]
    hd = width // heads
    qkv = x @ w.T + b
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:-1], heads, hd).transpose(-3, -2)

    q, k, v = split(q), split(k), split(v)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (att @ v).transpose(-3, -2).reshape(*x.shape)
    return out @ wo.T + bo


def reference_features(
    sd: dict[str, torch.Tensor], x: torch.Tensor, waves: list[float], heads: int, patch: int = 16
) -> torch.Tensor:
    """DOFA's published ``forward_features`` (global pool) on a published-layout state dict."""
    embed = sd["cls_token"].shape[-1]
    bands = len(waves)
    # wavelength embedding: 1-D sin-cos of (wavelength in µm * 1000), width 128, sines first
    pos = torch.tensor(waves, dtype=torch.float32) * 1000
    omega = 1.0 / 10000 ** (torch.arange(64, dtype=torch.float32) / 64.0)
    ang = pos[:, None] * omega[None]
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], 1)
    p = "patch_embed.fclayer."
    hid = torch.relu(emb @ sd[p + "w1.weight"].T + sd[p + "w1.bias"])
    emb = emb + torch.relu(hid @ sd[p + "w2.weight"].T + sd[p + "w2.bias"])
    # weight generator: [128 weight tokens; band tokens; bias token] -> one post-norm layer
    g = "patch_embed.weight_generator."
    t = g + "transformer_encoder.layers.0."
    seq = torch.cat([sd[g + "weight_tokens"], emb, sd[g + "bias_token"]], 0)
    a = _mha(
        seq,
        sd[t + "self_attn.in_proj_weight"],
        sd[t + "self_attn.in_proj_bias"],
        sd[t + "self_attn.out_proj.weight"],
        sd[t + "self_attn.out_proj.bias"],
        4,
    )
    h = _ln(seq + a, sd[t + "norm1.weight"], sd[t + "norm1.bias"], 1e-5)
    ff = (
        _gelu(h @ sd[t + "linear1.weight"].T + sd[t + "linear1.bias"]) @ sd[t + "linear2.weight"].T
        + sd[t + "linear2.bias"]
    )
    h = _ln(h + ff, sd[t + "norm2.weight"], sd[t + "norm2.bias"], 1e-5)
    flat = (h[128:-1] + emb) @ sd[g + "fc_weight.weight"].T + sd[g + "fc_weight.bias"]  # (C, p*p*E)
    bias = (h[-1] @ sd[g + "fc_bias.weight"].T + sd[g + "fc_bias.bias"]) * 0.01
    kernel = flat.reshape(-1).view(embed, bands, patch, patch) * 0.01  # published .view order
    # strided convolution, padding 1, as patches x kernels
    xp = F.pad(x, (1, 1, 1, 1))
    n_h = (x.shape[2] + 2 - patch) // patch + 1
    n_w = (x.shape[3] + 2 - patch) // patch + 1
    xp = xp[:, :, : n_h * patch, : n_w * patch]
    cells = xp.reshape(x.shape[0], bands, n_h, patch, n_w, patch).permute(0, 2, 4, 1, 3, 5)
    tokens = cells.reshape(x.shape[0], n_h * n_w, -1) @ kernel.reshape(embed, -1).T + bias
    # position embeddings (bicubic resize of the stored grid when the grid differs)
    pe = sd["pos_embed"]
    side = round(math.sqrt(pe.shape[1] - 1))
    grid_pe = pe[:, 1:]
    if (n_h, n_w) != (side, side):
        img = grid_pe.reshape(1, side, side, embed).permute(0, 3, 1, 2)
        img = F.interpolate(img, size=(n_h, n_w), mode="bicubic", align_corners=False)
        grid_pe = img.permute(0, 2, 3, 1).reshape(1, n_h * n_w, embed)
    z = torch.cat([(sd["cls_token"] + pe[:, :1]).expand(x.shape[0], 1, embed), tokens + grid_pe], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        y = _ln(z, sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        z = z + _mha(
            y,
            sd[b + "attn.qkv.weight"],
            sd[b + "attn.qkv.bias"],
            sd[b + "attn.proj.weight"],
            sd[b + "attn.proj.bias"],
            heads,
        )
        y = _ln(z, sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        z = (
            z
            + _gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]) @ sd[b + "mlp.fc2.weight"].T
            + sd[b + "mlp.fc2.bias"]
        )
    pooled = z[:, 1:].mean(1)
    w = sd.get("fc_norm.weight", torch.ones(embed))
    bn = sd.get("fc_norm.bias", torch.zeros(embed))
    return _ln(pooled, w, bn, 1e-6)
