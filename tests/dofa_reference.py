"""DOFA's published checkpoint layout, hand-built checkpoints in it, and a reference forward
pass written from DOFA's *current* published code, for the DOFA tests.

Written from, and only from, the published code (it never imports ``reben_tools``):

* ``wave_dynamic_layer.py`` of github.com/zhu-xlab/DOFA (the version its README says the new
  weights need) and ``torchgeo/models/dofa.py`` after torchgeo PR #2256 ("DOFA: fix bug in patch
  embedding"): wavelengths (µm) x 1000 -> 1-D sin-cos (width 128, sines then cosines) -> FCResLayer
  ``x + relu(w2(relu(w1 x)))`` -> a ``torch.nn.TransformerEncoder`` of one post-norm GELU layer
  (4 heads, unbatched ``(S, 128)`` sequence ``[128 weight tokens; bands; bias token]``) ->
  ``fc_weight(out[128:-1] + bands)`` viewed **(C, p, p, D) and permuted to (D, C, p, p)**,
  ``fc_bias(out[-1])`` viewed (D,), both times the scaler 0.01 -> ``F.conv2d`` with stride p and
  padding 1 -> tokens ``flatten(2).transpose(1, 2)``.
* ``OFAViT.forward_features`` of ``models_dwv.py``: ``x + pos_embed[:, 1:]``, class token
  ``cls_token + pos_embed[:, :1]`` prepended, timm ``Block``s (pre-norm, eps 1e-6, qkv bias,
  exact GELU), mean of the patch tokens, ``fc_norm`` (absent from published files, so identity).

The generator runs through torch's own ``nn.TransformerEncoder`` (the class the published code
instantiates, loaded from the state dict under its published names); the ViT blocks are written
out with plain tensor algebra (timm is not a dependency).

The published forward pass only runs at the pretraining size (its ``pos_embed`` has 14 x 14 + 1
rows). For other sizes the published pipelines either resize the image to 224 (DOFA's demo and
torchgeo's transforms; :func:`resize_input`) or resample ``pos_embed`` when loading the weights
(torchgeo/terratorch-style loaders, timm's ``resample_abs_pos_embed``; :func:`resample_pos_embed`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GENERATOR_WIDTH = 128
WEIGHT_TOKENS = 128
SCALER = 0.01

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


# --------------------------------------------------------------------------- inputs of other sizes


def resize_input(x: torch.Tensor, side: int = 224) -> torch.Tensor:
    """The published preprocessing for other sizes: bilinear resize of the image to ``side``."""
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def resample_pos_embed(sd: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` whose ``pos_embed`` patch rows are resampled bicubically to ``grid x grid``
    (``align_corners=False``), class-token row kept: what a loader does for another input size."""
    pe = sd["pos_embed"]
    side = math.isqrt(pe.shape[1] - 1)
    img = pe[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    rows = img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return {**sd, "pos_embed": torch.cat([pe[:, :1], rows], dim=1)}


# --------------------------------------------------------------------------- the published forward pass


def _wave_embedding(waves: list[float] | torch.Tensor) -> torch.Tensor:
    """``get_1d_sincos_pos_embed_from_grid_torch(128, wvs * 1000)``: (C, 128), sines then cosines."""
    pos = torch.as_tensor(waves, dtype=torch.float32).reshape(-1) * 1000
    omega = torch.arange(GENERATOR_WIDTH // 2, dtype=torch.float32) / (GENERATOR_WIDTH / 2.0)
    omega = 1.0 / 10000**omega
    out = torch.einsum("m,d->md", pos, omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _generator_encoder(sd: dict[str, torch.Tensor]) -> nn.TransformerEncoder:
    """The published generator's ``nn.TransformerEncoder`` (one post-norm GELU layer, 4 heads),
    loaded from ``sd`` under the published names."""
    layer = nn.TransformerEncoderLayer(
        d_model=GENERATOR_WIDTH, nhead=4, activation="gelu", norm_first=False, batch_first=False, dropout=0.0
    )
    encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
    prefix = "patch_embed.weight_generator.transformer_encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
    return encoder.eval()


def dynamic_kernels(
    sd: dict[str, torch.Tensor], waves: list[float] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Dynamic_MLP_OFA``'s convolution weight (D, C, p, p) and bias (D,), scaler applied."""
    embed = sd["cls_token"].shape[-1]
    g = "patch_embed.weight_generator."
    f = "patch_embed.fclayer."
    waves_emb = _wave_embedding(waves)
    hidden = F.relu(F.linear(waves_emb, sd[f + "w1.weight"], sd[f + "w1.bias"]))
    waves_emb = waves_emb + F.relu(F.linear(hidden, sd[f + "w2.weight"], sd[f + "w2.bias"]))
    seq = torch.cat([sd[g + "weight_tokens"], waves_emb, sd[g + "bias_token"]], dim=0)
    out = _generator_encoder(sd)(seq)
    weight = F.linear(out[WEIGHT_TOKENS:-1] + waves_emb, sd[g + "fc_weight.weight"], sd[g + "fc_weight.bias"])
    bias = F.linear(out[-1], sd[g + "fc_bias.weight"], sd[g + "fc_bias.bias"])
    bands = waves_emb.shape[0]
    patch = math.isqrt(weight.shape[1] // embed)
    kernel = weight.view(bands, patch, patch, embed).permute(3, 0, 1, 2)
    return kernel * SCALER, bias.view(embed) * SCALER


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _timm_block(x: torch.Tensor, sd: dict[str, torch.Tensor], b: str, heads: int) -> torch.Tensor:
    """timm ``Block``: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, softmax(q k^T / sqrt(hd)) v."""
    batch, tokens, dim = x.shape
    hd = dim // heads
    y = _layer_norm(x, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
    qkv = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
    q, k, v = qkv.reshape(batch, tokens, 3, heads, hd).permute(2, 0, 3, 1, 4)
    attn = torch.softmax((q * hd**-0.5) @ k.transpose(-2, -1), dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
    x = x + F.linear(y, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
    y = _layer_norm(x, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
    y = F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
    return x + F.linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])


def reference_tokens(sd: dict[str, torch.Tensor], x: torch.Tensor, waves: list[float], heads: int) -> torch.Tensor:
    """All tokens after the last block, (B, 1 + h*w, D), class token first."""
    kernel, bias = dynamic_kernels(sd, waves)
    patch = kernel.shape[-1]
    tokens = F.conv2d(x, kernel, bias=bias, stride=patch, padding=1, dilation=1).flatten(2).transpose(1, 2)
    pe = sd["pos_embed"]
    if pe.shape[1] != tokens.shape[1] + 1:
        raise ValueError(f"pos_embed has {pe.shape[1]} rows for {tokens.shape[1]} patches: resize or resample first")
    z = tokens + pe[:, 1:]
    cls = (sd["cls_token"] + pe[:, :1]).expand(x.shape[0], -1, -1)
    z = torch.cat([cls, z], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        z = _timm_block(z, sd, f"blocks.{i}.", heads)
    return z


def reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor, waves: list[float], heads: int) -> torch.Tensor:
    """``OFAViT.forward_features`` with ``global_pool=True`` on a published-layout state dict: (B, D)."""
    embed = sd["cls_token"].shape[-1]
    pooled = reference_tokens(sd, x, waves, heads)[:, 1:].mean(dim=1)
    w = sd.get("fc_norm.weight", torch.ones(embed))
    b = sd.get("fc_norm.bias", torch.zeros(embed))
    return _layer_norm(pooled, w, b)
