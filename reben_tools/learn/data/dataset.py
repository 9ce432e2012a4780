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

Owns: ReBENDataset, multi-hot labels, masks and reference maps of samples,
ReBENDataset.plot (drawn by learn.sample_figure).
Does not own: the batch protocol and batch memory (batches.py), native layouts and upsampling/normalisation (transforms.py), value layout validation (values.py),
the archive format and LMDB access (reben_tools.format), DataLoaders for training (loaders.py).
May import: numpy, pyarrow, torch; reben_tools.format; reben_tools.splits.subsets; reben_tools.learn.data.batches,
.transforms, .values, .sample_figure.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from reben_tools.format import codec
from reben_tools.format.bands import ALL_BANDS, OUTPUT_SIZE, PUBLISHED_STATISTICS
from reben_tools.format.labels import NUM_CLASSES, class_names, code_to_class_index_table
from reben_tools.format.layout import PATCHES_FILE, SPLITS, ArchiveError
from reben_tools.format.metadata import read_metadata
from reben_tools.format.reader import Archive, BatchReader
from reben_tools.format.sources import ArchiveSource, open_archive_source
from reben_tools.learn.data.batches import SampleBatch, collate, empty_batch
from reben_tools.learn.data.transforms import (
    UPSAMPLING_MODES,
    NativeLayout,
    NativeToImage,
    NearestWriter,
    statistics_arrays,
    upsample_and_normalise,
)
from reben_tools.learn.data.values import LayoutCache
from reben_tools.splits.subsets import SubsetError, subset_table

# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


def _key_array(values: Sequence[str | None], column: str, ids: list[str]) -> np.ndarray:
    """Fixed-width bytes array of UTF-8 keys (no per-row Python objects: fork/COW friendly)."""
    missing = [pid for pid, v in zip(ids, values, strict=True) if not v]
    if missing:
        raise ValueError(f"metadata column {column!r} is empty for patch(es) {missing[:5]}")
    return np.array([v.encode("utf-8") for v in values if v], dtype=np.bytes_)  # none is empty (checked above)


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
    encoded = cast("pa.DictionaryArray", pc.dictionary_encode(flat))  # of an array (not a chunked one)
    dictionary = encoded.dictionary.to_pylist()
    index: dict[str | None, int] = {name: i for i, name in enumerate(names)}  # a null label is unknown
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
            files, ``patches.parquet``), a plain reBEN LMDB directory (``data.mdb``), as
            reBEN users hold it, or an :class:`reben_tools.format.sources.ArchiveSource`
            (see :func:`reben_tools.format.sources.open_archive_source`). A plain LMDB takes
            ``metadata``, else reBEN's metadata files found inside or beside it. Or the URL of an archive in a
            store (``s3://bucket/prefix``, any fsspec URL), read through a node-local cache.
        split: ``"train"``, ``"validation"``, ``"test"`` or None for all patches.
        bands: a band group (``"ALL"``, ``"S2"``, ``"S1"``, ``"10m"``, ``"20m"``, ``"60m"``,
            ``"RGB"``, ``"10m_20m"``, ``"S1_10m_20m"``) or a list of band names; channel
            order follows it. S1 bands come from the S2 patch's ``s1_name`` partner value.
        include_snow_cloud: also use the patches of
            ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (reBEN leaves them out);
            sets both ``include_snowy`` and ``include_cloudy`` unless they are given.
        include_snowy: keep patches flagged ``contains_seasonal_snow`` (ConfigILM's flag);
            None = ``include_snow_cloud``.
        include_cloudy: keep patches flagged ``contains_cloud_or_shadow`` (ConfigILM's flag);
            None = ``include_snow_cloud``. A patch flagged for both needs both flags.
        upsampling: ``"nearest"`` (pixel repetition, reBEN's convention) or ``"bilinear"``
            (``align_corners=False``) for 20 m / 60 m bands.
        normalisation: ``"published"`` (reBEN's train-split statistics of each band),
            ``"manifest"`` (the archive's own train-split statistics), a mapping
            ``{band: (mean, std)}``, or None (raw DNs / dB as float32).
        class_order: ``"alphabetical"`` (default; 0 = Agro-forestry areas) or ``"original"``.
        return_mask: also return ``mask``: the reference map as 19-class indices (120, 120),
            ``255`` (``labels.MASK_IGNORE_INDEX``) where the CLC class is unlabelled.
        native: return native-resolution groups instead of ``image`` (see :class:`NativeLayout`).
        metadata: reBEN metadata parquet file(s) to use instead of the archive's own (a plain
            LMDB directory without them: reBEN's files inside or beside it). Rows flagged for snow or cloud/shadow are dropped unless
            ``include_snowy`` / ``include_cloudy`` keep them.
        mask_dtype: ``torch.uint8`` (default, compact) or ``torch.int64`` (ready for
            ``cross_entropy(ignore_index=255)``).
        return_reference_map: also return ``reference_map``: the stored reference map, raw
            CLC codes as uint16 (120, 120) (what CutMix with label propagation pastes).
        train_fraction: keep only this share of the train split's patches, drawn with
            :func:`reben_tools.splits.subsets.fraction_indices` (deterministic, stratified, every
            class keeps a positive; the same rows as ``reben subset --fraction F --seed
            subset_seed``); validation and test patches are kept. None keeps all.
        subset_seed: seed of the ``train_fraction`` draw.
        cache_dir: for an archive given as a URL (``s3://bucket/prefix``): the node-local cache
            folder its shards are fetched into, each checked against the manifest's sha256
            before its first use (default: ``$REBEN_CACHE_DIR`` or the user cache folder; see
            ``reben_tools.format.shard_cache``).
        cache_size: for a URL: the cache bound in bytes or as ``"50G"`` (least recently used
            shards are evicted); default unbounded.

    A sample (``dataset[i]``) is a dict:

    * ``image``: float32 tensor (C, 120, 120), ``(value - mean) / std`` per band (not in native mode);
    * ``label``: float32 tensor (19,), multi-hot in ``class_order``;
    * ``patch_id``: str, the S2 patch id;
    * ``mask``: ``mask_dtype`` tensor (120, 120) when ``return_mask``;
    * ``reference_map``: uint16 tensor (120, 120) of raw CLC codes when ``return_reference_map``;
    * native mode: ``s1`` float32 (k, 120, 120), ``s2_10m`` uint16 (k, 120, 120),
      ``s2_20m`` uint16 (k, 60, 60), ``s2_60m`` uint16 (k, 20, 20) for the groups the
      bands use (k = the group's requested bands, see :attr:`layout`).

    Patches are ordered by patch id. With a DataLoader, pass ``collate_fn=collate``:
    ``__getitems__`` then delivers whole batches with no extra copy.

    Every LMDB data file's size is checked on construction and whenever a process opens it:
    a truncated ``data.mdb`` raises :class:`reben_tools.format.envcheck.TruncatedEnvironmentError`
    naming the file instead of faulting. Environments are shared with every other reader of
    this process (a second dataset, a verify); :meth:`close` (or ``with ReBENDataset(...) as
    ds:``) releases this dataset's share, and reading afterwards reopens them.
    """

    def __init__(
        self,
        root: str | os.PathLike | ArchiveSource,
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
        return_reference_map: bool = False,
        train_fraction: float | None = None,
        subset_seed: int = 0,
        include_snowy: bool | None = None,
        include_cloudy: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_size: int | str | None = None,
    ) -> None:
        super().__init__()
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)} or None")
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"unknown upsampling {upsampling!r}; expected one of {list(UPSAMPLING_MODES)}")
        if mask_dtype not in (torch.uint8, torch.int64):
            raise ValueError(f"mask_dtype must be torch.uint8 or torch.int64, got {mask_dtype}")
        self.source = open_archive_source(root, metadata, cache_dir=cache_dir, cache_size=cache_size)
        """Where the patches come from (archive or plain LMDB, and which metadata files)."""
        self.root = self.source.path  # for a URL: its node-local image (format.shard_cache)
        self.archive = Archive(self.root, cache_size=cache_size)
        self.archive.check_files()  # a truncated data.mdb is named now, not met by SIGBUS later
        self.split = split
        self.layout = NativeLayout.for_bands(bands)
        self.bands = self.layout.bands
        self.include_snowy = bool(include_snow_cloud if include_snowy is None else include_snowy)
        self.include_cloudy = bool(include_snow_cloud if include_cloudy is None else include_cloudy)
        self.include_snow_cloud = self.include_snowy and self.include_cloudy
        self.upsampling = upsampling
        self.class_order = class_order
        self.class_names = class_names(class_order)
        self.return_mask = return_mask
        self.native = native
        self.mask_dtype = mask_dtype
        self.return_reference_map = return_reference_map
        self.train_fraction = train_fraction
        self.subset_seed = subset_seed
        self.statistics = self._resolve_statistics(normalisation)
        self.normalisation = normalisation
        arrays = statistics_arrays(self.bands, self.statistics)
        self._mean: np.ndarray | None
        self._inv_std: np.ndarray | None
        self._mean, self._inv_std = arrays if arrays is not None else (None, None)

        table = self._read_rows()
        self.metadata: pa.Table = table
        """The metadata rows in use (reBEN schema), one per sample, sorted by patch id."""
        ids = cast("list[str]", table.column("patch_id").to_pylist())  # never null (format.metadata)
        self._keys = _key_array(ids, "patch_id", ids)
        self._s1_bands = tuple(b for b in self.bands if ALL_BANDS[b].modality == "S1")
        self._s2_bands = tuple(b for b in self.bands if ALL_BANDS[b].modality == "S2")
        self._s1_keys = _key_array(table.column("s1_name").to_pylist(), "s1_name", ids) if self._s1_bands else None
        self._shards = self._shard_indices(ids)
        self._check_partners(ids)
        self.labels: np.ndarray = _multi_hot(table, class_order)
        """(N, 19) float32 multi-hot labels of all samples, in ``class_order``."""
        self._layouts = LayoutCache()
        self._mask_table = code_to_class_index_table(class_order)
        self._writer = NearestWriter(self.layout, self._mean, self._inv_std)
        if (return_mask or return_reference_map) and len(self) and not self.has_reference_maps():
            raise ValueError(
                f"{self.root}: {'return_mask' if return_mask else 'return_reference_map'} needs reference maps, "
                f"and this LMDB holds none ({self.patch_ids[0]}_reference_map is absent: S1/S2 values only)"
            )

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
                raise ValueError(
                    f"{self.root}: a plain LMDB has no manifest statistics; use normalisation='published' "
                    "(reBEN's 120_nearest table) or a mapping {band: (mean, std)}"
                )
            try:
                table = self.archive.manifest["statistics"]["bands"]
                stats = {b: (float(v["mean"]), float(v["std"])) for b, v in table.items()}
            except (KeyError, TypeError, ValueError) as exc:
                raise ArchiveError(f"{self.root / 'manifest.json'}: malformed statistics ({exc!r})") from None
        else:
            raise ValueError(
                f"unknown normalisation {normalisation!r}; expected 'published', 'manifest', a mapping or None"
            )
        missing = [b for b in self.bands if b not in stats]
        if missing:
            raise ValueError(
                f"normalisation {normalisation if isinstance(normalisation, str) else 'mapping'!r} has no statistics for band(s) {missing}"
            )
        return {b: stats[b] for b in self.bands}

    def _read_rows(self) -> pa.Table:
        table = read_metadata(self.source.metadata_files(include_flagged=self.include_snowy or self.include_cloudy))
        for column, keep in (
            ("contains_seasonal_snow", self.include_snowy),
            ("contains_cloud_or_shadow", self.include_cloudy),
        ):
            if not keep:
                table = table.filter(pc.invert(pc.fill_null(table[column], False)))  # type: ignore[type-var,call-overload]  # stubs want a pa.Scalar fill; a bool works
        if self.train_fraction is not None:
            try:
                table = subset_table(table, self.train_fraction, self.subset_seed, source=str(self.root))
            except SubsetError as exc:
                raise ValueError(str(exc)) from None
        if self.split is not None:
            table = table.filter(pc.equal(table["split"], self.split))  # type: ignore[call-overload]  # stubs want a pa.Scalar; a str works
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
        shard_of = dict(zip(patches.column("patch_id").to_pylist(), patches.column("shard").to_pylist(), strict=True))
        out = np.empty(len(ids), dtype=np.int32)
        for i, pid in enumerate(ids):
            shard = shard_of.get(pid)
            if shard is None:
                raise ArchiveError(f"{path}: patch {pid!r} of the metadata has no row (no shard)")
            if shard not in index_of:
                raise ArchiveError(f"{path}: patch {pid!r} is in shard {shard!r}, which the manifest does not list")
            out[i] = index_of[shard]
        return out

    def _check_partners(self, ids: list[str]) -> None:
        """Refuse, naming the keys, patches whose archive lacks a value the bands need.

        An archive encoded from a partial release records per patch which values it holds
        (``has_s2`` / ``has_s1`` in ``patches.parquet``); a dataset over S2 bands never
        needs the S1 values, one over S1 bands needs every patch's S1 partner."""
        path = self.root / PATCHES_FILE
        if not self.archive.is_sharded or not path.is_file() or not ids:
            return
        names = pq.read_schema(path).names
        needed = [
            (c, kind)
            for c, kind, bands in (
                ("has_s2", "S2 value", self._s2_bands),
                ("has_s1", "S1 partner value", self._s1_bands),
            )
            if bands and c in names
        ]
        if not needed:
            return
        patches = pq.read_table(path, columns=["patch_id", "s1_name"] + [c for c, _ in needed])
        wanted = set(ids)
        missing = []
        for row in patches.to_pylist():
            if row["patch_id"] in wanted:
                for column, kind in needed:
                    if row[column] is False:
                        key = row["patch_id"] if column == "has_s2" else row["s1_name"] or "(no s1_name)"
                        missing.append(f"{key} ({kind} of {row['patch_id']})")
        if missing:
            shown = "; ".join(sorted(missing)[:5]) + (f"; ... {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(
                f"{self.root}: {len(missing)} value(s) the bands {list(self.bands)} need are not in "
                f"the archive: {shown}. Choose bands without them (e.g. bands='S2') or metadata "
                "without those patches"
            )

    # -- public helpers ------------------------------------------------------------------

    @property
    def num_channels(self) -> int:
        """C, the number of bands."""
        return len(self.bands)

    @property
    def patch_ids(self) -> list[str]:
        """The samples' patch ids, in sample order."""
        return [k.decode("utf-8") for k in self._keys]

    @property
    def sample_shards(self) -> np.ndarray:
        """(N,) int32: for each sample, the index of the shard holding it (``archive.shard_names`` order)."""
        return self._shards

    def close(self) -> None:
        """Release this dataset's LMDB environments (other readers of this process keep theirs).

        Reading after ``close`` reopens them; closing twice is harmless.
        """
        self.archive.close()

    def __enter__(self) -> ReBENDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            mask, mask_tensor = empty_batch((batch, OUTPUT_SIZE, OUTPUT_SIZE), np.uint8)
        reference = None
        if self.return_reference_map:
            reference, reference_tensor = empty_batch((batch, OUTPUT_SIZE, OUTPUT_SIZE), np.uint16)
        nearest_image = not self.native and self.upsampling == "nearest"
        if nearest_image:
            image, image_tensor = empty_batch((batch, self.num_channels, OUTPUT_SIZE, OUTPUT_SIZE), np.float32)
            writer = self._writer
        else:
            allocated = {
                g.name: empty_batch((batch, len(g.bands), g.size, g.size), g.dtype) for g in self.layout.groups
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
                if mask is not None or reference is not None:
                    codes = self._reference_codes(reader, j)
                    if mask is not None:
                        np.take(self._mask_table, codes, out=mask[i])
                    if reference is not None:
                        reference[i] = codes
        if nearest_image:
            collated["image"] = image_tensor
        else:
            native = {name: tensor for name, (_, tensor) in allocated.items()}
            if self.native:
                collated.update(native)
            else:
                collated["image"] = upsample_and_normalise(
                    native,
                    self.layout,
                    None if self._mean is None else torch.from_numpy(self._mean),
                    None if self._inv_std is None else torch.from_numpy(self._inv_std),
                    self.upsampling,
                )
        collated["label"] = torch.from_numpy(self.labels[idx])
        collated["patch_id"] = [self._keys[j].decode("utf-8") for j in idx.tolist()]
        if mask is not None:
            collated["mask"] = mask_tensor if self.mask_dtype == torch.uint8 else mask_tensor.to(torch.int64)
        if reference is not None:
            collated["reference_map"] = reference_tensor
        return SampleBatch(collated, batch)

    def reference_map(self, index: int) -> np.ndarray:
        """The CLC codes of sample ``index``'s reference map: uint16 (120, 120), 999 where no polygon."""
        key = self._keys[int(index) % len(self)] + b"_reference_map"
        with self.archive.batch_reader() as reader:
            codes = self._layouts.arrays(
                key, reader.get(key, int(self._shards[int(index) % len(self)])), "reference_map", ["Data"]
            )["Data"]
            return np.array(codes, dtype=np.uint16)

    def index_of(self, patch_id: str) -> int:
        """The sample index of ``patch_id``.

        Raises:
            KeyError: the dataset (this split, these flags) holds no such patch; the message says so.
        """
        found = np.flatnonzero(self._keys == patch_id.encode("utf-8"))
        if not len(found):
            raise KeyError(
                f"{self.root}: no patch {patch_id!r} in this dataset (split={self.split!r}, "
                f"include_snow_cloud={self.include_snow_cloud})"
            )
        return int(found[0])

    def plot(self, sample: Mapping, show_titles: bool = True, suptitle: str | None = None):
        """A Figure of one sample, as torchgeo's datasets draw them: Sentinel-2 RGB, Sentinel-1
        VV and VH (those the dataset's bands hold), the reference map in the CORINE legend's
        colours, and the labels as the title (``sample["prediction"]``, a multi-hot or
        probability vector of 19, is shown under them when present).

        Args:
            sample: ``dataset[i]`` (not native mode).
            show_titles: panel titles and the labels title.
            suptitle: replaces the patch id above the labels.

        Returns:
            a matplotlib Figure (save it with ``figure.savefig(path)``).
        """
        from reben_tools.learn.data.sample_figure import plot_sample

        if "image" not in sample:
            raise ValueError("plot needs a sample with 'image' (native=False)")
        patch_id = sample["patch_id"]
        label = np.asarray(sample["label"])
        names = [self.class_names[i] for i in np.flatnonzero(label > 0.5)]
        prediction = None
        if "prediction" in sample:
            prediction = [self.class_names[i] for i in np.flatnonzero(np.asarray(sample["prediction"]) > 0.5)]
        try:
            reference_map = self.reference_map(self.index_of(patch_id))
        except KeyError:  # a plain LMDB of S1/S2 values only: drawn without the map panel
            reference_map = None
        return plot_sample(
            np.asarray(sample["image"]),
            self.bands,
            names,
            reference_map=reference_map,
            patch_id=suptitle if suptitle is not None else patch_id,
            statistics=self.statistics,
            prediction=prediction,
            show_titles=show_titles,
        )

    def _read_arrays(self, reader: BatchReader, j: int) -> dict[str, np.ndarray]:
        """Zero-copy views of the sample's requested bands (valid while ``reader`` is open)."""
        shard = int(self._shards[j])
        arrays: dict[str, np.ndarray] = {}
        if self._s2_bands:
            key = self._keys[j]
            arrays.update(self._layouts.arrays(key, reader.get(key, shard), "S2", self._s2_bands))
        if self._s1_keys is not None:  # set exactly when there are S1 bands
            key = self._s1_keys[j]
            arrays.update(self._layouts.arrays(key, reader.get(key, shard), "S1", self._s1_bands))
        return arrays

    def _reference_codes(self, reader: BatchReader, j: int) -> np.ndarray:
        """Sample ``j``'s reference map, uint16 (120, 120), checked: layout and codes < 1000."""
        key = self._keys[j] + b"_reference_map"
        codes = self._layouts.arrays(key, reader.get(key, int(self._shards[j])), "reference_map", ["Data"])["Data"]
        top = int(codes.max())
        if top >= len(self._mask_table):
            raise codec.ValueDecodeError(
                key.decode("utf-8"), f"reference map holds code {top}, outside the CLC code range"
            )
        return codes

    def has_reference_maps(self, index: int = 0) -> bool:
        """Whether the archive holds reference maps: sample ``index``'s map is there (one lookup, in
        that sample's shard: a training node of an archive in a store asks in one of its own shards).

        A plain reBEN LMDB of S1 and S2 values only (what most ConfigILM users hold) has none."""
        if not len(self):
            return False
        try:
            with self.archive.batch_reader() as reader:
                reader.get(self._keys[index] + b"_reference_map", int(self._shards[index]))
        except KeyError:
            return False
        return True

    def with_reference_maps(self) -> ReBENDataset:
        """A shallow copy of this dataset (same archive handle, rows and labels) that also returns ``reference_map``."""
        clone = copy.copy(self)
        clone.return_reference_map = True
        return clone

    def check_reference_maps(self, indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Check that samples ``indices`` (all if None) have a readable 120x120 uint16 reference map.

        Reads only the value headers (a known header is checked once), so the cost is one
        LMDB lookup per sample.

        Raises:
            KeyError: a reference map is missing (the message names the key and the archive).
            reben_tools.format.codec.ValueDecodeError: a value has the wrong tensors, dtype or
                shape (the message names the key).
        """
        idx = range(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).tolist()
        with self.archive.batch_reader() as reader:
            for j in idx:
                key = self._keys[j] + b"_reference_map"
                self._layouts.arrays(key, reader.get(key, int(self._shards[j])), "reference_map", ["Data"])


__all__ = ["ReBENDataset", "SampleBatch", "collate"]
