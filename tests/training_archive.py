"""A small learnable archive for training tests and the training benchmark.

Built with the core writers (codec, archive shards, metadata, manifest), with pixel values
that depend on the labels so a model can learn: each class has a signature added to every
band, so the labels are recoverable from the pixels of either modality.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
from shapely.geometry import box

from reben_tools.format import codec
from reben_tools.format.bands import PUBLISHED_STATISTICS, S1_BANDS, S2_BANDS
from reben_tools.format.labels import ALPHABETICAL_ORDER, clc_legend
from reben_tools.format.layout import PATCHES_FILE, SHARDS_DIR
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import write_metadata
from reben_tools.format.naming import patch_id as make_patch_id
from reben_tools.format.naming import s1_patch_name, s2v1_name
from reben_tools.format.shards import write_shard

PRODUCT = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
S1_PRODUCT = "S1B_IW_GRDH_1SDV_20170612T165809"
LEARNABLE_CLASSES = 6
"""Labels are drawn from the first classes of the alphabetical order, so each is frequent."""


def _code_of_class() -> dict[str, int]:
    codes: dict[str, int] = {}
    for code, entry in sorted(clc_legend().items()):
        codes.setdefault(entry.class19, code)
    return codes


def build_learnable_archive(
    root: Path,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    shards: int = 2,
    noise: float = 0.6,
    with_s1: bool = True,
    reference_maps: str = "stripes",
) -> dict:
    """Write an archive of ``sum(counts)`` patches under ``root``; return its facts.

    Each patch has 1 to 3 labels out of the first ``LEARNABLE_CLASSES`` classes. Every band
    of a patch is ``mean + std * (sum of the label signatures + noise * N(0, 1))`` at native
    resolution (S2 rounded to uint16, >= 1), S1 float32 dB. ``reference_maps``: ``"stripes"``
    (one vertical stripe of a CLC code per label), ``"none"`` (no reference-map values) or
    ``"wrong_shape"`` (stripes, but the last train patch's map is 60 x 60).

    Returns:
        ``{"root", "patch_ids": {split: [...]}, "labels": {patch_id: [names]}}``.
    """
    counts = counts or {"train": 96, "validation": 32, "test": 32}
    rng = np.random.default_rng(seed)
    signature = rng.choice([-1.0, 1.0], size=(LEARNABLE_CLASSES, len(S1_BANDS) + len(S2_BANDS))) * 0.9
    band_index = {b: i for i, b in enumerate(list(S1_BANDS) + list(S2_BANDS))}
    code_of = _code_of_class()
    rows, items_per_shard, patch_rows = [], [dict() for _ in range(shards)], []
    patch_ids: dict[str, list[str]] = {s: [] for s in counts}
    labels_of: dict[str, list[str]] = {}
    n = 0
    for split, count in counts.items():
        for _ in range(count):
            x, y = n % 90, n // 90
            n += 1
            pid = make_patch_id(PRODUCT, x, y)
            s1 = s1_patch_name(S1_PRODUCT, "33UUP", x, y)
            chosen = sorted(rng.choice(LEARNABLE_CLASSES, size=int(rng.integers(1, 4)), replace=False))
            names = sorted(ALPHABETICAL_ORDER[c] for c in chosen)
            effect = signature[chosen].sum(axis=0)
            s2 = {}
            for band, info in S2_BANDS.items():
                mean, std = PUBLISHED_STATISTICS[band]
                z = effect[band_index[band]] + noise * rng.standard_normal((info.size, info.size))
                s2[band] = np.clip(np.rint(mean + std * z), 1, 65535).astype(np.uint16)
            s1_bands = {}
            for band in S1_BANDS:
                mean, std = PUBLISHED_STATISTICS[band]
                z = effect[band_index[band]] + noise * rng.standard_normal((120, 120))
                s1_bands[band] = (mean + std * z).astype(np.float32)
            reference = np.zeros((120, 120), dtype=np.uint16)
            stripes = np.array_split(np.arange(120), len(chosen))
            for c, cols in zip(chosen, stripes, strict=True):
                reference[:, cols] = code_of[ALPHABETICAL_ORDER[c]]
            shard = n % shards
            items = items_per_shard[shard]
            items[pid] = codec.encode_s2(s2)
            if with_s1:
                items[s1] = codec.encode_s1(s1_bands)
            if reference_maps == "wrong_shape" and split == "train" and _ == count - 1:
                items[pid + "_reference_map"] = codec.encode_tensors({"Data": reference[:60, :60].copy()})
            elif reference_maps != "none":
                items[pid + "_reference_map"] = codec.encode_reference_map(reference)
            rows.append(
                dict(
                    patch_id=pid,
                    labels=names,
                    split=split,
                    country="Austria",
                    s1_name=s1,
                    s2v1_name=s2v1_name(pid),
                    contains_seasonal_snow=False,
                    contains_cloud_or_shadow=False,
                )
            )
            ulx, uly = 300000 + 1200 * x, 5400000 - 1200 * y
            patch_rows.append(
                dict(
                    patch_id=pid,
                    s1_name=s1,
                    shard=f"shard-{shard:03d}",
                    tile="33UUP",
                    x=x,
                    y=y,
                    crs="EPSG:32633",
                    ulx=float(ulx),
                    uly=float(uly),
                    split=split,
                    country="Austria",
                    labels=names,
                    geometry=box(ulx, uly - 1200, ulx + 1200, uly),
                )
            )
            patch_ids[split].append(pid)
            labels_of[pid] = names
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    infos = [write_shard(root / SHARDS_DIR, f"shard-{i:03d}", items) for i, items in enumerate(items_per_shard)]
    write_metadata(root, pa.Table.from_pylist(rows))
    frame = gpd.GeoDataFrame(patch_rows, geometry="geometry", crs="EPSG:32633").to_crs("EPSG:4326")
    frame.to_parquet(root / PATCHES_FILE)
    manifest = build_manifest(
        infos,
        {"patches": n, **counts},
        PUBLISHED_STATISTICS,
        inputs=[],
        config={"seed": seed},
        tool="tests/training_archive.py",
    )
    write_manifest(root, manifest)
    return {"root": root, "patch_ids": patch_ids, "labels": labels_of}
