"""The region's land cover: a CORINE-like polygon mosaic, rasterised on demand, written as a GeoPackage.

Owns: the Voronoi mosaic with spatially correlated codes, towns, a lake and a river
(:func:`_clc_mosaic`), cutting the designed features into it (:func:`_build_corine`),
:class:`_LandCover` (polygons in the tile's UTM CRS with per-polygon gains) and the
CORINE GeoPackage (:func:`_write_corine`).
Does not own: pixel values (s2_render, s1_scene), the expected labels (expected).
May import: .design, .geometry, shapely, rasterio, geopandas, pyogrio.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reben_tools.builder.demo_region.design import _FEATURES, _Feature
from reben_tools.builder.demo_region.geometry import _Frame, _rng, _to_crs, _transformer

if TYPE_CHECKING:
    from pyproj import Transformer

_MOSAIC_CODES_FOREST = ((311, 0.4), (312, 0.3), (313, 0.3))
_MOSAIC_CODES_MIXED = ((243, 0.3), (324, 0.25), (231, 0.25), (313, 0.1), (222, 0.1))
_MOSAIC_CODES_FARM = ((211, 0.45), (231, 0.3), (242, 0.2), (321, 0.05))
ALL_CLASS_CODES = (111, 121, 211, 222, 231, 242, 243, 244, 311, 312, 313, 321, 322, 324, 331, 411, 421, 511, 521)
"""One CLC code per class of the 19-class nomenclature (alphabetical by code), for ``all_classes`` mosaics."""
ALL_CLASSES_SHARE = 0.4
"""Share of an ``all_classes`` mosaic's cells whose code is drawn uniformly from :data:`ALL_CLASS_CODES`."""


def _project_with(transformer: Transformer) -> Callable[[np.ndarray], np.ndarray]:
    """A function of (n, 2) coordinate rows through ``transformer``, for ``shapely.transform``."""

    def project(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return project


def _choose(rng: np.random.Generator, options: tuple[tuple[int, float], ...]) -> int:
    codes = [c for c, _ in options]
    weights = np.array([w for _, w in options])
    return int(codes[rng.choice(len(codes), p=weights / weights.sum())])


def _clc_mosaic(
    bounds_3035: tuple[float, float, float, float], rng: np.random.Generator, cell_km2: float, all_classes: bool = False
):
    """Polygons (EPSG:3035) tiling ``bounds`` with spatially correlated CLC codes, dissolved by code.

    With ``all_classes``, :data:`ALL_CLASSES_SHARE` of the cells (drawn after the landscape,
    towns and lake, from the same generator) get a code drawn uniformly from
    :data:`ALL_CLASS_CODES`, so that every class of the nomenclature is common everywhere.

    Returns:
        list of ``(polygon, code)``, single-part polygons, no two sharing an edge and a code.
    """
    import shapely
    from shapely.geometry import MultiPoint, box

    west, south, east, north = bounds_3035
    area_km2 = (east - west) * (north - south) / 1e6
    n = max(int(area_km2 / cell_km2), 8)
    xs = rng.uniform(west, east, n)
    ys = rng.uniform(south, north, n)
    extent = box(west, south, east, north)
    cells = shapely.get_parts(shapely.voronoi_polygons(MultiPoint(np.column_stack([xs, ys])), extend_to=extent))
    cells = shapely.intersection(cells, extent)
    centroids = shapely.centroid(cells)
    cx, cy = shapely.get_x(centroids), shapely.get_y(centroids)
    # smooth "landscape" field in 0..1: forest on high values, farmland on low ones
    phases = rng.uniform(0, 2 * np.pi, 4)
    wavelengths = rng.uniform(6000.0, 14000.0, 4)
    field_ = (
        0.5
        + 0.25
        * np.sin(2 * np.pi * cx / wavelengths[0] + phases[0])
        * np.cos(2 * np.pi * cy / wavelengths[1] + phases[1])
        + 0.22 * np.sin(2 * np.pi * (cx + cy) / wavelengths[2] + phases[2])
    )
    codes = np.empty(len(cells), dtype=np.int64)
    for i, value in enumerate(field_):
        if value > 0.62:
            codes[i] = _choose(rng, _MOSAIC_CODES_FOREST)
        elif value > 0.42:
            codes[i] = _choose(rng, _MOSAIC_CODES_MIXED)
        else:
            codes[i] = _choose(rng, _MOSAIC_CODES_FARM)
    # towns: discontinuous urban fabric around a centre, a continuous core, industry beside
    for _ in range(max(1, int(area_km2 / 120))):
        tx, ty = rng.uniform(west + 2000, east - 2000), rng.uniform(south + 2000, north - 2000)
        dist = np.hypot(cx - tx, cy - ty)
        codes[dist < 1600] = 112
        codes[dist < 500] = 111
        ring = (dist >= 1600) & (dist < 2300)
        codes[ring & (rng.uniform(size=len(codes)) < 0.5)] = 121
    # a lake with a marsh on its shore, and a water course across the area
    lake = int(rng.integers(len(cells)))
    codes[lake] = 512
    neighbours = np.argsort(np.hypot(cx - cx[lake], cy - cy[lake]))[1:3]
    codes[neighbours[0]] = 411
    if all_classes:
        recode = rng.uniform(size=len(codes)) < ALL_CLASSES_SHARE
        codes[recode] = rng.choice(np.array(ALL_CLASS_CODES), size=int(recode.sum()))
    polygons = []
    for code in sorted(set(codes.tolist())):
        merged = shapely.union_all(cells[codes == code])
        polygons += [(part, int(code)) for part in shapely.get_parts(merged)]
    y0 = rng.uniform(south + 0.3 * (north - south), south + 0.7 * (north - south))
    slope = rng.uniform(-0.3, 0.3)
    river_line = shapely.LineString([(west, y0), ((west + east) / 2, y0 + slope * 3000), (east, y0 + slope * 1000)])
    river = shapely.intersection(river_line.buffer(70.0, cap_style="flat"), extent)
    polygons = [(shapely.difference(p, river), c) for p, c in polygons]
    polygons.append((river, 511))
    out = []
    for geometry, code in polygons:
        out += [(part, code) for part in shapely.get_parts(geometry) if part.area > 1.0]
    return out


def _build_corine(
    frames: dict[str, _Frame],
    seed: int,
    cell_km2: float = 0.9,
    features: tuple[_Feature, ...] = _FEATURES,
    all_classes: bool = False,
):
    """The CORINE polygons of every tile area: ``{tile: [(polygon EPSG:3035, code), ...]}``.

    Designed ``features`` (the demo's :data:`_FEATURES` by default) are cut out of the mosaic
    and added with their own code; a feature with code None stays a hole. ``all_classes``:
    see :func:`_clc_mosaic`.
    """
    import shapely
    from rasterio.warp import transform_bounds

    result = {}
    for tile, frame in frames.items():
        ulx, uly, size = frame.grid.ulx, frame.grid.uly, frame.size_m
        margin = 2000.0
        bounds = transform_bounds(
            frame.crs, "EPSG:3035", ulx - margin, uly - size - margin, ulx + size + margin, uly + margin, densify_pts=21
        )
        mosaic = _clc_mosaic(bounds, _rng(seed, "clc", tile), cell_km2, all_classes)
        to_3035 = _transformer(frame.crs, "EPSG:3035")
        designed = []
        for feature in features:
            if feature.tile != tile:
                continue
            utm = shapely.segmentize(frame.rect_to_utm(feature.rect), 20.0)
            polygon = shapely.transform(utm, _project_with(to_3035))
            designed.append((polygon, feature.code))
        if designed:
            cut = shapely.union_all([g for g, _ in designed])
            mosaic = [
                (part, code)
                for geometry, code in mosaic
                for part in shapely.get_parts(shapely.difference(geometry, cut))
                if part.area > 1.0
            ]
        mosaic += [(g, c) for g, c in designed if c is not None]
        # vertices every 25 m at most (as digitised CLC has), so that shared edges stay shared
        # to within micrometres when a reader reprojects the polygons vertex by vertex
        result[tile] = [(shapely.segmentize(g, 25.0), c) for g, c in mosaic]
    return result


class _LandCover:
    """CORINE polygons of one tile area in the tile's UTM CRS, rasterised on demand.

    ``index`` rasters hold the polygon number + 1 at each pixel centre (0 = no polygon).
    """

    def __init__(self, polygons_utm: list, codes: np.ndarray, gains: np.ndarray, frame: _Frame):
        import shapely

        self.polygons = polygons_utm
        self.codes = np.asarray(codes, dtype=np.int64)  # (n,)
        self.gains = gains  # (n,) per-polygon brightness multiplier
        self.frame = frame
        self.tree = shapely.STRtree(polygons_utm)

    def index(self, res: int, row0: int, nrows: int, ncols: int) -> np.ndarray:
        """int32 (nrows, ncols): polygon number + 1 at each pixel centre of the window."""
        from rasterio.features import rasterize
        from shapely.geometry import box

        ulx, uly = self.frame.grid.ulx, self.frame.grid.uly - row0 * res
        window = box(ulx, uly - nrows * res, ulx + ncols * res, uly)
        hits = sorted(self.tree.query(window).tolist())
        if not hits:
            return np.zeros((nrows, ncols), dtype=np.int32)
        return rasterize(
            ((self.polygons[i], i + 1) for i in hits),
            out_shape=(nrows, ncols),
            transform=self.frame.transform(res, row0),
            fill=0,
            dtype="int32",
        )


def _land_cover(frame: _Frame, polygons_3035: list, seed: int, tile: str) -> _LandCover:
    polygons = [p for p, _ in polygons_3035]
    codes = np.array([c for _, c in polygons_3035], dtype=np.int64)
    gains = _rng(seed, "gain", tile).normal(1.0, 0.08, len(codes)).clip(0.75, 1.25)
    return _LandCover(_to_crs(polygons, "EPSG:3035", frame.crs), codes, gains, frame)


def _write_corine(path: Path, corine: dict[str, list]) -> None:
    """GeoPackage in EPSG:3035, layer ``clc``: ``ID``, ``Code_18`` (text), ``Remark``, ``Area_Ha``."""
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import MultiPolygon

    rows = []
    for tile in sorted(corine):
        rows += corine[tile]
    frame = gpd.GeoDataFrame(
        {
            "ID": [f"EU_{3_000_000 + i}" for i in range(len(rows))],
            "Code_18": [str(code) for _, code in rows],
            "Remark": [None] * len(rows),
            "Area_Ha": [round(g.area / 1e4, 4) for g, _ in rows],
        },
        geometry=[MultiPolygon([g]) for g, _ in rows],
        crs="EPSG:3035",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    # GeoPackages record the time of the last change; pin it so files are byte-identical
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2020-01-01T00:00:00.000Z"})
    try:
        frame.to_file(path, layer="clc", driver="GPKG", engine="pyogrio")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
