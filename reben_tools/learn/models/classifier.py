"""Multi-label classifiers for 120x120 reBEN patches, on torch alone.

A classifier runs one or more encoders (:mod:`.encoders`) on a float32 batch ``(B, C, 120, 120)``
of normalised bands and adds dropout and a linear head giving logits ``(B, num_classes)``
(apply a sigmoid for per-class probabilities; train with BCE-with-logits).

Fusion of modalities (:func:`build_model`, ``fusion=``):

- ``"early"``: the bands are concatenated along channels into one encoder (the published recipe);
- ``"late"``: one encoder per modality (the S1 channels and the S2 channels of the band list),
  features concatenated before the shared dropout + linear head.

Owns: FUSIONS, ReBENClassifier, build_model, build_model_from_config.
Does not own: encoders and their names (backbones.py), building blocks (blocks.py), checkpoints (checkpoints.py).
May import: torch; reben_tools.format; reben_tools.learn.models.blocks, .backbones, .dofa.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reben_tools.format.bands import ALL_BANDS, resolve_bands
from reben_tools.format.labels import NUM_CLASSES
from reben_tools.learn.models.backbones import build_encoder
from reben_tools.learn.models.blocks import Encoder
from reben_tools.learn.models.dofa import DOFA_CONFIGS, DOFABandEncoder, DOFAEncoder

FUSIONS = ("early", "late")


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
        name: model name (see :func:`model_names`), ``timm:NAME``, or a DOFA configuration
            (``dofa_base_patch16``, ``dofa_large_patch16``, ``dofa_micro``), which takes any band
            list and generates its patch kernels from the bands' wavelengths (bands required;
            ``input_mode=`` in ``kwargs`` picks position-embedding interpolation or resize-to-224).
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
    if band_names is not None:
        if in_channels is not None and in_channels != len(band_names):
            raise ValueError(f"in_channels={in_channels} but {len(band_names)} bands given: {list(band_names)}")
        channels = len(band_names)
    elif in_channels is not None:
        channels = int(in_channels)
    else:
        raise ValueError("build_model needs bands or in_channels")
    config = dict(
        name=name,
        bands=list(band_names) if band_names else None,
        in_channels=channels,
        num_classes=num_classes,
        fusion=fusion,
        dropout=dropout,
        drop_path=drop_path,
        kwargs=dict(kwargs),
    )
    if name in DOFA_CONFIGS and band_names is None:
        raise ValueError(f"{name} needs band names, not a channel count: its patch kernels come from the wavelengths")

    def encoder_for(subset: Sequence[str] | None, count: int) -> Encoder:
        if name in DOFA_CONFIGS:
            assert subset is not None  # refused above: DOFA needs band names
            return DOFABandEncoder(DOFAEncoder(name, drop_path=drop_path, **kwargs), subset)
        return build_encoder(name, count, drop_path=drop_path, **kwargs)

    if fusion == "early":
        encoders = {"all": encoder_for(band_names, channels)}
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
    encoders = {mod: encoder_for([band_names[i] for i in idx], len(idx)) for mod, idx in groups.items()}
    return ReBENClassifier(encoders, groups, num_classes, dropout, config)


def build_model_from_config(config: dict) -> ReBENClassifier:
    """Rebuild a classifier from the ``config`` attribute of another (as stored in checkpoints)."""
    return build_model(
        config["name"],
        bands=config.get("bands"),
        num_classes=config["num_classes"],
        fusion=config["fusion"],
        dropout=config["dropout"],
        drop_path=config["drop_path"],
        in_channels=None if config.get("bands") else config["in_channels"],
        **config.get("kwargs", {}),
    )
