"""Supervised backbones for 120x120 reBEN patches and their registry by name.

Every encoder takes a float32 batch ``(B, C, 120, 120)`` of normalised bands (any ``C``)
and returns features ``(B, num_features)``. Architectures (reBEN published ResNet, ViT,
ConvNeXt V2 and MLP-Mixer models):

- ResNet (``resnet18``, ``resnet50``, ``resnet101``; ``resnet_micro`` for CPU tests),
- ViT (``vit_base_patch8`` = ViT-B/8, ``vit_small_patchP``, ``vit_tiny_patchP``, ``vit_micro_patchP``;
  any patch size ``P``; a side that ``P`` does not divide is zero-padded on the right/bottom),
- ConvNeXt V2 (``convnextv2_base``, ``convnextv2_tiny``, ``convnextv2_atto``, ``convnext_micro``),
- MLP-Mixer (``mixer_base_patch16`` = Mixer-B/16, ``mixer_small_patchP``, ``mixer_micro_patchP``),
- ``timm:NAME``: any timm model, when timm is importable (not a dependency).

Owns: ResNet, VisionTransformer, MlpMixer, ConvNeXt, TimmEncoder (and their blocks), model_names, build_encoder.
Does not own: shared building blocks (blocks.py), the classifier head and fusion (models.py).
May import: torch, timm (lazily, optional); reben_tools.format; reben_tools.learn.models.blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reben_tools.format.bands import OUTPUT_SIZE
from reben_tools.learn.models.blocks import (
    DropPath,
    Encoder,
    LayerNorm2d,
    Mlp,
    PatchEmbed,
    TransformerBlock,
    drop_path_rates,
    init_transformer,
)

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
        rates = iter(drop_path_rates(drop_path, sum(layers)))
        stages, ch = [], stem_width
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
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
            *[TransformerBlock(dim, heads, mlp_ratio, r) for r in drop_path_rates(drop_path, depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_transformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))[:, 0]


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
            *[MixerBlock(tokens, dim, token_hidden, channel_hidden, r) for r in drop_path_rates(drop_path, depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim
        self.apply(init_transformer)

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
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim, next(rates)) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.num_features = dims[-1]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
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
        return TimmEncoder(name[len("timm:") :], in_channels, drop_path=drop_path, **kwargs)
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
