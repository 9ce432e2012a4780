"""PyTorch dataset over a reben-tools archive or a plain reBEN LMDB directory.

Three ways to read the same patches (see ``docs/dataset.md``):

* **per sample** -- ``dataset[i]`` is a dict ``{"image": float32 (C, 120, 120), "label":
  float32 (19,), "patch_id": str, "mask"?: (120, 120)}`` with the bands upsampled to
  120x120 and normalised;
* **batched** -- ``dataset.__getitems__(indices)`` (called by ``DataLoader`` for every
  batch) reads a whole batch under one LMDB read transaction per shard and writes it
  into one contiguous ``(B, C, 120, 120)`` array; pass ``collate_fn=collate`` so the
  ``DataLoader`` hands that array over without stacking it again;
* **native** -- ``native=True`` returns each resolution group at its stored resolution
  and dtype (``uint16`` for S2, ``float32`` for S1); :class:`NativeToImage` (or
  :func:`upsample_and_normalise`) then upsamples and normalises whole batches on any
  device, e.g. the GPU. Its output equals the per-sample path's.

Values are untrusted: a value whose safetensors header has not been seen before is
checked in full against its kind's band table (tensor set, dtypes, shapes, offsets);
values with byte-identical headers and the same length reuse that checked layout. Any
fault raises :class:`reben_tools.format.codec.ValueDecodeError` naming the key. Environments are opened
lazily, read-only and without locks in each process (fork-safe for DataLoader workers).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from reben_tools.format import codec
from reben_tools.format.layout import ArchiveError, PATCHES_FILE, SPLITS
from reben_tools.format.metadata import read_metadata
from reben_tools.format.reader import Archive, BatchReader
from reben_tools.format.bands import ALL_BANDS, OUTPUT_SIZE, PUBLISHED_STATISTICS, normalisation_arrays, resolve_bands
from reben_tools.format.labels import MASK_IGNORE_INDEX, NUM_CLASSES, class_names, code_to_class_index_table

UPSAMPLING_MODES = ("nearest", "bilinear")
"""Upsampling of 20 m and 60 m bands to 120x120. Bilinear uses ``align_corners=False``
(pixel centres stay where they are on the ground)."""

NATIVE_GROUPS = ("s1", "s2_10m", "s2_20m", "s2_60m")
"""Keys of the native-resolution tensors of a native-mode sample, in this order."""

_GROUP_OF_BAND = {
    name: ("s1" if band.modality == "S1" else f"s2_{band.resolution_m}m") for name, band in ALL_BANDS.items()
}
_MAX_CACHED_LAYOUTS = 64


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
                    NativeGroup(group, tuple(b for b, _ in members), tuple(c for _, c in members), band.size, band.dtype)
                )
        return cls(names, tuple(groups))

    @property
    def num_channels(self) -> int:
        return len(self.bands)


def _statistics_arrays(
    bands: tuple[str, ...], statistics: Mapping[str, tuple[float, float]] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """float32 (mean, 1/std) of shape (C,) in band order, or None for no normalisation.

    ``1/std`` is computed in float32 so numpy and torch paths multiply by identical numbers.
    """
    if statistics is None:
        return None
    mean, std = normalisation_arrays(bands, dict(statistics))
    if np.any(~np.isfinite(std)) or np.any(std <= 0):
        raise ValueError(f"standard deviations must be positive and finite, got {dict(zip(bands, std.tolist()))}")
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
    plans = []
    for group in layout.groups:
        channels = torch.as_tensor(group.channels, device=device)
        if mean is None:
            plans.append((channels, None, None))
        else:
            plans.append((channels, mean.to(device)[channels].view(1, -1, 1, 1),
                          inv_std.to(device)[channels].view(1, -1, 1, 1)))
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
    for group, (channels, m, s) in zip(layout.groups, plans):
        x = native[group.name]
        expected = (batch, len(group.bands), group.size, group.size)
        if tuple(x.shape) != expected:
            raise ValueError(f"native group {group.name!r}: shape {tuple(x.shape)}, expected {expected}")
        x = x.to(device=device, dtype=torch.float32)
        if upsampling == "nearest":
            if m is not None:
                x = (x - m) * s
            if group.factor != 1:
                x = F.interpolate(x, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="nearest")
        else:
            if group.factor != 1:
                x = F.interpolate(x, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="bilinear", align_corners=False)
            if m is not None:
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

    def __init__(
        self, layout: NativeLayout, statistics: Mapping[str, tuple[float, float]] | None, upsampling: str = "nearest"
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"unknown upsampling {upsampling!r}; expected one of {list(UPSAMPLING_MODES)}")
        self.layout = layout
        self.upsampling = upsampling
        arrays = _statistics_arrays(layout.bands, statistics)
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
            return _nearest_on_cpu(native, self.layout, self.mean.numpy() if self.normalise else None,
                                   self.inv_std.numpy() if self.normalise else None)
        plans = []
        for i in range(len(self.layout.groups)):
            buffers = (getattr(self, f"_mean_{i}"), getattr(self, f"_inv_{i}")) if self.normalise else (None, None)
            plans.append((getattr(self, f"_channels_{i}"), *buffers))
        return _upsample_and_normalise(native, self.layout, plans, self.upsampling)


def _nearest_on_cpu(
    native: Mapping[str, torch.Tensor], layout: NativeLayout, mean: np.ndarray | None, inv_std: np.ndarray | None
) -> torch.Tensor:
    """CPU fast path of :func:`upsample_and_normalise` for nearest upsampling (same numbers)."""
    writer = _NearestWriter(layout, mean, inv_std)
    arrays = {g.name: native[g.name].numpy() for g in layout.groups}
    batch = next(iter(arrays.values())).shape[0]
    out = np.empty((batch, layout.num_channels, OUTPUT_SIZE, OUTPUT_SIZE), np.float32)
    for i in range(batch):
        writer.write(out[i], {b: arrays[g.name][i, j] for g in layout.groups for j, b in enumerate(g.bands)})
    return torch.from_numpy(out)


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


class _NearestWriter:
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
        self.full: list[tuple[str, int, np.float32]] = []
        self.full_runs: list[tuple[int, int]] = []
        self.low_plan: list[tuple[NativeGroup, list[tuple[str, np.float32]], list[tuple[int, int, int]], np.ndarray | None]] = []
        if self.normalise:
            mean = np.ascontiguousarray(mean, np.float32)
            self.inv = np.ascontiguousarray(inv_std, np.float32).reshape(-1, 1, 1)
        for group in layout.groups:
            order = sorted(range(len(group.bands)), key=lambda j: group.channels[j])
            members = [(group.bands[j], group.channels[j]) for j in order]
            if group.factor == 1:
                self.full.extend((b, c, mean[c] if self.normalise else None) for b, c in members)
            else:
                channels = [c for _, c in members]
                inv = self.inv[np.array(channels)].copy() if self.normalise else None
                bands = [(b, mean[c] if self.normalise else None) for b, c in members]
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


# --------------------------------------------------------------------------------------
# Values: cached, validated header layouts
# --------------------------------------------------------------------------------------


class _LayoutCache:
    """Validated tensor layouts of safetensors values, keyed by header bytes and value length.

    The first value with a given header is fully checked with
    :func:`reben_tools.format.codec.check_value` (dtypes, shapes, offsets, tensor set of its
    kind); later values with byte-identical headers and the same length share the layout,
    since the layout is a function of exactly those. Faults raise ``ValueDecodeError``.
    """

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, bytes, int], dict[str, tuple[int, np.dtype, int, tuple[int, ...]]]] = {}

    def arrays(self, key: str | bytes, value: memoryview, kind: str, bands: Iterable[str]) -> dict[str, np.ndarray]:
        """Read-only zero-copy views ``{band: array}`` of ``bands`` in ``value``."""
        layout = self._layout(key, value, kind)
        out = {}
        for band in bands:
            offset, dtype, count, shape = layout[band]
            out[band] = np.frombuffer(value, dtype, count, offset).reshape(shape)
        return out

    def _layout(self, key: str | bytes, value: memoryview, kind: str) -> dict:
        n = len(value)
        header = None
        if n >= 8:
            (header_len,) = struct.unpack_from("<Q", value, 0)
            if header_len <= codec.MAX_HEADER_BYTES and 8 + header_len <= n:
                header = bytes(value[8 : 8 + header_len])
                layout = self._layouts.get((kind, header, n))
                if layout is not None:
                    return layout
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        codec.check_value(name, value, kind)  # raises ValueDecodeError naming the key
        layout = {
            tensor: (info["begin"], info["dtype"], int(np.prod(info["shape"])), info["shape"])
            for tensor, info in codec.read_header(name, value).items()
        }
        if header is not None:
            if len(self._layouts) >= _MAX_CACHED_LAYOUTS:
                self._layouts.clear()
            self._layouts[(kind, header, n)] = layout
        return layout


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


class SampleBatch(Sequence):
    """What :meth:`ReBENDataset.__getitems__` returns: B samples backed by one contiguous batch.

    It behaves as the list of B sample dicts PyTorch's ``__getitems__`` protocol expects
    (so ``default_collate`` still works), but :func:`collate` returns :attr:`collated`
    -- the batch already stacked -- without copying.

    Attributes:
        collated: ``{"image": float32 (B, C, 120, 120), "label": float32 (B, 19),
            "patch_id": list[str], "mask"?: (B, 120, 120)}`` (native mode: the native
            group tensors ``(B, k, size, size)`` instead of ``"image"``).
    """

    def __init__(self, collated: dict, size: int) -> None:
        self.collated = collated
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._size))]
        if not -self._size <= index < self._size:
            raise IndexError(f"sample {index} out of range for a batch of {self._size}")
        return {key: value[index] for key, value in self.collated.items()}


def collate(samples: SampleBatch | Sequence[Mapping]) -> dict:
    """DataLoader ``collate_fn`` for :class:`ReBENDataset`.

    A :class:`SampleBatch` (what ``__getitems__`` returns) is handed over as is; a list of
    sample dicts (``dataset[i]`` results) is stacked with ``default_collate``. Either way
    the result is ``{"image" or native groups: tensors with a leading batch axis,
    "label": (B, 19), "patch_id": list[str], "mask"?: (B, 120, 120)}``.
    """
    if isinstance(samples, SampleBatch):
        return samples.collated
    return default_collate(list(samples))


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.uint16): torch.uint16, np.dtype(np.uint8): torch.uint8}


def _empty_batch(shape: tuple[int, ...], dtype: np.dtype | str) -> tuple[np.ndarray, torch.Tensor]:
    """An uninitialised batch array and the tensor sharing its memory.

    In a DataLoader worker the memory is shared memory from the start (as
    ``default_collate`` does), so handing the batch to the main process copies nothing;
    elsewhere it is a numpy allocation (which asks the kernel for huge pages).
    """
    dtype = np.dtype(dtype)
    if torch.utils.data.get_worker_info() is not None:
        numel = int(np.prod(shape))
        template = torch.empty(0, dtype=_TORCH_DTYPES[dtype])
        tensor = template.new(template._typed_storage()._new_shared(numel)).resize_(shape)
        return tensor.numpy(), tensor
    array = np.empty(shape, dtype)
    return array, torch.from_numpy(array)


def _key_array(values: list[str], column: str, ids: list[str]) -> np.ndarray:
    """Fixed-width bytes array of UTF-8 keys (no per-row Python objects: fork/COW friendly)."""
    missing = [pid for pid, v in zip(ids, values) if not v]
    if missing:
        raise ValueError(f"metadata column {column!r} is empty for patch(es) {missing[:5]}")
    return np.array([v.encode("utf-8") for v in values], dtype=np.bytes_)


def _multi_hot(table: pa.Table, order: str) -> np.ndarray:
    """(N, 19) float32 multi-hot labels of the metadata rows, class index in ``order``."""
    names = class_names(order)
    n = table.num_rows
    out = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    if n == 0:
        return out
    column = table.column("labels").combine_chunks()
    flat = pc.list_flatten(column)
    if len(flat) == 0:
        return out
    parents = pc.list_parent_indices(column).to_numpy()
    encoded = pc.dictionary_encode(flat)
    dictionary = encoded.dictionary.to_pylist()
    index = {name: i for i, name in enumerate(names)}
    unknown = [d for d in dictionary if d not in index]
    if unknown:
        codes = encoded.indices.to_numpy()
        first = int(np.flatnonzero(codes == dictionary.index(unknown[0]))[0])
        pid = table.column("patch_id")[int(parents[first])].as_py()
        raise ValueError(f"patch {pid!r}: unknown label {unknown[0]!r}; not one of the 19 reBEN classes")
    lookup = np.array([index[d] for d in dictionary], dtype=np.int64)
    out[parents, lookup[encoded.indices.to_numpy()]] = 1.0
    return out


class ReBENDataset(Dataset):
    """reBEN patches from a reben-tools archive or a plain reBEN LMDB directory.

    Args:
        root: a reben-tools archive directory (``manifest.json``, ``shards/``, metadata
            files, ``patches.parquet``) or a plain reBEN LMDB directory (``data.mdb``), as
            reBEN users hold it; the latter needs ``metadata``.
        split: ``"train"``, ``"validation"``, ``"test"`` or None for all patches.
        bands: a band group (``"ALL"``, ``"S2"``, ``"S1"``, ``"10m"``, ``"20m"``, ``"60m"``,
            ``"RGB"``, ``"10m_20m"``, ``"S1_10m_20m"``) or a list of band names; channel
            order follows it. S1 bands come from the S2 patch's ``s1_name`` partner value.
        include_snow_cloud: also use the patches of
            ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (reBEN leaves them out).
        upsampling: ``"nearest"`` (pixel repetition, reBEN's convention) or ``"bilinear"``
            (``align_corners=False``) for 20 m / 60 m bands.
        normalisation: ``"published"`` (reBEN's train-split statistics, SPEC section 9),
            ``"manifest"`` (the archive's own train-split statistics), a mapping
            ``{band: (mean, std)}``, or None (raw DNs / dB as float32).
        class_order: ``"alphabetical"`` (default; 0 = Agro-forestry areas) or ``"original"``.
        return_mask: also return ``mask``: the reference map as 19-class indices (120, 120),
            ``255`` (``labels.MASK_IGNORE_INDEX``) where the CLC class is unlabelled.
        native: return native-resolution groups instead of ``image`` (see :class:`NativeLayout`).
        metadata: reBEN metadata parquet file(s) to use instead of the archive's own; required
            for a plain LMDB directory. Rows flagged for snow/cloud/shadow are dropped unless
            ``include_snow_cloud``.
        mask_dtype: ``torch.uint8`` (default, compact) or ``torch.int64`` (ready for
            ``cross_entropy(ignore_index=255)``).

    A sample (``dataset[i]``) is a dict:

    * ``image``: float32 tensor (C, 120, 120), ``(value - mean) / std`` per band (not in native mode);
    * ``label``: float32 tensor (19,), multi-hot in ``class_order``;
    * ``patch_id``: str, the S2 patch id;
    * ``mask``: ``mask_dtype`` tensor (120, 120) when ``return_mask``;
    * native mode: ``s1`` float32 (k, 120, 120), ``s2_10m`` uint16 (k, 120, 120),
      ``s2_20m`` uint16 (k, 60, 60), ``s2_60m`` uint16 (k, 20, 20) for the groups the
      bands use (k = the group's requested bands, see :attr:`layout`).

    Patches are ordered by patch id. With a DataLoader, pass ``collate_fn=collate``:
    ``__getitems__`` then delivers whole batches with no extra copy.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        bands: str | Sequence[str] = "ALL",
        include_snow_cloud: bool = False,
        upsampling: str = "nearest",
        normalisation: str | Mapping[str, tuple[float, float]] | None = "published",
        class_order: str = "alphabetical",
        return_mask: bool = False,
        native: bool = False,
        metadata: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        mask_dtype: torch.dtype = torch.uint8,
    ) -> None:
        super().__init__()
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)} or None")
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"unknown upsampling {upsampling!r}; expected one of {list(UPSAMPLING_MODES)}")
        if mask_dtype not in (torch.uint8, torch.int64):
            raise ValueError(f"mask_dtype must be torch.uint8 or torch.int64, got {mask_dtype}")
        self.root = Path(root)
        self.archive = Archive(self.root)
        self.split = split
        self.layout = NativeLayout.for_bands(bands)
        self.bands = self.layout.bands
        self.include_snow_cloud = include_snow_cloud
        self.upsampling = upsampling
        self.class_order = class_order
        self.class_names = class_names(class_order)
        self.return_mask = return_mask
        self.native = native
        self.mask_dtype = mask_dtype
        self.statistics = self._resolve_statistics(normalisation)
        self.normalisation = normalisation
        arrays = _statistics_arrays(self.bands, self.statistics)
        self._mean, self._inv_std = arrays if arrays is not None else (None, None)

        table = self._read_rows(metadata)
        self.metadata: pa.Table = table
        """The metadata rows in use (reBEN schema), one per sample, sorted by patch id."""
        ids = table.column("patch_id").to_pylist()
        self._keys = _key_array(ids, "patch_id", ids)
        self._s1_bands = tuple(b for b in self.bands if ALL_BANDS[b].modality == "S1")
        self._s2_bands = tuple(b for b in self.bands if ALL_BANDS[b].modality == "S2")
        self._s1_keys = _key_array(table.column("s1_name").to_pylist(), "s1_name", ids) if self._s1_bands else None
        self._shards = self._shard_indices(ids)
        self.labels: np.ndarray = _multi_hot(table, class_order)
        """(N, 19) float32 multi-hot labels of all samples, in ``class_order``."""
        self._layouts = _LayoutCache()
        self._mask_table = code_to_class_index_table(class_order)
        self._writer = _NearestWriter(self.layout, self._mean, self._inv_std)

    # -- construction helpers ----------------------------------------------------------

    def _resolve_statistics(self, normalisation) -> dict[str, tuple[float, float]] | None:
        if normalisation is None:
            return None
        if isinstance(normalisation, Mapping):
            stats = {b: (float(m), float(s)) for b, (m, s) in normalisation.items()}
        elif normalisation == "published":
            stats = dict(PUBLISHED_STATISTICS)
        elif normalisation == "manifest":
            if self.archive.manifest is None:
                raise ValueError(f"{self.root}: normalisation='manifest' needs a reben-tools archive (manifest.json)")
            try:
                table = self.archive.manifest["statistics"]["bands"]
                stats = {b: (float(v["mean"]), float(v["std"])) for b, v in table.items()}
            except (KeyError, TypeError, ValueError) as exc:
                raise ArchiveError(f"{self.root / 'manifest.json'}: malformed statistics ({exc!r})") from None
        else:
            raise ValueError(f"unknown normalisation {normalisation!r}; expected 'published', 'manifest', a mapping or None")
        missing = [b for b in self.bands if b not in stats]
        if missing:
            raise ValueError(f"normalisation {normalisation if isinstance(normalisation, str) else 'mapping'!r} has no statistics for band(s) {missing}")
        return {b: stats[b] for b in self.bands}

    def _read_rows(self, metadata) -> pa.Table:
        if metadata is None:
            if not self.archive.is_sharded:
                raise ValueError(
                    f"{self.root}: a plain LMDB directory needs metadata=[metadata.parquet, ...] "
                    "(reBEN's metadata file(s))"
                )
            paths = self.archive.metadata_paths(include_flagged=self.include_snow_cloud)
        elif isinstance(metadata, (str, os.PathLike)):
            paths = [Path(metadata)]
        else:
            paths = [Path(p) for p in metadata]
        table = read_metadata(paths)
        if not self.include_snow_cloud:
            flagged = pc.or_(table["contains_seasonal_snow"], table["contains_cloud_or_shadow"])
            table = table.filter(pc.invert(pc.fill_null(flagged, False)))
        if self.split is not None:
            table = table.filter(pc.equal(table["split"], self.split))
        return table

    def _shard_indices(self, ids: list[str]) -> np.ndarray:
        if not self.archive.is_sharded or len(self.archive.shard_names) == 1:
            return np.zeros(len(ids), dtype=np.int32)
        path = self.root / PATCHES_FILE
        try:
            patches = pq.read_table(path, columns=["patch_id", "shard"])
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"{path}: cannot read patch_id/shard columns ({exc})") from None
        index_of = {name: i for i, name in enumerate(self.archive.shard_names)}
        shard_of = dict(zip(patches.column("patch_id").to_pylist(), patches.column("shard").to_pylist()))
        out = np.empty(len(ids), dtype=np.int32)
        for i, pid in enumerate(ids):
            shard = shard_of.get(pid)
            if shard is None:
                raise ArchiveError(f"{path}: patch {pid!r} of the metadata has no row (no shard)")
            if shard not in index_of:
                raise ArchiveError(f"{path}: patch {pid!r} is in shard {shard!r}, which the manifest does not list")
            out[i] = index_of[shard]
        return out

    # -- public helpers ------------------------------------------------------------------

    @property
    def num_channels(self) -> int:
        """C, the number of bands."""
        return len(self.bands)

    @property
    def patch_ids(self) -> list[str]:
        """The samples' patch ids, in sample order."""
        return [k.decode("utf-8") for k in self._keys]

    def native_transform(self) -> NativeToImage:
        """The :class:`NativeToImage` that turns this dataset's native batches into its images."""
        return NativeToImage(self.layout, self.statistics, self.upsampling)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return (
            f"ReBENDataset(root={str(self.root)!r}, split={self.split!r}, bands={len(self.bands)} channels, "
            f"samples={len(self)}, native={self.native}, upsampling={self.upsampling!r}, "
            f"normalisation={self.normalisation if isinstance(self.normalisation, str) or self.normalisation is None else 'custom'!r})"
        )

    # -- reading -----------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict:
        """One sample (see the class docstring)."""
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"sample index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples")
        return self.__getitems__([int(index) % n])[0]

    def __getitems__(self, indices: Sequence[int]) -> SampleBatch:
        """A batch of samples under one read transaction per shard (PyTorch batched-fetch protocol).

        Returns a :class:`SampleBatch`; ``collate`` turns it into the batch dict for free.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"sample index out of range for {n} samples: {idx.tolist()[:10]}")
        idx = idx % n if n else idx
        batch = len(idx)
        collated: dict = {}
        mask = None
        if self.return_mask:
            mask, mask_tensor = _empty_batch((batch, OUTPUT_SIZE, OUTPUT_SIZE), np.uint8)
        nearest_image = not self.native and self.upsampling == "nearest"
        if nearest_image:
            image, image_tensor = _empty_batch((batch, self.num_channels, OUTPUT_SIZE, OUTPUT_SIZE), np.float32)
            writer = self._writer
        else:
            allocated = {
                g.name: _empty_batch((batch, len(g.bands), g.size, g.size), g.dtype) for g in self.layout.groups
            }
            groups = {name: array for name, (array, _) in allocated.items()}
        with self.archive.batch_reader() as reader:
            for i, j in enumerate(idx.tolist()):
                arrays = self._read_arrays(reader, j)
                if nearest_image:
                    writer.write(image[i], arrays)
                else:
                    for g in self.layout.groups:
                        target = groups[g.name][i]
                        for k, band in enumerate(g.bands):
                            target[k] = arrays[band]
                if mask is not None:
                    self._write_mask(reader, j, mask[i])
        if nearest_image:
            collated["image"] = image_tensor
        else:
            native = {name: tensor for name, (_, tensor) in allocated.items()}
            if self.native:
                collated.update(native)
            else:
                collated["image"] = upsample_and_normalise(
                    native, self.layout,
                    None if self._mean is None else torch.from_numpy(self._mean),
                    None if self._inv_std is None else torch.from_numpy(self._inv_std),
                    self.upsampling,
                )
        collated["label"] = torch.from_numpy(self.labels[idx])
        collated["patch_id"] = [self._keys[j].decode("utf-8") for j in idx.tolist()]
        if mask is not None:
            collated["mask"] = mask_tensor if self.mask_dtype == torch.uint8 else mask_tensor.to(torch.int64)
        return SampleBatch(collated, batch)

    def _read_arrays(self, reader: BatchReader, j: int) -> dict[str, np.ndarray]:
        """Zero-copy views of the sample's requested bands (valid while ``reader`` is open)."""
        shard = int(self._shards[j])
        arrays: dict[str, np.ndarray] = {}
        if self._s2_bands:
            key = self._keys[j]
            arrays.update(self._layouts.arrays(key, reader.get(key, shard), "S2", self._s2_bands))
        if self._s1_bands:
            key = self._s1_keys[j]
            arrays.update(self._layouts.arrays(key, reader.get(key, shard), "S1", self._s1_bands))
        return arrays

    def _write_mask(self, reader: BatchReader, j: int, out: np.ndarray) -> None:
        key = self._keys[j] + b"_reference_map"
        codes = self._layouts.arrays(key, reader.get(key, int(self._shards[j])), "reference_map", ["Data"])["Data"]
        top = int(codes.max())
        if top >= len(self._mask_table):
            raise codec.ValueDecodeError(key.decode("utf-8"), f"reference map holds code {top}, outside the CLC code range")
        np.take(self._mask_table, codes, out=out)


__all__ = [
    "NATIVE_GROUPS", "UPSAMPLING_MODES", "MASK_IGNORE_INDEX", "NativeGroup", "NativeLayout", "NativeToImage",
    "ReBENDataset", "SampleBatch", "collate", "upsample_and_normalise",
]
