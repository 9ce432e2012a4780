"""One full-size L2A product (10,980 x 10,980 at 10 m) with S1 and CORINE over it, for memory benchmarks.

Owns: :func:`write_full_size_product` (rendered and written by blocks of patch rows
under a bounded GDAL cache) and :class:`FullSizeProduct`.
Does not own: the demo region (region), the product layout (s2_product).
May import: reben_tools.format.naming, reben_tools.geo.mgrs_grid, .design, .geometry,
.land_cover, .s1_scene, .s2_product, rasterio.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from reben_tools.builder.demo_region.design import TILE_SIDE_M, _Cloud, _ProductDesign, _S1Design
from reben_tools.builder.demo_region.geometry import _Frame, _to_crs
from reben_tools.builder.demo_region.land_cover import _build_corine, _land_cover, _write_corine
from reben_tools.builder.demo_region.s1_scene import _write_s1_scene
from reben_tools.builder.demo_region.s2_product import _write_product
from reben_tools.format.naming import parse_s2_product_name
from reben_tools.geo.mgrs_grid import tile_grid

FULL_SIZE_GDAL_CACHE_MB = 128
"""GDAL block cache while writing the full-size product (MB)."""


@dataclass(frozen=True)
class FullSizeProduct:
    """A full-size product and the inputs that go with it.

    Attributes:
        product_dir: the ``.SAFE`` folder (10,980 x 10,980 pixels at 10 m).
        s1_dir: folder of one S1 scene covering the whole tile (None if not written).
        corine_path: CORINE GeoPackage covering the tile (None if not written).
    """

    product_dir: Path
    s1_dir: Path | None
    corine_path: Path | None


def write_full_size_product(
    out_dir: str | Path,
    *,
    tile: str = "33UUP",
    sensing: str = "20170613T101031",
    baseline: str = "N0500",
    orbit: str = "R022",
    mission: str = "S2A",
    seed: int = 0,
    with_s1: bool = True,
    with_corine: bool = True,
    block_patch_rows: int = 2,
    progress: bool = True,
) -> FullSizeProduct:
    """Write one full-size L2A product (109,800 m, 10,980 x 10,980 at 10 m) in SAFE layout.

    Rasters are rendered a block of ``block_patch_rows`` patch rows at a time and
    written to temporary GeoTIFFs, then encoded to lossless JPEG2000, so memory stays
    at a few hundred MB. With ``with_corine`` a CORINE GeoPackage (about 5,500
    polygons, EPSG:3035) covers the tile; with ``with_s1`` one S1 scene (EPSG:4326,
    acquired 0.3 days after) covers it, so that a pipeline keeps the patches.
    Takes a few minutes on 2 cores; the files take about 1.1 GB.

    Returns:
        a :class:`FullSizeProduct` with the paths.
    """
    import rasterio

    # GDAL keeps written blocks in its cache (by default 5 % of RAM): bound it
    with rasterio.Env(GDAL_CACHEMAX=FULL_SIZE_GDAL_CACHE_MB):
        return _write_full_size_product(
            Path(out_dir),
            tile=tile,
            sensing=sensing,
            baseline=baseline,
            orbit=orbit,
            mission=mission,
            seed=seed,
            with_s1=with_s1,
            with_corine=with_corine,
            block_patch_rows=block_patch_rows,
            progress=progress,
        )


def _write_full_size_product(
    root: Path,
    *,
    tile: str,
    sensing: str,
    baseline: str,
    orbit: str,
    mission: str,
    seed: int,
    with_s1: bool,
    with_corine: bool,
    block_patch_rows: int,
    progress: bool,
) -> FullSizeProduct:
    root.mkdir(parents=True, exist_ok=True)
    name = parse_s2_product_name(f"{mission}_MSIL2A_{sensing}_{baseline}_{orbit}_T{tile.removeprefix('T')}")
    design = _ProductDesign(
        mission,
        sensing,
        baseline,
        orbit,
        name.tile,
        "20240101T000000",
        "SAFE",
        "summer",
        clouds=(_Cloud(60_000.0, 40_000.0, 4000.0, 2500.0),),
    )
    frame = _Frame(tile_grid(name.tile), TILE_SIDE_M)
    corine = _build_corine({name.tile: frame}, seed, cell_km2=1.5)
    cover = _land_cover(frame, corine[name.tile], seed, name.tile)
    corine_path = None
    if with_corine:
        corine_path = root / "corine" / f"CLC2018_full_T{name.tile}.gpkg"
        _write_corine(corine_path, corine)
    product_dir, _ = _write_product(
        design, cover, frame, root / "S2", seed, block_rows=block_patch_rows, progress=progress
    )
    s1_dir = None
    if with_s1:
        start = datetime.strptime(sensing, "%Y%m%dT%H%M%S")
        start = start.replace(hour=17, minute=23, second=9)
        scene = _S1Design("S1B", start.strftime("%Y%m%dT%H%M%S"), name.tile, True, -40_000.0, 150_000.0)
        polygons_4326 = _to_crs([p for p, _ in corine[name.tile]], "EPSG:3035", "EPSG:4326")
        codes = np.array([c for _, c in corine[name.tile]], dtype=np.int64)
        s1_dir = _write_s1_scene(scene, frame, polygons_4326, codes, root / "S1", seed, rows_per_block=256)
    return FullSizeProduct(product_dir, s1_dir, corine_path)
