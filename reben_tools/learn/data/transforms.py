"""Native-resolution layout of a band list, and upsampling + normalisation of native batches to 120x120.

A native-mode sample (``ReBENDataset(native=True)``) holds each resolution group at its
stored resolution and dtype (``uint16`` for S2, ``float32`` for S1); :class:`NativeToImage`
(or :func:`upsample_and_normalise`) upsamples and normalises whole batches on any device,
e.g. the GPU, and a numpy kernel (:class:`NearestWriter`) does the same for one sample on
the CPU. All paths give the same numbers.

Owns: UPSAMPLING_MODES, NATIVE_GROUPS, NativeGroup, NativeLayout, upsample_and_normalise, NativeToImage,
NearestWriter, statistics_arrays.
Does not own: reading samples (dataset.py), the band tables and published statistics (format/bands.py).
May import: numpy, torch; reben_tools.format, reben_tools.learn.data.buffers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from reben_tools.format.bands import ALL_BANDS, OUTPUT_SIZE, normalisation_arrays, resolve_bands
from reben_tools.learn.data.buffers import BufferPool

UPSAMPLING_MODES = ("nearest", "bilinear")
"""Upsampling of 20 m and 60 m bands to 120x120. Bilinear uses ``align_corners=False``
(pixel centres stay where they are on the ground)."""

NATIVE_GROUPS = ("s1", "s2_10m", "s2_20m", "s2_60m")
"""Keys of the native-resolution tensors of a native-mode sample, in this order."""

_GROUP_OF_BAND = {
    name: ("s1" if band.modality == "S1" else f"s2_{band.resolution_m}m") for name, band in ALL_BANDS.items()
}


# --------------------------------------------------------------------------------------
# Native layout and the torch-side transform
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeGroup:
    """One resolution group of a native-mode sample.

    Attributes:
        name: the sample key (``"s1"``, ``"s2_10m"``, ``"s2_20m"``, ``"s2_60m"``).
        bands: the group's bands, in the order they appear in the requested band list.
        channels: output channel (index into the requested band list) of each band.
        size: native side in pixels (120, 60 or 20).
        dtype: numpy dtype name of the stored pixels (``"float32"`` for S1, ``"uint16"`` for S2).
    """

    name: str
    bands: tuple[str, ...]
    channels: tuple[int, ...]
    size: int
    dtype: str

    @property
    def factor(self) -> int:
        """Upsampling factor to 120x120 (1, 2 or 6)."""
        return OUTPUT_SIZE // self.size


@dataclass(frozen=True)
class NativeLayout:
    """Where each requested band sits in a native-mode sample and in the output image.

    A native-mode sample holds, for every group with at least one requested band, a
    tensor of shape ``(k, size, size)`` (batched: ``(B, k, size, size)``) whose channel
    ``j`` is band ``group.bands[j]``, destined for output channel ``group.channels[j]``.
    """

    bands: tuple[str, ...]
    groups: tuple[NativeGroup, ...]

    @classmethod
    def for_bands(cls, bands: str | Sequence[str]) -> NativeLayout:
        """The layout of a band group name (``"ALL"``) or a list of band names."""
        names = resolve_bands(bands)
        groups = []
        for group in NATIVE_GROUPS:
            members = [(b, c) for c, b in enumerate(names) if _GROUP_OF_BAND[b] == group]
            if members:
                band = ALL_BANDS[members[0][0]]
                groups.append(
                    NativeGroup(
                        group, tuple(b for b, _ in members), tuple(c for _, c in members), band.size, band.dtype
                    )
                )
        return cls(names, tuple(groups))

    @property
    def num_channels(self) -> int:
        return len(self.bands)


def statistics_arrays(
    bands: tuple[str, ...], statistics: Mapping[str, tuple[float, float]] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """float32 (mean, 1/std) of shape (C,) in band order, or None for no normalisation.

    ``1/std`` is computed in float32 so numpy and torch paths multiply by identical numbers.
    """
    if statistics is None:
        return None
    mean, std = normalisation_arrays(bands, dict(statistics))
    if np.any(~np.isfinite(std)) or np.any(std <= 0):
        raise ValueError(
            f"standard deviations must be positive and finite, got {dict(zip(bands, std.tolist(), strict=True))}"
        )
    return mean, np.float32(1.0) / std


def upsample_and_normalise(
    native: Mapping[str, torch.Tensor],
    layout: NativeLayout,
    mean: torch.Tensor | None = None,
    inv_std: torch.Tensor | None = None,
    upsampling: str = "nearest",
) -> torch.Tensor:
    """Turn a batch of native-resolution groups into images ``(B, C, 120, 120)`` float32.

    Runs on the device of the input tensors (CPU or GPU), batched over B, with plain
    torch ops. (:class:`NativeToImage` does the same with its constants kept on the
    device, and takes a faster numpy kernel for nearest upsampling on the CPU.)

    Args:
        native: ``{group name: tensor (B, k, size, size)}`` as returned in native mode
            (uint16 S2 groups, float32 S1 group); other keys (``label``...) are ignored.
        layout: the dataset's :class:`NativeLayout`.
        mean: float32 tensor (C,), per output channel, or None for no normalisation.
        inv_std: float32 tensor (C,) of ``1/std``, or None.
        upsampling: ``"nearest"`` (pixel repetition; normalised at native resolution,
            which gives the same numbers) or ``"bilinear"`` (``align_corners=False``;
            upsampled first, then normalised).

    Returns:
        float32 tensor (B, C, 120, 120): ``(upsampled value - mean) * inv_std`` per channel.
    """
    if (mean is None) != (inv_std is None):
        raise ValueError("give both mean and inv_std, or neither")
    device = native[layout.groups[0].name].device
    plans: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    for group in layout.groups:
        channels = torch.as_tensor(group.channels, device=device)
        if mean is None or inv_std is None:
            plans.append((channels, None, None))
        else:
            plans.append(
                (channels, mean.to(device)[channels].view(1, -1, 1, 1), inv_std.to(device)[channels].view(1, -1, 1, 1))
            )
    return _upsample_and_normalise(native, layout, plans, upsampling)


def _upsample_and_normalise(
    native: Mapping[str, torch.Tensor],
    layout: NativeLayout,
    plans: Sequence[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    upsampling: str,
) -> torch.Tensor:
    """:func:`upsample_and_normalise` given, per group, (channel index, mean, 1/std) on the device."""
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"unknown upsampling {upsampling!r}; expected one of {list(UPSAMPLING_MODES)}")
    first = native[layout.groups[0].name]
    batch, device = first.shape[0], first.device
    out = torch.empty((batch, layout.num_channels, OUTPUT_SIZE, OUTPUT_SIZE), dtype=torch.float32, device=device)
    for group, (channels, m, s) in zip(layout.groups, plans, strict=True):
        x = native[group.name]
        expected = (batch, len(group.bands), group.size, group.size)
        if tuple(x.shape) != expected:
            raise ValueError(f"native group {group.name!r}: shape {tuple(x.shape)}, expected {expected}")
        x = x.to(device=device, dtype=torch.float32)
        if upsampling == "nearest":
            if m is not None and s is not None:
                x = (x - m) * s
            if group.factor != 1:
                x = F.interpolate(x, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="nearest")
        else:
            if group.factor != 1:
                x = F.interpolate(x, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="bilinear", align_corners=False)
            if m is not None and s is not None:
                x = (x - m) * s
        out.index_copy_(1, channels, x)
    return out


class NativeToImage(torch.nn.Module):
    """Upsample and normalise native-mode batches on whatever device the module lives on.

    ``transform = dataset.native_transform().to("cuda")``; then for each batch of a
    native-mode DataLoader: ``images = transform(batch)`` -> float32 (B, C, 120, 120)
    on the module's device. Input tensors are moved there first (``non_blocking``, so
    use ``pin_memory=True`` in the DataLoader); the per-group channel indices and
    statistics live on the device as buffers. Equal to the per-sample path's images.

    Args:
        layout: the dataset's :class:`NativeLayout`.
        statistics: ``{band: (mean, std)}`` or None for no normalisation.
        upsampling: ``"nearest"`` or ``"bilinear"``.
    """

    mean: torch.Tensor  # buffers (registered in __init__)
    inv_std: torch.Tensor

    def __init__(
        self, layout: NativeLayout, statistics: Mapping[str, tuple[float, float]] | None, upsampling: str = "nearest"
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"unknown upsampling {upsampling!r}; expected one of {list(UPSAMPLING_MODES)}")
        self.layout = layout
        self.upsampling = upsampling
        arrays = statistics_arrays(layout.bands, statistics)
        self.normalise = arrays is not None
        mean, inv = arrays if arrays is not None else (np.zeros(len(layout.bands), np.float32),) * 2
        self.register_buffer("mean", torch.from_numpy(mean.copy()), persistent=False)
        self.register_buffer("inv_std", torch.from_numpy(inv.copy()), persistent=False)
        for i, group in enumerate(layout.groups):
            idx = torch.tensor(group.channels, dtype=torch.int64)
            self.register_buffer(f"_channels_{i}", idx, persistent=False)
            self.register_buffer(f"_mean_{i}", self.mean[idx].view(1, -1, 1, 1).clone(), persistent=False)
            self.register_buffer(f"_inv_{i}", self.inv_std[idx].view(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = self.mean.device
        native = {g.name: batch[g.name].to(device, non_blocking=True) for g in self.layout.groups}
        if device.type == "cpu" and self.upsampling == "nearest":
            return _nearest_on_cpu(
                native,
                self.layout,
                self.mean.numpy() if self.normalise else None,
                self.inv_std.numpy() if self.normalise else None,
            )
        plans = []
        for i in range(len(self.layout.groups)):
            buffers = (getattr(self, f"_mean_{i}"), getattr(self, f"_inv_{i}")) if self.normalise else (None, None)
            plans.append((getattr(self, f"_channels_{i}"), *buffers))
        return _upsample_and_normalise(native, self.layout, plans, self.upsampling)


def _nearest_on_cpu(
    native: Mapping[str, torch.Tensor], layout: NativeLayout, mean: np.ndarray | None, inv_std: np.ndarray | None
) -> torch.Tensor:
    """CPU fast path of :func:`upsample_and_normalise` for nearest upsampling (same numbers)."""
    arrays = {g.name: native[g.name].numpy() for g in layout.groups}
    batch = next(iter(arrays.values())).shape[0]
    out, tensor = _CPU_POOL.take((batch, layout.num_channels, OUTPUT_SIZE, OUTPUT_SIZE), np.float32)
    BatchNearestWriter(layout, mean, inv_std).write(out, arrays)
    return tensor


class BatchNearestWriter:
    """:class:`NearestWriter`'s arithmetic over a batch, a few samples per numpy call.

    ``write(out, groups)`` fills ``out`` (B, C, 120, 120) float32 from the native group
    arrays ``{group name: (B, k, size, size)}``, :data:`CHUNK` samples at a time so each
    chunk's intermediates stay in the CPU cache. Same operations, same numbers (bit for
    bit) as :class:`NearestWriter`, with about a quarter of the numpy calls per sample.
    """

    CHUNK = 4

    def __init__(self, layout: NativeLayout, mean: np.ndarray | None, inv_std: np.ndarray | None) -> None:
        self.normalise = mean is not None
        self.plan: list[tuple[NativeGroup, np.ndarray | None, np.ndarray | None, list[tuple[int, int, int]]]] = []
        for group in layout.groups:
            channels = np.array(group.channels)
            m = np.asarray(mean, np.float32)[channels].reshape(1, -1, 1, 1) if self.normalise else None
            inv = np.asarray(inv_std, np.float32)[channels].reshape(1, -1, 1, 1) if self.normalise else None
            # (first j, first channel, length): consecutive in both the group and the output
            runs: list[tuple[int, int, int]] = []
            for j, c in enumerate(group.channels):
                if runs and runs[-1][0] + runs[-1][2] == j and runs[-1][1] + runs[-1][2] == c:
                    runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
                else:
                    runs.append((j, c, 1))
            self.plan.append((group, m, inv, runs))

    def write(self, out: np.ndarray, groups: Mapping[str, np.ndarray]) -> None:
        batch = out.shape[0]
        for start in range(0, batch, self.CHUNK):
            chunk = slice(start, min(batch, start + self.CHUNK))
            n = chunk.stop - chunk.start
            for group, m, inv, runs in self.plan:
                native = groups[group.name][chunk]
                size, factor = group.size, group.factor
                if factor == 1:
                    for j, c, length in runs:
                        target = out[chunk, c : c + length]
                        if m is None or inv is None:
                            np.copyto(target, native[:, j : j + length], casting="unsafe")
                        else:
                            np.subtract(native[:, j : j + length], m[:, j : j + length], out=target)
                            target *= inv[:, j : j + length]
                    continue
                scratch = np.empty((n, len(group.bands), size, size), np.float32)
                if m is None or inv is None:
                    np.copyto(scratch, native, casting="unsafe")
                else:
                    np.subtract(native, m, out=scratch)
                    scratch *= inv
                if factor == 2:
                    pairs = scratch.view(np.uint32).astype(np.uint64)
                    pairs *= np.uint64(0x1_0000_0001)  # the 32-bit pattern in both halves
                    out64 = out[chunk].view(np.uint64)
                    for j, c, length in runs:
                        target = out64[:, c : c + length].reshape(n, length, size, 2, size)
                        target[...] = pairs[:, j : j + length, :, None, :]
                else:
                    columns = scratch.repeat(factor, axis=3)
                    for j, c, length in runs:
                        target = out[chunk, c : c + length].reshape(n, length, size, factor, OUTPUT_SIZE)
                        target[...] = columns[:, j : j + length, :, None, :]


_CPU_POOL = BufferPool()
"""Reused output buffers of the CPU path (an output is reused only once nothing holds it)."""


# --------------------------------------------------------------------------------------
# The numpy kernel: one sample's native bands -> normalised 120x120 image, in cache
# --------------------------------------------------------------------------------------


def _runs(channels: Sequence[int]) -> list[tuple[int, int, int]]:
    """Split ascending-order positions into runs of consecutive output channels.

    Returns ``(first member index, first channel, length)`` per run.
    """
    runs: list[tuple[int, int, int]] = []
    for j, c in enumerate(channels):
        if runs and runs[-1][1] + runs[-1][2] == c:
            start, first, length = runs[-1]
            runs[-1] = (start, first, length + 1)
        else:
            runs.append((j, c, 1))
    return runs


class NearestWriter:
    """Writes one sample into ``out`` (C, 120, 120) float32: nearest upsampling + normalisation.

    Every band is cast and mean-subtracted in one pass (``np.subtract`` of the native
    array), then scaled by ``1/std``: full-resolution bands straight in their output
    plane, 20 m and 60 m bands at native resolution in a small scratch buffer that is
    then replicated into the output. 20 m columns are doubled by turning each float32
    into a uint64 word holding it twice (``bits * (2**32 + 1)``), so each output row is
    written with long inner loops. One sample's work stays in the CPU cache and each
    output plane is written once. The numbers equal ``(float32(x) - mean) * (1/std)``
    computed at 120x120, i.e. :func:`upsample_and_normalise`'s.
    """

    def __init__(self, layout: NativeLayout, mean: np.ndarray | None, inv_std: np.ndarray | None) -> None:
        self.normalise = mean is not None
        # (band, channel, mean); the mean is 0 (and unused) without normalisation
        self.full: list[tuple[str, int, np.float32]] = []
        self.full_runs: list[tuple[int, int]] = []
        self.low_plan: list[
            tuple[NativeGroup, list[tuple[str, np.float32]], list[tuple[int, int, int]], np.ndarray | None]
        ] = []
        means = np.zeros(layout.num_channels, np.float32)
        if mean is not None:
            means = np.ascontiguousarray(mean, np.float32)
            self.inv = np.ascontiguousarray(inv_std, np.float32).reshape(-1, 1, 1)
        for group in layout.groups:
            order = sorted(range(len(group.bands)), key=lambda j: group.channels[j])
            members = [(group.bands[j], group.channels[j]) for j in order]
            if group.factor == 1:
                self.full.extend((b, c, means[c]) for b, c in members)
            else:
                channels = [c for _, c in members]
                inv = self.inv[np.array(channels)].copy() if self.normalise else None
                bands = [(b, means[c]) for b, c in members]
                self.low_plan.append((group, bands, _runs(channels), inv))
        self.full.sort(key=lambda m: m[1])
        if self.normalise:
            for _, first, length in _runs([c for _, c, _ in self.full]):
                self.full_runs.append((first, first + length))

    def write(self, out: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
        """Fill ``out`` (C, 120, 120) float32 from native ``arrays`` ``{band: (size, size)}``."""
        if self.normalise:
            for band, c, m in self.full:
                np.subtract(arrays[band], m, out=out[c])
            for a, b in self.full_runs:
                plane = out[a:b]
                plane *= self.inv[a:b]
        else:
            for band, c, _ in self.full:
                np.copyto(out[c], arrays[band], casting="unsafe")
        for group, bands, runs, inv in self.low_plan:
            size, factor = group.size, group.factor
            scratch = np.empty((len(bands), size, size), np.float32)
            if inv is not None:
                for j, (band, m) in enumerate(bands):
                    np.subtract(arrays[band], m, out=scratch[j])
                scratch *= inv
            else:
                for j, (band, _) in enumerate(bands):
                    np.copyto(scratch[j], arrays[band], casting="unsafe")
            if factor == 2:
                pairs = scratch.view(np.uint32).astype(np.uint64)
                pairs *= np.uint64(0x1_0000_0001)  # the 32-bit pattern in both halves
                out64 = out.view(np.uint64)
                for start, first, length in runs:
                    target = out64[first : first + length].reshape(length, size, 2, size)
                    target[...] = pairs[start : start + length, :, None, :]
            else:
                columns = scratch.repeat(factor, axis=2)
                for start, first, length in runs:
                    target = out[first : first + length].reshape(length, size, factor, OUTPUT_SIZE)
                    target[...] = columns[start : start + length, :, None, :]
