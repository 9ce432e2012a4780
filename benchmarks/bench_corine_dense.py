"""Benchmark: the CORINE part of a block (reference map) on a CORINE as dense as the real CLC.

The real CLC 2018 GeoPackage holds about 2.3 million polygons; the project's generated
CORINE is sparse and understates the cost of a block. This benchmark builds a dense layer
by tiling the real extract shipped in ``tests/data/clc_sample_lanjaron_es.gpkg`` (136
polygons, 113,000 vertices over 11.8 x 18.6 km near Lanjaron, Spain) side by side,
written in EPSG:3035 as the real file is, and builds the reference maps of the blocks of
one product in UTM zone 30 (rotated against EPSG:3035, as real tiles are).

Two methods, interleaved in one process, per block:

- ``before``: the method of the previous version (kept below verbatim as
  :func:`_read_polygons_before`): every polygon of the block's EPSG:3035 *bounding box*
  read from the file, a Python loop over every polygon checking its code and validity,
  then densified, reprojected and rasterised; nothing reused between blocks.
- ``after``: :func:`reben_tools.builder.corine.reference_block` with ``area``: the
  product's polygons read once through its *footprint*, codes and validity checked on
  arrays, reprojected once, and each block taking its polygons from an STRtree. The cache
  is emptied before each product so the first block pays the read.

Both give byte-identical maps (checked). Recorded per block: wall seconds and the peak of
Python-traced memory (``tracemalloc``: numpy arrays and shapely/geopandas objects; GDAL's
own buffers are not traced).

Usage::

    python benchmarks/bench_corine_dense.py --copies 4 3 --patches 20 --rows-per-block 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from affine import Affine

from reben_tools.builder import corine
from reben_tools.builder.corine import ClcIssue, _polygonal, clc_codes, open_clc, rasterise, reference_block

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = ROOT / "tests" / "data" / "clc_sample_lanjaron_es.gpkg"


def make_dense_clc(out: Path, copies: tuple[int, int]) -> tuple[Path, int, int]:
    """Tile the real extract ``copies`` = (east, north) times in its CRS, write it in EPSG:3035."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    frame = gpd.read_file(EXTRACT, layer="clc", engine="pyogrio")
    left, bottom, right, top = frame.total_bounds
    parts = []
    for i in range(copies[0]):
        for j in range(copies[1]):
            part = frame.copy()
            part["geometry"] = shapely.transform(
                frame.geometry.values, lambda c, i=i, j=j: c + [i * (right - left), j * (top - bottom)]
            )
            parts.append(part)
    dense = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=frame.crs).to_crs("EPSG:3035")
    dense[["CODE_18", "geometry"]].to_file(out, driver="GPKG", engine="pyogrio")
    vertices = int(shapely.get_num_coordinates(dense.geometry.values).sum())
    return out, len(dense), vertices


def _read_polygons_before(source, bounds, crs):
    """The previous version's read_polygons: bounding-box filter, per-polygon Python checks."""
    import geopandas as gpd
    import shapely
    from rasterio.warp import transform_bounds

    src_bounds = transform_bounds(crs, source.crs, *bounds, densify_pts=21)
    frame = gpd.read_file(
        source.path,
        layer=source.layer,
        bbox=src_bounds,
        columns=[source.code_column],
        fid_as_index=True,
        engine="pyogrio",
    )
    frame = frame.sort_index()
    known = set(clc_codes())
    issues, kept_geometries, codes = [], [], []
    for fid, raw_code, geometry in zip(frame.index, frame[source.code_column], frame.geometry, strict=True):
        code_text = "" if raw_code is None else str(raw_code).strip()
        try:
            code = int(float(code_text))
        except ValueError:
            code = -1
        if code not in known:
            issues.append(ClcIssue(int(fid), code_text, "unknown"))
            continue
        if geometry is None or geometry.is_empty:
            continue
        if not shapely.is_valid(geometry):
            repaired = _polygonal(shapely.make_valid(geometry))
            if repaired is None or repaired.is_empty:
                continue
            geometry = repaired
        kept_geometries.append(geometry)
        codes.append(code)
    geometries = np.asarray(kept_geometries, dtype=object)
    if len(geometries) and not frame.crs.equals(crs):
        step = corine.DENSIFY_DEGREES if frame.crs.is_geographic else corine.DENSIFY_METRES
        geometries = gpd.GeoSeries(shapely.segmentize(geometries, step), crs=frame.crs).to_crs(crs).values
    return list(geometries), np.asarray(codes, dtype=np.uint16), issues, len(frame)


def _reference_before(source, crs, transform, shape):
    """The previous version's reference_block (vector path): read per block, rasterise in strips."""
    import shapely

    left, top = transform.c, transform.f
    right, bottom = left + transform.a * shape[1], top + transform.e * shape[0]
    geometries, codes, _, read = _read_polygons_before(source, (left, bottom, right, top), crs)
    polygons = np.asarray(geometries, dtype=object)
    out = np.empty(shape, dtype=np.uint16)
    margin = 2 * abs(transform.a)
    for row0 in range(0, shape[0], corine.RASTERISE_STRIP_ROWS):
        rows = min(corine.RASTERISE_STRIP_ROWS, shape[0] - row0)
        st = transform * transform.translation(0, row0)
        clipped = shapely.clip_by_rect(
            polygons,
            st.c - margin,
            st.f + transform.e * rows - margin,
            st.c + transform.a * shape[1] + margin,
            st.f + margin,
        )
        keep = ~shapely.is_empty(clipped)
        out[row0 : row0 + rows] = rasterise(list(clipped[keep]), codes[keep], st, (rows, shape[1]))
    return out, read


def _measure(fn):
    tracemalloc.start()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def run(copies: tuple[int, int], patches: int, rows_per_block: int, repeats: int) -> dict:
    import geopandas as gpd

    with tempfile.TemporaryDirectory() as tmp:
        path, n_polygons, n_vertices = make_dense_clc(Path(tmp) / "dense_clc.gpkg", copies)
        source = open_clc(path)
        frame = gpd.read_file(EXTRACT, layer="clc", engine="pyogrio")
        left, bottom, right, top = frame.total_bounds
        # a product in EPSG:32630 (the extract's zone) inside the dense layer, 1 km in from its corner
        crs = "EPSG:32630"
        ulx, uly = left + 1000.0, bottom + copies[1] * (top - bottom) - 1000.0
        area = (ulx, uly - 1200 * patches, ulx + 1200 * patches, uly)
        blocks = [(r, min(rows_per_block, patches - r)) for r in range(0, patches, rows_per_block)]
        before_s, after_s, before_mb, after_mb, read_counts = [], [], [], [], []
        for _ in range(repeats):
            corine._POLYGON_CACHE.clear()
            for row0, nrows in blocks:
                transform = Affine(10, 0, ulx, 0, -10, uly - 1200 * row0)
                shape = (nrows * 120, patches * 120)
                (old, read), s_old, m_old = _measure(lambda t=transform, s=shape: _reference_before(source, crs, t, s))
                (new, _), s_new, m_new = _measure(
                    lambda t=transform, s=shape: reference_block(source, crs, t, s, area=area)
                )
                assert np.array_equal(old, new), "the two methods disagree"
                before_s.append(s_old)
                after_s.append(s_new)
                before_mb.append(m_old / 2**20)
                after_mb.append(m_new / 2**20)
                read_counts.append(read)
    block_km2 = rows_per_block * 1.2 * patches * 1.2
    return {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "dense_clc": {
            "polygons": n_polygons,
            "vertices": n_vertices,
            "copies_of_extract": list(copies),
            "polygons_per_km2": round(n_polygons / (copies[0] * copies[1] * (right - left) * (top - bottom) / 1e6), 3),
        },
        "product": {
            "crs": crs,
            "patches_per_side": patches,
            "rows_per_block": rows_per_block,
            "blocks": len(blocks),
            "block_km2": round(block_km2, 2),
        },
        "polygons_read_per_block_before": statistics.mean(read_counts),
        "seconds_per_block": {"before": statistics.mean(before_s), "after": statistics.mean(after_s)},
        "peak_traced_mb_per_block": {"before": max(before_mb), "after": max(after_mb)},
        "ratio_time_after_over_before": statistics.mean(after_s) / statistics.mean(before_s),
        "ratio_peak_memory_after_over_before": max(after_mb) / max(before_mb),
        "first_block_after_s": after_s[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs=2, default=(4, 3))
    parser.add_argument("--patches", type=int, default=20)
    parser.add_argument("--rows-per-block", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(tuple(args.copies), args.patches, args.rows_per_block, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
