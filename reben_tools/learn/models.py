"""Multi-label classifiers for 120x120 reBEN patches, on torch alone.

Every encoder takes a float32 batch ``(B, C, 120, 120)`` of normalised bands
(any ``C``) and returns features ``(B, num_features)``; a classifier adds
dropout and a linear head giving logits ``(B, num_classes)`` (apply a sigmoid
for per-class probabilities; train with BCE-with-logits).

Architectures (SPEC section 10 lists the published model zoo):

- ResNet (``resnet18``, ``resnet50``, ``resnet101``; ``resnet_micro`` for CPU tests),
- ViT (``vit_base_patch8`` = ViT-B/8, ``vit_small_patchP``, ``vit_tiny_patchP``, ``vit_micro_patchP``;
  any patch size ``P``; a side that ``P`` does not divide is zero-padded on the right/bottom),
- ConvNeXt V2 (``convnextv2_base``, ``convnextv2_tiny``, ``convnextv2_atto``, ``convnext_micro``),
- MLP-Mixer (``mixer_base_patch16`` = Mixer-B/16, ``mixer_small_patchP``, ``mixer_micro_patchP``),
- ``timm:NAME``: any timm model, when timm is importable (not a dependency).

Fusion of modalities (:func:`build_model`, ``fusion=``):

- ``"early"``: the bands are concatenated along channels into one encoder (the published recipe);
- ``"late"``: one encoder per modality (the S1 channels and the S2 channels of the band list),
  features concatenated before the shared dropout + linear head.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reben_tools.format.bands import ALL_BANDS, OUTPUT_SIZE, resolve_bands
from reben_tools.format.labels import NUM_CLASSES

FUSIONS = ("early", "late")


# --------------------------------------------------------------------------- building blocks


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


def _drop_path_rates(rate: float, blocks: int) -> list[float]:
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


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, drop_path: float) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(self.shortcut(x) + self.drop_path(out), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, drop_path: float) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        nn.init.zeros_(self.bn3.weight)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(self.shortcut(x) + self.drop_path(out), inplace=True)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(Encoder):
    """ResNet encoder (He et al. 2016) for any channel count.

    Stem: 7x7 stride-2 convolution and 3x3 stride-2 max-pool (120 -> 30 pixels), then four
    stages (30, 15, 8, 4 pixels) and global average pooling.

    Args:
        in_channels: input channels ``C``.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        bottleneck: bottleneck blocks (ResNet-50/101) or basic blocks (ResNet-18/34).
        widths: per-stage block widths (``(64, 128, 256, 512)`` for the standard models).
        stem_width: channels of the stem convolution.
        drop_path: largest stochastic-depth rate (linear over blocks).
    """

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[int] = (3, 4, 6, 3),
        bottleneck: bool = True,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        block = Bottleneck if bottleneck else BasicBlock
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        rates = iter(_drop_path_rates(drop_path, sum(layers)))
        stages, ch = [], stem_width
        for i, (n, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(ch, width, stride, next(rates)))
                ch = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


# --------------------------------------------------------------------------- ViT


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


class VisionTransformer(Encoder):
    """ViT (Dosovitskiy et al. 2021): patch tokens + class token, pre-norm blocks; features = class token.

    Args:
        in_channels: input channels ``C``.
        patch_size: side of the square patches in pixels (8 for ViT-B/8: 15x15 tokens at 120x120).
        dim, depth, heads, mlp_ratio: transformer width, blocks, attention heads, MLP expansion.
        drop_path: largest stochastic-depth rate (linear over blocks).
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 8,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        image_size: int = OUTPUT_SIZE,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size, image_size)
        tokens = self.patch_embed.grid**2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, heads, mlp_ratio, r) for r in _drop_path_rates(drop_path, depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_transformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))[:, 0]


def _init_transformer(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- MLP-Mixer


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mlp = Mlp(tokens, token_hidden)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mlp = Mlp(dim, channel_hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.channel_mlp(self.norm2(x)))


class MlpMixer(Encoder):
    """MLP-Mixer (Tolstikhin et al. 2021); features = mean over tokens.

    Args:
        in_channels: input channels ``C``.
        patch_size: patch side (16 for Mixer-B/16: 8x8 tokens at 120x120 after padding to 128).
        dim, depth: token width and number of mixer blocks.
        token_hidden, channel_hidden: hidden widths of the token- and channel-mixing MLPs.
        drop_path: largest stochastic-depth rate (linear over blocks).
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        token_hidden: int = 384,
        channel_hidden: int = 3072,
        drop_path: float = 0.0,
        image_size: int = OUTPUT_SIZE,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size, image_size)
        tokens = self.patch_embed.grid**2
        self.blocks = nn.Sequential(
            *[MixerBlock(tokens, dim, token_hidden, channel_hidden, r) for r in _drop_path_rates(drop_path, depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim
        self.apply(_init_transformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.patch_embed(x))).mean(dim=1)


# --------------------------------------------------------------------------- ConvNeXt V2


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channels-last ``(B, H, W, C)`` tensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dwconv(x).permute(0, 2, 3, 1)
        out = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(out)))))
        return x + self.drop_path(out.permute(0, 3, 1, 2))


class ConvNeXt(Encoder):
    """ConvNeXt V2 (Woo et al. 2023) encoder: 4x4 stem (120 -> 30 pixels), four stages (30, 15, 7, 3).

    Args:
        in_channels: input channels ``C``.
        depths: blocks per stage (``(3, 3, 27, 3)`` for -B).
        dims: per-stage widths (``(128, 256, 512, 1024)`` for -B).
        drop_path: largest stochastic-depth rate (linear over blocks).
    """

    def __init__(
        self,
        in_channels: int,
        depths: Sequence[int] = (3, 3, 27, 3),
        dims: Sequence[int] = (128, 256, 512, 1024),
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        rates = iter(_drop_path_rates(drop_path, sum(depths)))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim, next(rates)) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.num_features = dims[-1]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(x).mean(dim=(2, 3)))


# --------------------------------------------------------------------------- timm


class TimmEncoder(Encoder):
    """A timm model created without a head (``num_classes=0``), so it returns pooled features."""

    def __init__(self, name: str, in_channels: int, drop_path: float = 0.0, **kwargs) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ValueError(
                f"model 'timm:{name}' needs timm, which is not installed; `pip install timm` "
                "(matching your torch version) or pick a built-in model"
            ) from None
        create = dict(pretrained=False, in_chans=in_channels, num_classes=0, drop_path_rate=drop_path, **kwargs)
        try:
            self.model = timm.create_model(name, img_size=OUTPUT_SIZE, **create)
        except TypeError:  # convolutional models take no img_size
            self.model = timm.create_model(name, **create)
        except RuntimeError as exc:
            raise ValueError(f"timm cannot create model {name!r}: {exc}") from None
        self.in_channels = in_channels
        self.num_features = int(self.model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --------------------------------------------------------------------------- registry

_RESNETS = {
    "resnet18": dict(layers=(2, 2, 2, 2), bottleneck=False),
    "resnet34": dict(layers=(3, 4, 6, 3), bottleneck=False),
    "resnet50": dict(layers=(3, 4, 6, 3), bottleneck=True),
    "resnet101": dict(layers=(3, 4, 23, 3), bottleneck=True),
    "resnet_micro": dict(layers=(1, 1, 1, 1), bottleneck=False, widths=(8, 16, 32, 64), stem_width=8),
}
_VITS = {
    "vit_base": dict(dim=768, depth=12, heads=12),
    "vit_small": dict(dim=384, depth=12, heads=6),
    "vit_tiny": dict(dim=192, depth=12, heads=3),
    "vit_micro": dict(dim=32, depth=2, heads=2),
}
_MIXERS = {
    "mixer_base": dict(dim=768, depth=12, token_hidden=384, channel_hidden=3072),
    "mixer_small": dict(dim=512, depth=8, token_hidden=256, channel_hidden=2048),
    "mixer_micro": dict(dim=32, depth=2, token_hidden=16, channel_hidden=64),
}
_CONVNEXTS = {
    "convnextv2_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "convnextv2_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "convnextv2_atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    "convnext_micro": dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
}
_DEFAULT_PATCH = {"vit": 8, "mixer": 16}


def model_names() -> list[str]:
    """The built-in model names (``timm:NAME`` is accepted in addition)."""
    return (
        list(_RESNETS)
        + [f"{n}_patch{_DEFAULT_PATCH['vit']}" for n in _VITS]
        + [f"{n}_patch{_DEFAULT_PATCH['mixer']}" for n in _MIXERS]
        + list(_CONVNEXTS)
    )


def build_encoder(name: str, in_channels: int, drop_path: float = 0.0, **kwargs) -> Encoder:
    """One encoder ``(B, in_channels, 120, 120) -> (B, num_features)`` by name.

    ViT and Mixer names take a patch size suffix (``vit_base_patch8``, ``mixer_micro_patch15``);
    without one, ViTs use 8 and Mixers 16. ``kwargs`` override the architecture's fields
    (``patch_size=``, ``dim=``, ``depth=``, ``widths=`` ...).

    Raises:
        ValueError: unknown name, or ``in_channels < 1``.
    """
    if in_channels < 1:
        raise ValueError(f"an encoder needs at least one input channel, got {in_channels}")
    if name.startswith("timm:"):
        return TimmEncoder(name[len("timm:"):], in_channels, drop_path=drop_path, **kwargs)
    if name in _RESNETS:
        return ResNet(in_channels, drop_path=drop_path, **{**_RESNETS[name], **kwargs})
    if name in _CONVNEXTS:
        return ConvNeXt(in_channels, drop_path=drop_path, **{**_CONVNEXTS[name], **kwargs})
    match = re.fullmatch(r"((vit|mixer)_[a-z]+)(?:_patch(\d+))?", name)
    if match and (match.group(1) in _VITS or match.group(1) in _MIXERS):
        family = match.group(2)
        arch = {**(_VITS if family == "vit" else _MIXERS)[match.group(1)]}
        arch["patch_size"] = int(match.group(3)) if match.group(3) else _DEFAULT_PATCH[family]
        arch.update(kwargs)
        cls = VisionTransformer if family == "vit" else MlpMixer
        return cls(in_channels, drop_path=drop_path, **arch)
    raise ValueError(f"unknown model {name!r}; expected one of {model_names()} or 'timm:NAME'")


class ReBENClassifier(nn.Module):
    """Encoder(s) + dropout + linear head: ``(B, C, 120, 120)`` float32 -> logits ``(B, num_classes)``.

    With one encoder (early fusion) all ``C`` channels go into it. With several (late fusion)
    each encoder gets its own channel subset (``channel_groups``, indices into ``C``) and their
    features are concatenated.

    Attributes:
        config: the arguments :func:`build_model` was called with (stored in checkpoints).
        num_features: width of the (fused) feature vector returned by :meth:`forward_features`.
    """

    def __init__(
        self,
        encoders: dict[str, Encoder],
        channel_groups: dict[str, list[int]] | None,
        num_classes: int,
        dropout: float,
        config: dict,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.channel_groups = channel_groups
        if channel_groups is not None:
            for key, idx in channel_groups.items():
                self.register_buffer(f"_index_{key}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.num_features = sum(e.num_features for e in encoders.values())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.head.bias)
        self.config = dict(config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, num_features)`` before dropout and head."""
        if self.channel_groups is None:
            (encoder,) = self.encoders.values()
            return encoder(x)
        feats = [enc(x.index_select(1, getattr(self, f"_index_{k}"))) for k, enc in self.encoders.items()]
        return torch.cat(feats, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


def build_model(
    name: str,
    bands: str | Sequence[str] | None = None,
    num_classes: int = NUM_CLASSES,
    fusion: str = "early",
    dropout: float = 0.15,
    drop_path: float = 0.15,
    in_channels: int | None = None,
    **kwargs,
) -> ReBENClassifier:
    """A classifier for ``bands`` (a band group such as ``"S1_10m_20m"`` or a band list).

    Args:
        name: model name (see :func:`model_names`) or ``timm:NAME``.
        bands: band group or band names; their order is the input channel order. Required for
            late fusion; for early fusion ``in_channels`` may be given instead.
        num_classes: number of outputs (19 for reBEN).
        fusion: ``"early"`` (channel concatenation) or ``"late"`` (one encoder per modality).
        dropout: dropout before the linear head (0.15 in the published recipe).
        drop_path: largest stochastic-depth rate (0.15 in the published recipe).
        in_channels: channel count when no ``bands`` are given.
        kwargs: architecture overrides passed to :func:`build_encoder`.

    Raises:
        ValueError: unknown model, band group or fusion; late fusion with a single modality;
            ``in_channels`` that contradicts ``bands``.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {list(FUSIONS)}")
    band_names = resolve_bands(bands) if bands is not None else None
    if band_names is None and in_channels is None:
        raise ValueError("build_model needs bands or in_channels")
    if band_names is not None and in_channels is not None and in_channels != len(band_names):
        raise ValueError(f"in_channels={in_channels} but {len(band_names)} bands given: {list(band_names)}")
    channels = len(band_names) if band_names is not None else int(in_channels)
    config = dict(
        name=name, bands=list(band_names) if band_names else None, in_channels=channels,
        num_classes=num_classes, fusion=fusion, dropout=dropout, drop_path=drop_path, kwargs=dict(kwargs),
    )
    if fusion == "early":
        encoders = {"all": build_encoder(name, channels, drop_path=drop_path, **kwargs)}
        return ReBENClassifier(encoders, None, num_classes, dropout, config)
    if band_names is None:
        raise ValueError("late fusion needs band names (to know which channels are S1 and which S2)")
    groups: dict[str, list[int]] = {}
    for i, band in enumerate(band_names):
        groups.setdefault(ALL_BANDS[band].modality, []).append(i)
    if len(groups) < 2:
        raise ValueError(
            f"late fusion needs bands of both S1 and S2, but {list(band_names)} are all "
            f"{next(iter(groups))}; use fusion='early' or a band group such as S1_10m_20m"
        )
    encoders = {mod: build_encoder(name, len(idx), drop_path=drop_path, **kwargs) for mod, idx in groups.items()}
    return ReBENClassifier(encoders, groups, num_classes, dropout, config)


def build_model_from_config(config: dict) -> ReBENClassifier:
    """Rebuild a classifier from the ``config`` attribute of another (as stored in checkpoints)."""
    return build_model(
        config["name"], bands=config.get("bands"), num_classes=config["num_classes"], fusion=config["fusion"],
        dropout=config["dropout"], drop_path=config["drop_path"],
        in_channels=None if config.get("bands") else config["in_channels"], **config.get("kwargs", {}),
    )
