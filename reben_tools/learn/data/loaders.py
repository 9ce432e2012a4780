"""From an archive to batches on the training device: dataset opening, splits, DataLoaders, device preprocessing.

Data move at native resolution (uint16 S2 at 10/20/60 m, float32 S1) through a DataLoader
with pinned memory; upsampling to 120x120 and normalisation run on the training device
(on a CPU with workers, in the workers instead).

Owns: default_workers, archive_identity, run_source, recorded_source, open_dataset, check_sample, split_indices, train_label_frequency,
training_dataset (reference maps for mixing), CollateToImages, make_loader, DevicePreprocess.
Does not own: the dataset itself (dataset.py), upsampling kernels (transforms.py), samplers (distributed.py),
augmentation (augment.py).
May import: numpy, torch; reben_tools.format; reben_tools.learn.runtime.config, .dataset.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from reben_tools.format.codec import ValueDecodeError
from reben_tools.format.layout import MANIFEST_FILE, SPLITS, ArchiveError
from reben_tools.format.object_store import is_remote, local_path
from reben_tools.format.shard_cache import localise_archive
from reben_tools.format.sources import (
    ArchiveSource,
    SourceError,
    open_archive_source,
    plain_statistics_line,
    source_from_record,
)
from reben_tools.learn.data.batches import collate
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.runtime.config import TrainingError


def default_workers(local_processes: int = 1) -> int:
    """DataLoader workers per process: this process's share of the node's CPU cores, minus one for the loop.

    Args:
        local_processes: processes on this node (torchrun's ``LOCAL_WORLD_SIZE``), not the
            global process count: on 2 nodes x 8 GPUs x 64 cores each process gets 7 workers.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, local_processes) - 1))


def archive_identity(archive: str | os.PathLike | ArchiveSource) -> str | None:
    """The identity of an archive: sha256 (hex) of its ``manifest.json`` bytes; ``None`` without one.

    The manifest lists every shard's content digest, so two archives with the same manifest
    hold the same values wherever they are copied; a resumed run refuses another archive.
    An :class:`ArchiveSource` gives :attr:`ArchiveSource.identity` (a plain LMDB's covers its
    entry count and its metadata files' digests).
    """
    if isinstance(archive, ArchiveSource):
        try:
            return archive.identity
        except ArchiveError as exc:
            raise TrainingError(str(exc)) from None
    if is_remote(archive):
        try:
            archive = localise_archive(str(archive))  # the archive-level files only
        except ArchiveError as exc:
            raise TrainingError(f"cannot read archive {archive}: {exc}") from None
    path = local_path(archive) / MANIFEST_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read ({exc})") from None


def run_source(
    archive: str | os.PathLike | ArchiveSource, metadata: Sequence[str | os.PathLike] | None = None
) -> ArchiveSource:
    """The :class:`ArchiveSource` of a run's ``archive`` and ``metadata`` (see ``format.sources``).

    Raises:
        TrainingError: the one line of :class:`SourceError` (names the path and what to give).
    """
    try:
        return open_archive_source(archive, list(metadata or []) or None)
    except SourceError as exc:  # every process resolves the same files
        raise TrainingError(str(exc), all_processes=True) from None


def recorded_source(record: dict) -> tuple[str, list[str]]:
    """``(archive, metadata files)`` of the source a run recorded (``ArchiveSource.record``), checked
    unchanged: what ``--resume`` and ``reben evaluate`` read when no ``--archive`` is given.

    Raises:
        TrainingError: the path or a metadata file is gone, or a metadata file changed (one line naming it).
    """
    try:
        source = source_from_record(record)
    except SourceError as exc:
        raise TrainingError(str(exc), all_processes=True) from None
    return source.run_arguments()


def open_dataset(
    archive: str | os.PathLike | ArchiveSource,
    bands: tuple[str, ...],
    class_order: str = "alphabetical",
    include_snow_cloud: bool = False,
    train_fraction: float | None = None,
    subset_seed: int = 0,
    include_snowy: bool | None = None,
    include_cloudy: bool | None = None,
) -> ReBENDataset:
    """The native-resolution :class:`ReBENDataset` of all splits, checked to hold ``bands``.

    One dataset per process serves every split (through :func:`split_indices`): an LMDB
    environment can be open only once per process. ``train_fraction`` keeps that stratified
    share of the train split (:class:`ReBENDataset`'s ``train_fraction``/``subset_seed``);
    ``include_snowy`` / ``include_cloudy`` keep flagged patches as the dataset's flags do.

    ``archive`` may be an :class:`ArchiveSource` (a plain reBEN LMDB with its metadata files):
    its values must hold reBEN's band set, which reBEN's published statistics normalise.

    Raises:
        TrainingError: the archive cannot be opened or lacks values for some of the bands
            (e.g. an S2-only archive asked for S1); the message says what to change.
    """
    try:
        dataset = ReBENDataset(
            archive,
            split=None,
            bands=bands,
            include_snow_cloud=include_snow_cloud,
            class_order=class_order,
            native=True,
            train_fraction=train_fraction,
            subset_seed=subset_seed,
            include_snowy=include_snowy,
            include_cloudy=include_cloudy,
        )
    except (ArchiveError, ValueError, OSError) as exc:
        raise TrainingError(f"cannot read archive {archive}: {exc}") from None
    try:
        _check_dataset(dataset, archive, bands)
    except TrainingError:
        dataset.archive.close()
        raise
    return dataset


def _check_dataset(dataset: ReBENDataset, archive, bands: tuple[str, ...]) -> None:
    manifest = dataset.archive.manifest
    if manifest is None and len(dataset):
        first = dataset.metadata.slice(0, 1).to_pylist()[0]
        try:
            plain_statistics_line(dataset.source, first["patch_id"], first["s1_name"])
        except SourceError as exc:
            raise TrainingError(str(exc)) from None
    if manifest is not None:
        stored = {b["name"] for b in manifest.get("bands", [])}
        missing = [b for b in bands if b not in stored]
        if missing:
            raise TrainingError(
                f"{archive}: the archive holds no band(s) {missing}; choose --bands from {sorted(stored)}"
            )
    if len(dataset) == 0:
        raise TrainingError(f"{archive}: the archive's metadata lists no patches")
    if dataset.archive.cache is not None:
        # read from a store: checking a sample here would fetch a shard this node may never read
        # (--sampler shard-local); the sampler checks one of the node's own samples once fetched
        return
    check_sample(dataset, archive, bands, 0)


def check_sample(dataset: ReBENDataset, archive, bands: tuple[str, ...], index: int) -> None:
    """Read sample ``index``; TrainingError naming the modality when the archive lacks the bands' values."""
    try:
        dataset.__getitems__([index])
    except (KeyError, ValueDecodeError) as exc:
        modality = "S1" if any(b in ("VV", "VH") for b in bands) else "S2"
        raise TrainingError(
            f"{archive}: cannot read the requested bands {list(bands)} ({exc}); the archive may lack "
            f"{modality} values -- choose --bands for the modalities it holds"
        ) from None


def split_indices(dataset: ReBENDataset, split: str) -> np.ndarray:
    """Dataset indices (int64, ascending = patch-id order) of the patches of ``split``.

    Raises:
        TrainingError: unknown split, or the archive has no patch in it.
    """
    if split not in SPLITS:
        raise TrainingError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    splits = np.asarray(dataset.metadata.column("split").to_pylist(), dtype=object)
    indices = np.flatnonzero(splits == split)
    if indices.size == 0:
        raise TrainingError(
            f"{dataset.root}: no patches in split {split!r} (the archive has {sorted(set(splits.tolist()))}); "
            "use an archive with train, validation and test patches"
        )
    return indices


def training_dataset(dataset: ReBENDataset, indices: np.ndarray, needs_reference_maps: bool) -> ReBENDataset:
    """The dataset the training loader reads: ``dataset`` itself, or a copy that also carries reference maps.

    Reference maps travel only when a mix that needs them is on (``--mix cutmix-lp``): as
    uint16 (B, 120, 120) raw CLC codes next to the native bands, in the training loader
    only (validation and test read ``dataset``). Before training starts, every training
    sample's reference map is checked (a header read per sample).

    Raises:
        TrainingError: the archive has no reference map for a training patch, or one of the
            wrong tensors, dtype or shape; one line naming the archive and the key.
    """
    if not needs_reference_maps:
        return dataset
    first = int(indices[0]) if len(indices) else 0
    if not dataset.has_reference_maps(first):
        raise TrainingError(
            f"{dataset.root}: --mix cutmix-lp needs reference maps, and this "
            f"{'LMDB' if dataset.archive.manifest is None else 'archive'} holds none "
            f"({dataset.patch_ids[first]}_reference_map is absent: S1/S2 values only); "
            "use --mix cutmix, or an LMDB with the maps"
        )
    try:
        dataset.check_reference_maps(indices)
    except KeyError as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise TrainingError(f"{dataset.root}: --mix cutmix-lp needs a reference map per patch: {message}") from None
    except ValueDecodeError as exc:
        raise TrainingError(f"{dataset.root}: --mix cutmix-lp cannot use the reference maps: {exc}") from None
    return dataset.with_reference_maps()


def train_label_frequency(dataset: ReBENDataset) -> np.ndarray:
    """Share of the train patches holding each class, ``(19,)`` float64 in the dataset's class order.

    Scoring every patch's class k by this frequency is the image-blind prior baseline: the
    figure a model has to beat, which is well above the share of positive labels for micro AP.
    """
    labels = dataset.labels[split_indices(dataset, "train")]
    return labels.astype(np.float64).mean(axis=0)


class CollateToImages:
    """``collate_fn`` that also upsamples and normalises, for CPU training with DataLoader workers.

    On a CPU the "device" step would otherwise run in the training process; in the workers
    it overlaps with the training step. Output: the batch dict with ``image`` (B, C, 120, 120)
    float32 in place of the native groups.
    """

    def __init__(self, dataset: ReBENDataset) -> None:
        self.transform = dataset.native_transform()

    def __call__(self, samples) -> dict:
        batch = collate(samples)
        native = {g.name for g in self.transform.layout.groups}
        images = self.transform(batch)
        return {"image": images, **{k: v for k, v in batch.items() if k not in native}}


def make_loader(
    dataset, sampler: Sampler, batch_size: int, workers: int, device: torch.device, seed: int
) -> DataLoader:
    """DataLoader over native-resolution samples: pinned memory on CUDA, persistent workers.

    Batches stay at native resolution (uint16 S2, about a third of the float32 bytes) for the
    host-to-device copy; on a CPU with workers, the workers upsample and normalise instead
    (:class:`CollateToImages`). The loader has its own random generator, so creating an
    iterator never draws from the global torch generator (part of what makes a resumed run
    continue exactly).
    """
    generator = torch.Generator().manual_seed(seed)
    collate_fn = CollateToImages(dataset) if device.type == "cpu" and workers > 0 else collate
    kwargs: dict[str, Any] = dict(persistent_workers=True, prefetch_factor=4) if workers > 0 else {}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        generator=generator,
        collate_fn=collate_fn,
        **kwargs,
    )


class DevicePreprocess:
    """Native batch on the host -> ``(images (B, C, 120, 120) float32 normalised, labels (B, 19))`` on ``device``.

    Copies with ``non_blocking=True`` (from pinned memory on CUDA), then upsamples and
    normalises on the device through the dataset module; channels-last on CUDA.
    """

    def __init__(self, dataset: ReBENDataset, device: torch.device) -> None:
        self.device = device
        self.transform = dataset.native_transform().to(device)
        self.channels_last = device.type == "cuda"

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "image" in batch:  # already upsampled by CollateToImages in a CPU worker
            images = batch["image"].to(self.device, non_blocking=True)
        else:
            images = self.transform(batch)  # moves the native groups with non_blocking copies
        labels = batch["label"].to(self.device, non_blocking=True).float()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels
