"""Frozen encoders for embedding, by spec: ``load_encoder("croma_base:CROMA_base.pt")``.

A spec is ``PREFIX:PATH`` for a registered prefix (``croma_base``, ``croma_large``,
``croma_micro``: a checkpoint in CROMA's published layout, or a ``reben pretrain``
checkpoint), or a run directory (``reben pretrain`` or ``reben train``) or checkpoint file.
``dofa_base``, ``dofa_large``, ``dofa_micro``: a checkpoint in DOFA's published layout or a
``reben train`` checkpoint of a DOFA classifier; it embeds any band list
(:meth:`DofaEncoder.use_bands`). Other families add prefixes with :func:`register_encoder`.

Every encoder is a torch module with

* ``embed(s1=None, s2=None) -> {"s1", "s2", "joint"}``: pooled embeddings (B, D) float32 of
  already-prepared inputs ``s1`` (B, 2, 120, 120) VV, VH and ``s2`` (B, 12, 120, 120) in ESA
  band order; keys present as the inputs allow (CROMA names them ``sar_GAP``,
  ``optical_GAP``, ``joint_GAP``);
* ``input``: an :class:`InputSpec` saying what the inputs must be, and ``input.prepare``,
  which turns bands z-scored with reBEN's published statistics (what the archive loaders
  deliver) into exactly that;
* ``name``, ``dim``, ``spec`` and ``describe()`` (what the embeddings file records).

Owns: InputSpec, CromaEncoder, DofaEncoder, ClassifierEncoder, register_encoder, load_encoder.
Does not own: the networks (croma.py, dofa.py, models.py), reading archives or writing embeddings (embed.py).
May import: torch; reben_tools.format; reben_tools.learn.models.croma, .dofa, .checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from reben_tools.format.bands import ALL_BANDS, BAND_GROUPS, PUBLISHED_STATISTICS, resolve_bands, wavelengths_for
from reben_tools.learn.models.classifier import ReBENClassifier
from reben_tools.learn.models.croma import CONFIGS, CROMA, config_from_dict, croma_scale
from reben_tools.learn.models.croma_layout import CheckpointLayoutError, load_published
from reben_tools.learn.models.dofa import SPEC_NAMES as DOFA_SPEC_NAMES
from reben_tools.learn.models.dofa import DOFAEncoder, default_input_mode, load_dofa_state
from reben_tools.learn.models.restore import model_from_checkpoint
from reben_tools.learn.runtime.checkpoints import CHECKPOINT_FORMAT, CheckpointError, checked_checkpoint
from reben_tools.learn.runtime.weights import read_state_dict

S1 = BAND_GROUPS["S1"]
S2 = BAND_GROUPS["S2"]
SCALINGS = ("croma_2std", "zscore")


class EncoderError(ValueError):
    """An encoder spec or checkpoint cannot be used; the one-line message names the file and part."""


@dataclass(frozen=True)
class InputSpec:
    """The inputs an encoder expects.

    Attributes:
        s1_bands: radar bands it reads (``("VV", "VH")`` or empty).
        s2_bands: optical bands it reads (the 12 L2A bands in ESA order, or empty).
        statistics: per-band (mean, std) the scaling uses.
        scaling: ``"croma_2std"``: ``clip((x - (mean - 2 std)) / (4 std), 0, 1)`` (CROMA's);
            ``"zscore"``: ``(x - mean) / std`` (``reben train`` models).
        upsampling: how 20 m / 60 m bands reach 120x120 (``"nearest"``).
    """

    s1_bands: tuple[str, ...]
    s2_bands: tuple[str, ...]
    statistics: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(PUBLISHED_STATISTICS))
    scaling: str = "croma_2std"
    upsampling: str = "nearest"

    def to_dict(self) -> dict:
        return {
            "s1_bands": list(self.s1_bands),
            "s2_bands": list(self.s2_bands),
            "scaling": self.scaling,
            "statistics": {b: list(self.statistics[b]) for b in (*self.s1_bands, *self.s2_bands)},
            "upsampling": self.upsampling,
        }

    def _rescale(self, z: Tensor | None, bands: tuple[str, ...]) -> Tensor | None:
        if z is None:
            return None
        pub = torch.tensor([PUBLISHED_STATISTICS[b] for b in bands], dtype=torch.float64)
        own = torch.tensor([self.statistics[b] for b in bands], dtype=torch.float64)
        # x = z_pub * std_pub + mean_pub;  z_own = (x - mean_own) / std_own
        a = (pub[:, 1] / own[:, 1]).to(z.dtype).to(z.device).view(1, -1, 1, 1)
        b = ((pub[:, 0] - own[:, 0]) / own[:, 1]).to(z.dtype).to(z.device).view(1, -1, 1, 1)
        z = z * a + b
        return croma_scale(z) if self.scaling == "croma_2std" else z

    def prepare(self, s1: Tensor | None = None, s2: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Bands z-scored with reBEN's published statistics -> this encoder's inputs.

        Args:
            s1: float32 (B, 2, H, W) VV, VH, or None.
            s2: float32 (B, 12, H, W) in ESA order, or None.
        """
        return self._rescale(s1, S1), self._rescale(s2, S2)


class CromaEncoder(nn.Module):
    """A frozen CROMA model: pooled radar, optical and joint embeddings."""

    def __init__(self, model: CROMA, input_spec: InputSpec, spec: str, source: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.input = input_spec
        self.spec = spec
        self.source = source
        self.name = model.config.name
        self.dim = model.config.dim

    def embed(self, s1: Tensor | None = None, s2: Tensor | None = None) -> dict[str, Tensor]:
        """``{"s1": sar_GAP, "s2": optical_GAP, "joint": joint_GAP}``, each float32 (B, D)."""
        return self.model.embed(s1=s1, s2=s2)

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "family": "croma",
            "model": self.name,
            "dim": self.dim,
            "config": self.model.config.to_dict(),
            "checkpoint": self.source,
            "bands": {"s1": list(self.input.s1_bands), "s2": list(self.input.s2_bands)},
            "input": self.input.to_dict(),
        }


class ClassifierEncoder(nn.Module):
    """The encoder of a ``reben train`` classifier (its pooled features before the head)."""

    def __init__(self, model: ReBENClassifier, bands: tuple[str, ...], spec: str, source: str, name: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.bands = bands
        self.spec = spec
        self.source = source
        self.name = name
        self.dim = int(model.num_features)
        s1 = tuple(b for b in S1 if b in bands)
        s2 = tuple(b for b in S2 if b in bands)
        self.input = InputSpec(S1 if s1 else (), S2 if s2 else (), scaling="zscore")
        self.output = "joint" if s1 and s2 else ("s1" if s1 else "s2")
        self.needs_all_inputs = True

    def embed(self, s1: Tensor | None = None, s2: Tensor | None = None) -> dict[str, Tensor]:
        """``{"s1" | "s2" | "joint": features}`` (B, D): joint when the model reads both modalities."""
        channels = []
        for band in self.bands:
            source, order = (s1, S1) if ALL_BANDS[band].modality == "S1" else (s2, S2)
            if source is None:
                raise ValueError(f"{self.source}: the model reads band {band}; pass {'s1' if order is S1 else 's2'}")
            channels.append(source[:, order.index(band)])
        return {self.output: self.model.forward_features(torch.stack(channels, dim=1))}

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "family": "reben_train",
            "model": self.name,
            "dim": self.dim,
            "checkpoint": self.source,
            "bands": {"model": list(self.bands)},
            "input": self.input.to_dict(),
        }


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _torch_load(path: str) -> dict:
    try:
        return read_state_dict(path, "checkpoint")
    except CheckpointError as exc:
        raise EncoderError(str(exc)) from None


def _croma_from_state(state: dict, path: str, spec: str, expected: str | None) -> CromaEncoder:
    if "croma_config" in state:  # a reben pretrain checkpoint records its size and input
        config = config_from_dict(state["croma_config"])
        if expected is not None and config.name != expected:
            raise EncoderError(f"{path}: checkpoint holds a {config.name}, not the {expected} the spec names")
        record = state.get("input", {})
        statistics = {b: tuple(v) for b, v in record.get("statistics", {}).items()} or dict(PUBLISHED_STATISTICS)
        input_spec = InputSpec(
            S1, S2, statistics, record.get("scaling", "croma_2std"), record.get("upsampling", "nearest")
        )
    else:  # CROMA's own published files record nothing: CROMA's scaling with reBEN's published statistics
        config = CONFIGS[expected or "croma_base"]
        input_spec = InputSpec(S1, S2, dict(PUBLISHED_STATISTICS), "croma_2std", "nearest")
    model = CROMA(config)
    try:
        load_published(model, state, path)
    except CheckpointLayoutError as exc:
        raise EncoderError(str(exc)) from None
    return CromaEncoder(model, input_spec, spec, path)


def _croma_loader(name: str) -> Callable[[str, str], CromaEncoder]:
    def load(path: str, spec: str) -> CromaEncoder:
        return _croma_from_state(_torch_load(path), path, spec, name)

    return load


class DofaEncoder(nn.Module):
    """A frozen DOFA model: one pooled embedding for whatever bands it is given.

    :meth:`use_bands` picks the bands (any of the 14 with a wavelength, in any order; default
    ``ALL``). :meth:`embed` returns ``"s1"`` (the chosen S1 bands alone), ``"s2"`` (the chosen S2
    bands alone) and ``"joint"`` (all chosen bands of the modalities passed, in one pass), each
    float32 (B, D); a key is absent when its modality has no chosen band or was not passed. With
    one modality's bands only, ``"joint"`` is that modality's embedding. Inputs are bands z-scored
    with reBEN's published statistics, as ``reben train`` feeds them (see docs/dofa.md).
    """

    def __init__(self, model: DOFAEncoder, spec: str, source: str, bands: str | Sequence[str] = "ALL") -> None:
        super().__init__()
        self.model = model.eval()
        self.spec = spec
        self.source = source
        self.name = model.name
        self.dim = model.num_features
        self.use_bands(bands)

    def use_bands(self, bands: str | Sequence[str]) -> None:
        """Embed ``bands`` from now on: a band group (``S2``, ``RGB``, ``ALL`` ...), a band name or a list.

        Raises:
            EncoderError: an unknown band, one without a central wavelength (named), or a repeat.
        """
        names = (
            BAND_GROUPS[bands]
            if isinstance(bands, str) and bands in BAND_GROUPS
            else ((bands,) if isinstance(bands, str) else tuple(bands))
        )
        try:
            wavelengths_for(names)
            names = resolve_bands(list(names))
        except ValueError as exc:
            raise EncoderError(f"{self.spec}: {exc}") from None
        self.bands = names
        self._groups = {
            "s1": tuple(b for b in names if ALL_BANDS[b].modality == "S1"),
            "s2": tuple(b for b in names if ALL_BANDS[b].modality == "S2"),
        }
        self.input = InputSpec(S1 if self._groups["s1"] else (), S2 if self._groups["s2"] else (), scaling="zscore")

    def embed(self, s1: Tensor | None = None, s2: Tensor | None = None) -> dict[str, Tensor]:
        """Pooled DOFA embeddings of the chosen bands (see the class docstring).

        Args:
            s1: float32 (B, 2, H, W) VV, VH, or None; s2: float32 (B, 12, H, W) in ESA order, or None.
        """
        channels: dict[str, Tensor] = {}
        if s1 is not None:
            channels.update({b: s1[:, S1.index(b)] for b in self._groups["s1"]})
        if s2 is not None:
            channels.update({b: s2[:, S2.index(b)] for b in self._groups["s2"]})
        if not channels:
            raise ValueError(f"{self.spec}: pass s1 and/or s2 holding the chosen bands {list(self.bands)}")
        out = {
            key: self._run(group, channels)
            for key, group in self._groups.items()
            if group and all(b in channels for b in group)
        }
        given = [b for b in self.bands if b in channels]
        same = [key for key, group in self._groups.items() if key in out and set(group) == set(given)]
        out["joint"] = out[same[0]] if same else self._run(given, channels)
        return out

    def _run(self, bands: Sequence[str], channels: dict[str, Tensor]) -> Tensor:
        return self.model(torch.stack([channels[b] for b in bands], dim=1), wavelengths_for(bands))

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "family": "dofa",
            "model": self.name,
            "dim": self.dim,
            "checkpoint": self.source,
            "input_mode": self.model.input_mode,
            "bands": {"model": list(self.bands)},
            "wavelengths_um": dict(zip(self.bands, wavelengths_for(self.bands), strict=True)),
            "input": self.input.to_dict(),
        }


def _dofa_loader(prefix: str) -> Callable[[str, str], DofaEncoder]:
    def load(path: str, spec: str) -> DofaEncoder:
        state = _torch_load(path)
        name = DOFA_SPEC_NAMES[prefix]
        input_mode = default_input_mode(name, published_weights=True)  # resize for published base/large
        if state.get("format") == CHECKPOINT_FORMAT:  # a reben train checkpoint of a DOFA classifier
            config = state.get("model_config") or {}
            if config.get("name") != name:
                raise EncoderError(
                    f"{path}: checkpoint holds a {config.get('name')} classifier, not the {name} the spec names"
                )
            # the mode it was trained with; runs that recorded none used the then default, interpolate
            input_mode = (config.get("kwargs") or {}).get("input_mode", "interpolate")
        model = DOFAEncoder(name, input_mode=input_mode)
        try:
            load_dofa_state(model, state, path)
        except ValueError as exc:
            raise EncoderError(str(exc)) from None
        return DofaEncoder(model, spec, path)

    return load


_LOADERS: dict[str, Callable[[str, str], nn.Module]] = {name: _croma_loader(name) for name in CONFIGS}
_LOADERS.update({prefix: _dofa_loader(prefix) for prefix in DOFA_SPEC_NAMES})


def register_encoder(prefix: str, loader: Callable[[str, str], nn.Module]) -> None:
    """Make ``PREFIX:PATH`` specs load through ``loader(path, spec)``.

    The loader returns a module with ``embed``, ``input``, ``name``, ``dim``, ``spec`` and
    ``describe()`` (see the module docstring) and raises :class:`EncoderError` for bad files.
    """
    _LOADERS[prefix] = loader


def encoder_prefixes() -> list[str]:
    """The registered spec prefixes."""
    return sorted(_LOADERS)


def _from_file(path: str, spec: str) -> nn.Module:
    state = _torch_load(path)
    if state.get("kind") == "croma_pretrain" or "s1_encoder" in state:
        return _croma_from_state(state, path, spec, None)
    try:
        state = checked_checkpoint(state, path)
        model = model_from_checkpoint(state, path)
    except CheckpointError as exc:
        raise EncoderError(str(exc)) from None
    cfg = state["model_config"]
    return ClassifierEncoder(model, tuple(cfg["bands"]), spec, path, cfg["name"])


def load_encoder(spec: str | os.PathLike) -> nn.Module:
    """The frozen encoder a spec names (eval mode, on the CPU).

    Args:
        spec: ``croma_base:PATH``, ``croma_large:PATH``, ``croma_micro:PATH`` (or another
            registered prefix), a ``reben pretrain`` / ``reben train`` run directory, or a
            checkpoint file of either.

    Raises:
        EncoderError: unknown prefix, missing file, or a checkpoint of the wrong layout or
            size; one line naming the file and the part.
    """
    spec = str(spec)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _LOADERS:
        return _LOADERS[prefix](rest, spec)
    path = Path(spec)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return _from_file(str(candidate), spec)
        raise EncoderError(f"{path}: not a run directory (no checkpoints/best.pt or checkpoints/last.pt)")
    if path.is_file():
        return _from_file(str(path), spec)
    if sep:
        raise EncoderError(f"unknown encoder {prefix!r} in {spec!r}; known: {', '.join(encoder_prefixes())}")
    raise EncoderError(
        f"{spec}: no such run directory or checkpoint, and not PREFIX:PATH "
        f"(known prefixes: {', '.join(encoder_prefixes())})"
    )
