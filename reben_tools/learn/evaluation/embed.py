"""Embed an archive with a frozen encoder into a Parquet file (``reben embed``).

The file has one row per patch, in patch-id order::

    patch_id  string
    split     string
    labels    list<string>                 reBEN's 19-class names
    s1        fixed_size_list<float32>[D]  pooled radar embedding      (when embedded)
    s2        fixed_size_list<float32>[D]  pooled optical embedding    (when embedded)
    joint     fixed_size_list<float32>[D]  pooled joint embedding      (when embedded)

and the key-value metadata ``reben_tools.encoder``: JSON with the spec, model name, dim,
bands and input preparation. A column is absent when its modality was not embedded.

Batches stream from the archive at native resolution, are prepared on the device (GPU when
there is one, bf16 autocast there), and are written row group by row group, so memory stays
flat for reBEN's 549,488 patches.

Owns: embed_archive, EMBEDDING_COLUMNS, ENCODER_METADATA_KEY.
Does not own: encoders (encoders.py), loaders and devices (loaders.py, devices.py).
May import: numpy, pyarrow, torch; reben_tools.format; reben_tools.learn modules.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from reben_tools.format.bands import BAND_GROUPS, resolve_bands
from reben_tools.format.layout import SPLITS
from reben_tools.format.sources import ArchiveSource
from reben_tools.learn.data.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices
from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.runtime.devices import autocast, resolve_device, resolve_precision
from reben_tools.learn.runtime.distributed import EpochSampler

EMBEDDING_COLUMNS = ("s1", "s2", "joint")
ENCODER_METADATA_KEY = b"reben_tools.encoder"


def modalities_for(encoder, bands: str | list[str] | None) -> tuple[bool, bool]:
    """Which of S1 and S2 to embed: what ``--bands`` names (``S1``, ``S2``, ``ALL`` or band lists), within the encoder's input.

    Raises:
        TrainingError: the bands name a modality only partly, or one the encoder does not read.
    """
    if bands is not None and hasattr(encoder, "use_bands"):  # any-band encoders (DOFA) take any band list
        try:
            encoder.use_bands(bands)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
    spec = encoder.input
    if bands is None or hasattr(encoder, "use_bands"):
        return bool(spec.s1_bands), bool(spec.s2_bands)
    try:
        names = set(resolve_bands(bands))
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if getattr(encoder, "needs_all_inputs", False) and not names >= set(spec.s1_bands) | set(spec.s2_bands):
        raise TrainingError(
            f"{encoder.spec}: the model reads {list(spec.s1_bands) + list(spec.s2_bands)} together; omit --bands"
        )
    want = []
    for group, needed in (("S1", spec.s1_bands), ("S2", spec.s2_bands)):
        asked = names & set(BAND_GROUPS[group])
        if asked and not needed:
            raise TrainingError(f"{encoder.spec}: the encoder reads no {group} bands; drop them from --bands")
        if asked and asked != set(needed):
            raise TrainingError(
                f"{encoder.spec}: the encoder reads all of {list(needed)}; --bands gives only "
                f"{sorted(asked)} (use S1, S2 or ALL)"
            )
        want.append(bool(asked))
    return want[0], want[1]


def embed_archive(
    archive: str | os.PathLike | ArchiveSource,
    encoder,
    out: str | os.PathLike,
    split: str | None = None,
    bands: str | list[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write the embeddings of ``archive``'s patches (one split or all) to ``out``.

    Args:
        archive: a reben-tools archive directory.
        encoder: a module from :func:`reben_tools.learn.models.encoders.load_encoder`.
        out: the Parquet file to write (atomically: a temporary file renamed at the end).
        split: ``train``, ``validation``, ``test`` or None for all.
        bands: which modalities to embed (``S1``, ``S2``, ``ALL``); default: all the encoder reads.

    Returns:
        Summary: rows, columns, dim, seconds, samples per second.

    Raises:
        TrainingError: the archive lacks the modality's values, an unknown or empty split,
            or bands the encoder cannot take (one line, naming the archive and the part).
    """
    use_s1, use_s2 = modalities_for(encoder, bands)
    if split is not None and split not in SPLITS:
        raise TrainingError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    read = (*(BAND_GROUPS["S1"] if use_s1 else ()), *(BAND_GROUPS["S2"] if use_s2 else ()))
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    try:
        dataset = open_dataset(archive, read)
    except TrainingError as exc:
        raise TrainingError(
            str(exc).split("; choose --bands")[0].split(" -- choose --bands")[0]
            + "; embed only the modality it holds with --bands S1 or --bands S2"
        ) from None
    try:
        indices = split_indices(dataset, split) if split else np.arange(len(dataset))
        sampler = EpochSampler(indices, shuffle=False, pad=False)
        loader = make_loader(dataset, sampler, batch_size, default_workers() if workers is None else workers, dev, 0)
        preprocess = DevicePreprocess(dataset, dev)
        encoder = encoder.to(dev).eval()
        ids = np.asarray(dataset.metadata.column("patch_id").to_pylist(), dtype=object)
        splits = np.asarray(dataset.metadata.column("split").to_pylist(), dtype=object)
        names = list(dataset.class_names)
        metadata = encoder.describe()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
        rows = 0
        start = time.perf_counter()
        from tqdm import tqdm

        position = 0
        order = np.asarray(list(iter(sampler)), dtype=np.int64)
        writer, columns, schema = None, [], None
        try:
            with torch.inference_mode():
                for batch in tqdm(loader, desc=f"embed {split or 'all'}", disable=not progress, leave=False):
                    images, labels = preprocess(batch)
                    images = images.float()
                    s1 = images[:, :2].contiguous() if use_s1 else None
                    s2 = images[:, -12:].contiguous() if use_s2 else None
                    s1, s2 = encoder.input.prepare(s1, s2)
                    with autocast(dev, prec):
                        emb = encoder.embed(s1=s1, s2=s2)
                    if writer is None:  # the columns are the embeddings the encoder gives for these inputs
                        columns = [c for c in EMBEDDING_COLUMNS if c in emb]
                        schema = pa.schema(
                            [("patch_id", pa.string()), ("split", pa.string()), ("labels", pa.list_(pa.string()))]
                            + [(c, pa.list_(pa.float32(), encoder.dim)) for c in columns],
                            metadata={ENCODER_METADATA_KEY: json.dumps({**metadata, "columns": columns}).encode()},
                        )
                        writer = pq.ParquetWriter(tmp, schema)
                    idx = order[position : position + images.shape[0]]
                    position += images.shape[0]
                    hot = labels.cpu().numpy() > 0.5
                    arrays = [
                        pa.array(ids[idx].tolist(), pa.string()),
                        pa.array(splits[idx].tolist(), pa.string()),
                        pa.array([[names[k] for k in np.flatnonzero(h)] for h in hot], pa.list_(pa.string())),
                    ]
                    for c in columns:
                        values = emb[c].float().cpu().numpy().astype(np.float32, copy=False)
                        if values.ndim != 2 or values.shape[1] != encoder.dim:
                            raise TrainingError(
                                f"{encoder.spec}: {c} embeddings have shape {values.shape}, "
                                f"the encoder declares {encoder.dim} dimensions"
                            )
                        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), encoder.dim))
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                    rows += images.shape[0]
            if writer is None:
                raise TrainingError(f"{archive}: no patches to embed")
            writer.close()
            writer = None
            os.replace(tmp, out)
        finally:
            if writer is not None:
                writer.close()
            if tmp.exists():
                tmp.unlink()
    finally:
        dataset.archive.close()
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "columns": columns,
        "dim": encoder.dim,
        "file": str(out),
        "seconds": round(seconds, 3),
        "samples_per_s": round(rows / seconds, 2) if seconds else None,
        "device": str(dev),
    }
