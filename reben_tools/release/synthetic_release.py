"""A small synthetic reBEN GeoTIFF release for tests, benchmarks and examples.

Owns: the synthetic tiles, synthetic patch values and reference maps, and
:func:`write_synthetic_release` (GeoTIFF folders plus reBEN metadata files).
Does not own: the release layout and reading (``release.geotiff_release``), writing GeoTIFFs
(``release.geotiff_write``), the synthetic demo region of ``reben demo`` (``build``).
May import: ``format`` (bands, naming, labels, metadata, layout), ``geo.split_rule``,
``release.geotiff_release``, ``release.geotiff_write``, numpy, tqdm (lazily).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reben_tools.format.bands import PATCH_SIZE_M, S1_BANDS, S2_BANDS
from reben_tools.release.geotiff_release import (
    REFERENCE_MAP_BAND,
    REFERENCE_MAPS_RELEASE_DIR,
    S1_RELEASE_DIR,
    S2_RELEASE_DIR,
)
from reben_tools.release.geotiff_write import write_patch


@dataclass(frozen=True)
class SyntheticTile:
    """A real Sentinel-2 tile: UTM EPSG code, upper-left corner (metres) and country."""

    tile: str
    epsg: int
    ulx: int
    uly: int
    country: str
    codes: tuple[int, ...]
    """CLC codes typical of the area, used to paint reference maps."""


SYNTHETIC_TILES: tuple[SyntheticTile, ...] = (
    SyntheticTile("33UUP", 32633, 300000, 5400000, "Austria", (211, 231, 242, 243, 311, 312, 313, 112)),
    SyntheticTile("29UPU", 32629, 600000, 5900040, "Ireland", (231, 243, 312, 324, 411, 512, 112)),
    SyntheticTile("29SND", 32629, 499980, 4400040, "Portugal", (212, 221, 223, 244, 311, 323, 324, 523)),
    SyntheticTile("35VPK", 32635, 600000, 7000020, "Finland", (312, 313, 324, 412, 512, 211, 231)),
)
"""Tiles BigEarthNet covers; upper-left corners as the georeferencing of the real
BigEarthNet patches in ``tests/data/ben_v1_examples`` implies (``ulx - 1200 x``, ``uly + 1200 y``)."""


@dataclass(frozen=True)
class SyntheticRelease:
    """What :func:`write_synthetic_release` wrote.

    Attributes:
        root: the release folder.
        s2_dir, s1_dir, reference_maps_dir: its three parts.
        metadata_files: ``metadata.parquet`` and the snow/cloud/shadow file.
        patch_ids: every S2 patch id, sorted.
        s1_names: patch id -> S1 partner name.
    """

    root: Path
    s2_dir: Path
    s1_dir: Path
    reference_maps_dir: Path
    metadata_files: tuple[Path, Path]
    patch_ids: tuple[str, ...]
    s1_names: dict[str, str]


def _smooth_field(rng: np.random.Generator) -> np.ndarray:
    """A 120x120 float field in [0, 1] with structure at several scales."""
    coarse = np.kron(rng.random((6, 6)), np.ones((20, 20)))
    medium = np.kron(rng.random((24, 24)), np.ones((5, 5)))
    fine = rng.random((120, 120))
    return 0.6 * coarse + 0.3 * medium + 0.1 * fine


def _synthetic_reference_map(rng: np.random.Generator, codes: tuple[int, ...]) -> np.ndarray:
    """Voronoi regions painted with 1-4 CLC codes, sometimes crossed by a road (code 122)."""
    n_regions = int(rng.integers(1, 5))
    chosen = rng.choice(np.array(codes), size=n_regions, replace=True)
    seeds = rng.random((n_regions, 2)) * 120
    rows, cols = np.mgrid[0:120, 0:120] + 0.5
    distance = (rows[None] - seeds[:, 0, None, None]) ** 2 + (cols[None] - seeds[:, 1, None, None]) ** 2
    reference_map = chosen[np.argmin(distance, axis=0)].astype(np.uint16)
    if rng.random() < 0.3:
        row = int(rng.integers(0, 116))
        reference_map[row : row + 4, :] = 122
    return reference_map


def synthetic_patch(
    rng: np.random.Generator, codes: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Plausible pixels of one patch: (S2 uint16 bands at native size, S1 float32 dB, reference map).

    S2 values scatter around the published reBEN band means (never 0, the no-data value);
    lower-resolution bands are block means of the same ground field, so bands correlate.
    """
    from reben_tools.format.bands import PUBLISHED_STATISTICS

    ground = _smooth_field(rng)
    s2 = {}
    for band in S2_BANDS.values():
        factor = 120 // band.size
        field_native = ground.reshape(band.size, factor, band.size, factor).mean(axis=(1, 3))
        mean, std = PUBLISHED_STATISTICS[band.name]
        values = mean + std * (1.2 * (field_native - 0.5)) + rng.normal(0, 0.05 * std, field_native.shape)
        s2[band.name] = np.clip(np.rint(values), 1, 16000).astype(np.uint16)
    s1 = {}
    for pol in S1_BANDS:
        mean, std = PUBLISHED_STATISTICS[pol]
        s1[pol] = (mean + std * (ground - 0.5) + rng.normal(0, 0.3 * std, ground.shape)).astype(np.float32)
    return s2, s1, _synthetic_reference_map(rng, codes)


def write_synthetic_release(
    out_dir: str | os.PathLike,
    n_patches: int,
    seed: int = 0,
    nested: bool = True,
    suffix: str = ".tif",
    flagged_fraction: float = 0.15,
    progress: bool = False,
) -> SyntheticRelease:
    """Write a small, realistic reBEN GeoTIFF release plus its two metadata files.

    Patches lie on reBEN's 1,200 m grid of real tiles (:data:`SYNTHETIC_TILES`, real UTM CRSs and
    corners), spread over one S2 product per tile; each has an S1 partner named as reBEN
    names them (``<S1 product>_<tile>_<x>_<y>``, acquired 0.2 to 5.7 days from the S2 sensing time), a reference map of real
    CLC codes, and a metadata row (labels from the map, reBEN split from x/y, the tile's
    country, ~``flagged_fraction`` flagged for snow or cloud).

    Args:
        out_dir: folder to create the release in (``BigEarthNet-S2``, ``BigEarthNet-S1``,
            ``Reference_Maps``, ``metadata.parquet``, the snow/cloud/shadow file).
        n_patches: number of S2 patches.
        seed: the random seed; the same seed gives the same files.
        nested: reBEN's ``<product>/<patch>/`` folders, or flat ``<patch>/`` folders.
        suffix: file ending (``.tif`` or ``.tiff``).
        flagged_fraction: share of patches flagged for snow or cloud/shadow.
        progress: show a tqdm bar.
    """
    from datetime import datetime, timedelta

    from tqdm import tqdm

    from reben_tools.format import naming
    from reben_tools.format.labels import labels_from_reference_map
    from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE
    from reben_tools.format.metadata import write_metadata
    from reben_tools.geo.split_rule import reben_split

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tiles = SYNTHETIC_TILES
    products = []
    for i, tile in enumerate(tiles):
        sensing = datetime(2017, 6, 13, 10, 10, 31) + timedelta(days=37 * i, seconds=int(rng.integers(0, 3600)))
        mission = "S2A" if i % 2 == 0 else "S2B"
        product = f"{mission}_MSIL2A_{sensing:%Y%m%dT%H%M%S}_N9999_R{22 + 11 * i:03d}_T{tile.tile}"
        gap = timedelta(days=float(rng.uniform(0.2, 5.7)))
        acquisition = sensing + (gap if i % 2 == 0 else -gap)
        s1_product = f"S1{'AB'[i % 2]}_IW_GRDH_1SDV_{acquisition:%Y%m%dT%H%M%S}"
        products.append((tile, product, s1_product))

    per_product = [n_patches // len(tiles) + (1 if i < n_patches % len(tiles) else 0) for i in range(len(tiles))]
    rows = []
    s1_names = {}
    jobs = []
    for (tile, product, s1_product), count in zip(products, per_product, strict=True):
        cells = rng.choice(91 * 91, size=count, replace=False)
        for cell in sorted(int(c) for c in cells):
            x, y = cell % 91, cell // 91
            jobs.append((tile, product, s1_product, x, y))
    for tile, product, s1_product, x, y in tqdm(jobs, desc="synthetic release", unit="patch", disable=not progress):
        pid = naming.patch_id(product, x, y)
        s1_name = naming.s1_patch_name(s1_product, tile.tile, x, y)
        s2, s1, reference_map = synthetic_patch(rng, tile.codes)
        crs = f"EPSG:{tile.epsg}"
        ulx, uly = tile.ulx + PATCH_SIZE_M * x, tile.uly - PATCH_SIZE_M * y
        write_patch(out, "S2", pid, s2, crs, ulx, uly, nested, suffix)
        write_patch(out, "S1", s1_name, s1, crs, ulx, uly, nested, suffix)
        write_patch(out, "reference_map", pid, {REFERENCE_MAP_BAND: reference_map}, crs, ulx, uly, nested, suffix)
        flag = rng.random()
        rows.append(
            {
                "patch_id": pid,
                "labels": labels_from_reference_map(reference_map),
                "split": str(reben_split(np.array([x]), np.array([y]))[0]),
                "country": tile.country,
                "s1_name": s1_name,
                "s2v1_name": naming.s2v1_name(pid),
                "contains_seasonal_snow": bool(flag < flagged_fraction / 3),
                "contains_cloud_or_shadow": bool(flagged_fraction / 3 <= flag < flagged_fraction),
            }
        )
        s1_names[pid] = s1_name
    write_metadata(out, rows)
    return SyntheticRelease(
        root=out,
        s2_dir=out / S2_RELEASE_DIR,
        s1_dir=out / S1_RELEASE_DIR,
        reference_maps_dir=out / REFERENCE_MAPS_RELEASE_DIR,
        metadata_files=(out / METADATA_FILE, out / FLAGGED_METADATA_FILE),
        patch_ids=tuple(sorted(s1_names)),
        s1_names=s1_names,
    )


__all__ = ["SYNTHETIC_TILES", "SyntheticRelease", "SyntheticTile", "synthetic_patch", "write_synthetic_release"]
