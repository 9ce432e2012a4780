"""Sentinel-1 scenes of the region: VV / VH backscatter in dB on an EPSG:4326 grid, valid in a swath strip.

Owns: the S1 grid over a product area, the across-track coordinate of a swath
(:func:`_across_track`), rendering and writing a scene (:func:`_write_s1_scene`).
Does not own: which scenes exist (design), their expected pairing (expected).
May import: .design, .geometry, .raster_sink, .signatures, rasterio, shapely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reben_tools.builder.demo_region.design import S1_MARGIN_M, S1_PIXEL_DEG, S1_TILT, _S1Design
from reben_tools.builder.demo_region.geometry import _Frame, _rng, _transformer
from reben_tools.builder.demo_region.raster_sink import _RasterSink
from reben_tools.builder.demo_region.signatures import BACKSCATTER_DB, GAP_SPECTRUM_CODE


@dataclass
class _S1Grid:
    """An EPSG:4326 grid over a product area, with each pixel centre's (u, v) in the tile's UTM."""

    transform: Any
    width: int
    height: int
    u: np.ndarray  # (height, width) metres east of the tile corner
    v: np.ndarray  # (height, width) metres south of the tile corner


def _s1_grid(frame: _Frame, row0: int | None = None, nrows: int | None = None) -> _S1Grid:
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    g, size = frame.grid, frame.size_m
    west, south, east, north = transform_bounds(
        frame.crs,
        "EPSG:4326",
        g.ulx - S1_MARGIN_M,
        g.uly - size - S1_MARGIN_M,
        g.ulx + size + S1_MARGIN_M,
        g.uly + S1_MARGIN_M,
        densify_pts=51,
    )
    dx, dy = S1_PIXEL_DEG
    west, east = math.floor(west / dx) * dx, math.ceil(east / dx) * dx
    south, north = math.floor(south / dy) * dy, math.ceil(north / dy) * dy
    width, height = round((east - west) / dx), round((north - south) / dy)
    transform = from_origin(round(west, 6), round(north, 6), dx, dy)
    r0 = 0 if row0 is None else row0
    n = height if nrows is None else nrows
    lon = west + (np.arange(width) + 0.5) * dx
    lat = north - (np.arange(r0, r0 + n) + 0.5) * dy
    lon2, lat2 = np.meshgrid(lon, lat)
    to_utm = _transformer("EPSG:4326", frame.crs)
    x, y = to_utm.transform(lon2, lat2)
    return _S1Grid(transform, width, height, np.asarray(x) - g.ulx, g.uly - np.asarray(y))


def _across_track(scene: _S1Design, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u - v * S1_TILT if scene.ascending else u + v * S1_TILT


def _render_s1(scene: _S1Design, grid: _S1Grid, index: np.ndarray, codes: np.ndarray, rng: np.random.Generator):
    """(VV, VH) float32 dB arrays on the S1 grid; NaN outside the swath strip."""
    c = _across_track(scene, grid.u, grid.v)
    valid = (c >= scene.c_min) & (c <= scene.c_max)
    codes_ext = np.concatenate([[GAP_SPECTRUM_CODE], codes])
    code_map = codes_ext[index]
    table = np.zeros((1000, 2), dtype=np.float32)
    for code, (vv, vh) in BACKSCATTER_DB.items():
        table[code] = (vv, vh)
    polygon_shift = np.concatenate([[0.0], rng.normal(0.0, 0.7, len(codes))]).astype(np.float32)
    # incidence angle grows across the swath: about -1.5 dB over 20 km
    incidence = (-7.5e-5 * (c - 5000.0)).astype(np.float32)
    out = []
    for k in range(2):
        db = (
            table[code_map, k]
            + polygon_shift[index]
            + incidence
            + rng.standard_normal(code_map.shape, dtype=np.float32)
        )
        out.append(np.where(valid, db, np.float32(np.nan)).astype(np.float32))
    return out[0], out[1]


def _write_s1_scene(
    scene: _S1Design,
    frame: _Frame,
    polygons_4326: list,
    codes: np.ndarray,
    out_root: Path,
    seed: int,
    rows_per_block: int | None = None,
) -> Path:
    """Write ``<name>/<name>_VV.tif`` and ``_VH.tif`` (EPSG:4326, float32 dB, NaN no-data)."""
    import shapely
    from rasterio.features import rasterize
    from rasterio.transform import from_origin
    from shapely.geometry import box

    folder = out_root / scene.name
    tree = shapely.STRtree(polygons_4326)
    header = _s1_grid(frame, 0, 1)
    sinks = [
        _RasterSink(
            folder / f"{scene.name}_{pol}.tif",
            "GTiff",
            header.width,
            header.height,
            "float32",
            "EPSG:4326",
            header.transform,
            nodata=float("nan"),
        )
        for pol in ("VV", "VH")
    ]
    step = header.height if rows_per_block is None else rows_per_block
    try:
        for block, r0 in enumerate(range(0, header.height, step)):
            n = min(step, header.height - r0)
            grid = _s1_grid(frame, r0, n)
            t = header.transform
            block_transform = from_origin(t.c, t.f + r0 * t.e, t.a, -t.e)
            west, north = block_transform.c, block_transform.f
            hits = sorted(tree.query(box(west, north - n * -t.e, west + header.width * t.a, north)).tolist())
            index = (
                rasterize(
                    ((polygons_4326[i], i + 1) for i in hits),
                    out_shape=(n, header.width),
                    transform=block_transform,
                    fill=0,
                    dtype="int32",
                )
                if hits
                else np.zeros((n, header.width), dtype=np.int32)
            )
            vv, vh = _render_s1(scene, grid, index, codes, _rng(seed, "s1", scene.name, block))
            sinks[0].write(vv, r0)
            sinks[1].write(vh, r0)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    for sink in sinks:
        sink.close()
    return folder
