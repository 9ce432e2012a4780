"""CORINE Land Cover: loading (vector or raster, any CRS) and reference maps (10 m, pixel-centre rule, 999 where no polygon).

A reference map is the CLC layer rasterised onto a patch's 10 m grid: uint16,
the raw CLC code of the polygon that contains each pixel's centre, 999 where no
polygon does. Maps are made a block at a time from the polygons of the block's
product area, read once per worker process through the area's footprint in the
file's CRS (an OGR spatial filter, not the footprint's bounding box), checked on
arrays, reprojected once and queried per block with an STRtree: a task holds one
product's polygons, never the 2.3 million of the full CLC 2018 GeoPackage.

Vector sources: any OGR format (GeoPackage, shapefile, GeoJSON ...), any CRS; the
code column (``Code_18`` by default) is found case-insensitively. Invalid
geometries are repaired with ``shapely.make_valid`` and reported; polygons whose
code is not one of the 44 CLC codes are left out (their pixels become 999) and
reported. Raster sources: a single-band raster in any CRS holding either raw CLC
codes (111..523) or the 1..44 grid codes of the official CLC raster (48 = no data),
sampled at the 10 m pixel centres (nearest neighbour).

Owns: opening a CORINE source (:func:`open_clc`, :class:`ClcSource`), geometry repair and
code checks (reported as issues), rasterising reference maps of a block (:func:`reference_block`).
Does not own: the CLC legend and label rules (reben_tools.format.labels), the 25 % rule (build.pipeline).
The file may be local, under ``s3://`` or at an ``https://`` URL (read through GDAL's
``/vsis3/`` and ``/vsicurl/``; a local copy is faster, since every worker reads it).

May import: reben_tools.format, reben_tools.builder.locations, rasterio, pyogrio, geopandas, pandas, pyproj,
shapely, numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reben_tools.builder.locations import RemoteError, RemotePath, location, redact
from reben_tools.format.labels import NO_POLYGON_CODE, clc_legend

DEFAULT_CODE_COLUMN = "Code_18"
RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".img", ".jp2")
DENSIFY_METRES = 100.0
"""Longest polygon edge (source CRS units) kept when reprojecting CORINE to a product's CRS."""
DENSIFY_DEGREES = 0.001
RASTERISE_STRIP_ROWS = 120
"""Rows of the grid rasterised at a time by :func:`reference_block` (one patch row at 10 m)."""


class CorineError(ValueError):
    """A CORINE source cannot be used; the message names the file."""

    def __init__(self, path: Path | RemotePath | str, reason: str):
        path, reason = redact(str(path)), redact(str(reason))
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ClcIssue:
    """A problem with one CORINE feature, for the build report.

    Attributes:
        fid: feature id in the file.
        code: the code as found (string form).
        reason: what was wrong and what was done about it.
    """

    fid: int
    code: str
    reason: str


@dataclass(frozen=True)
class ClcSource:
    """An opened CORINE source (small and picklable: shipped to every worker).

    Attributes:
        path: the file.
        kind: ``"vector"`` or ``"raster"``.
        crs: its CRS as WKT.
        layer: the vector layer read (None for rasters).
        code_column: the code column as spelled in the file (None for rasters).
        raster_values: for rasters, ``"codes"`` (raw 111..523) or ``"grid_codes"`` (1..44).
    """

    path: Path | RemotePath
    kind: str
    crs: str
    layer: str | None = None
    code_column: str | None = None
    raster_values: str | None = None


def clc_codes() -> tuple[int, ...]:
    """The 44 level-3 CLC codes in ascending order (999 excluded)."""
    return tuple(sorted(c for c in clc_legend() if c != NO_POLYGON_CODE))


def grid_code_table() -> np.ndarray:
    """uint16 lookup of 256 entries: official CLC raster grid code (1..44) -> CLC code, else 999."""
    table = np.full(256, NO_POLYGON_CODE, dtype=np.uint16)
    for index, code in enumerate(clc_codes(), start=1):
        table[index] = code
    return table


def open_clc(
    path: str | Path,
    code_column: str = DEFAULT_CODE_COLUMN,
    layer: str | None = None,
    raster_values: str = "auto",
) -> ClcSource:
    """Open a CORINE source, find its code column and CRS.

    Args:
        path: a vector file (any OGR format) or a raster.
        code_column: name of the code column, matched case-insensitively.
        layer: vector layer; the first layer when None.
        raster_values: ``"codes"``, ``"grid_codes"`` or ``"auto"`` (grid codes when every
            value of a sample is below 100).

    Raises:
        CorineError: unreadable file, no CRS, no code column.
    """
    place = location(path)
    try:
        exists = place.exists()
    except RemoteError as exc:
        raise CorineError(place, f"cannot reach the CORINE file ({exc})") from None
    if not exists:
        raise CorineError(place, "CORINE file does not exist")
    if place.suffix.lower() in RASTER_EXTENSIONS:
        return _open_raster(place, raster_values)
    import pyogrio

    try:
        if layer is None:
            layers = pyogrio.list_layers(os.fspath(place))
            spatial = [str(name) for name, geometry_type in layers if geometry_type]
            layer = spatial[0] if spatial else str(layers[0][0])
        info = pyogrio.read_info(os.fspath(place), layer=layer)
    except Exception as exc:
        raise CorineError(place, f"cannot read as a vector dataset ({exc})") from None
    if not info.get("crs"):
        raise CorineError(place, "vector layer has no CRS")
    fields = [str(f) for f in info["fields"]]
    matches = [f for f in fields if f.lower() == code_column.lower()]
    if not matches:
        raise CorineError(place, f"no column {code_column!r} (case-insensitive) among {fields}")
    layer_name = layer
    from pyproj import CRS

    return ClcSource(place, "vector", CRS.from_user_input(info["crs"]).to_wkt(), layer_name, matches[0])


def _open_raster(path: Path | RemotePath, raster_values: str) -> ClcSource:
    import rasterio

    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise CorineError(path, "raster has no CRS")
            crs = ds.crs.to_wkt()
            if raster_values == "auto":
                sample = ds.read(1, out_shape=(min(ds.height, 512), min(ds.width, 512)))
                valid = sample[(sample != ds.nodata)] if ds.nodata is not None else sample.ravel()
                raster_values = "grid_codes" if valid.size == 0 or int(valid.max()) < 100 else "codes"
    except rasterio.errors.RasterioError as exc:
        raise CorineError(path, f"cannot open raster ({exc})") from None
    if raster_values not in ("codes", "grid_codes"):
        raise CorineError(path, f"raster_values must be 'codes', 'grid_codes' or 'auto', got {raster_values!r}")
    return ClcSource(path, "raster", crs, raster_values=raster_values)


def _polygonal(geometry):
    """The polygonal part of a geometry (make_valid may add lines or points), or None."""
    import shapely
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon

    if isinstance(geometry, (Polygon, MultiPolygon)):
        return geometry
    if isinstance(geometry, GeometryCollection):
        parts = [g for g in shapely.get_parts(geometry) if isinstance(g, (Polygon, MultiPolygon))]
        if parts:
            return shapely.union_all(parts)
    return None


def _footprint(bounds: tuple[float, float, float, float], crs: str, target_crs: str, points: int = 21):
    """The rectangle ``bounds`` (in ``crs``) as a polygon in ``target_crs``, each side densified with ``points``."""
    import shapely
    from pyproj import Transformer

    left, bottom, right, top = bounds
    t = np.linspace(0.0, 1.0, points)[:-1]
    xs = np.concatenate(
        [left + (right - left) * t, np.full_like(t, right), right - (right - left) * t, np.full_like(t, left)]
    )
    ys = np.concatenate(
        [np.full_like(t, top), top - (top - bottom) * t, np.full_like(t, bottom), bottom + (top - bottom) * t]
    )
    tx, ty = Transformer.from_crs(crs, target_crs, always_xy=True).transform(xs, ys)
    return shapely.Polygon(np.column_stack([tx, ty]))


def read_polygons(
    source: ClcSource, bounds: tuple[float, float, float, float], crs: str
) -> tuple[list, np.ndarray, list[ClcIssue]]:
    """The CORINE polygons that meet the rectangle ``bounds`` (given in ``crs``), in ``crs``.

    The rectangle's footprint in the file's CRS (sides densified) is the OGR spatial filter,
    so a rectangle rotated against the file's CRS reads only the polygons that meet it, not
    every polygon of its bounding box. Codes and validity are checked on whole arrays
    (``shapely.is_valid``); only invalid polygons are repaired one by one.

    Returns:
        ``(geometries, codes, issues)``: shapely geometries in ``crs`` ordered by feature id,
        their codes (uint16, shape ``(n,)``), and the problems met (repaired geometries,
        unknown codes, empty geometries).
    """
    import geopandas as gpd
    import pandas as pd
    import shapely

    try:
        mask = _footprint(bounds, crs, source.crs)
        frame = gpd.read_file(
            os.fspath(source.path),
            layer=source.layer,
            mask=mask,
            columns=[source.code_column],
            fid_as_index=True,
            engine="pyogrio",
        )
    except Exception as exc:
        raise CorineError(source.path, f"cannot read polygons ({exc})") from None
    frame = frame.sort_index()
    fids = frame.index.to_numpy()
    raw = frame[source.code_column]
    code_text = raw.astype("string").str.strip().fillna("")
    numeric = pd.to_numeric(code_text, errors="coerce").to_numpy(dtype=np.float64)
    codes = np.where(np.isfinite(numeric), np.trunc(np.nan_to_num(numeric)), -1).astype(np.int64)
    known = np.zeros(1000, dtype=bool)
    known[list(clc_codes())] = True
    is_known = (codes >= 0) & (codes < 1000) & known[np.clip(codes, 0, 999)]
    geometries = (
        frame.geometry.values.to_numpy()
        if hasattr(frame.geometry.values, "to_numpy")
        else np.asarray(frame.geometry.values)
    )
    geometries = np.asarray(geometries, dtype=object)
    empty = shapely.is_missing(geometries) | shapely.is_empty(geometries)
    valid = np.zeros(len(geometries), dtype=bool)
    present = ~empty
    valid[present] = shapely.is_valid(geometries[present])
    issues: list[ClcIssue] = []
    keep = np.zeros(len(geometries), dtype=bool)
    texts = code_text.tolist()
    # codes and validity are checked in the file's own CRS, before any reprojection
    for i in range(len(geometries)):
        if not is_known[i]:
            issues.append(ClcIssue(int(fids[i]), texts[i], "unknown CLC code; polygon left out (its pixels get 999)"))
        elif empty[i]:
            issues.append(ClcIssue(int(fids[i]), texts[i], "empty geometry; polygon left out"))
        elif valid[i]:
            keep[i] = True
        else:
            reason = shapely.is_valid_reason(geometries[i])
            repaired = _polygonal(shapely.make_valid(geometries[i]))
            if repaired is None or repaired.is_empty:
                issues.append(
                    ClcIssue(int(fids[i]), texts[i], f"invalid geometry ({reason}) could not be repaired; left out")
                )
                continue
            issues.append(ClcIssue(int(fids[i]), texts[i], f"invalid geometry ({reason}) repaired with make_valid"))
            geometries[i] = repaired
            keep[i] = True
    kept = geometries[keep]
    layer_crs = frame.crs
    assert layer_crs is not None  # open_clc refuses a vector layer without a CRS
    if len(kept) and not layer_crs.equals(crs):
        # densify before reprojecting so that edges straight in the source CRS stay within
        # a fraction of a millimetre of their true course in the target CRS
        step = DENSIFY_DEGREES if layer_crs.is_geographic else DENSIFY_METRES
        kept = np.asarray(gpd.GeoSeries(shapely.segmentize(kept, step), crs=layer_crs).to_crs(crs).values)
    return list(kept), codes[keep].astype(np.uint16), issues


class _ProductPolygons:
    """The polygons of one product's area in one CRS, read once and queried per block.

    A worker builds the blocks of a product one after the other, and the dates of one tile
    cover the same area: the polygons (checked, densified, reprojected) and their issues
    are kept per process for the last :data:`POLYGON_CACHE_AREAS` areas and each block
    takes the ones that meet it (an STRtree query), so the file is read and every polygon
    reprojected once per area instead of once per block.
    """

    def __init__(self, source: ClcSource, area: tuple[float, float, float, float], crs: str):
        import shapely

        self.geometries, self.codes, self.issues = read_polygons(source, area, crs)
        self.tree = shapely.STRtree(np.asarray(self.geometries, dtype=object))
        self.crs = crs

    def block(self, bounds: tuple[float, float, float, float]) -> tuple[list, np.ndarray]:
        import shapely

        hits = np.sort(self.tree.query(shapely.box(*bounds), predicate="intersects"))
        return [self.geometries[i] for i in hits], self.codes[hits]


POLYGON_CACHE_AREAS = 2
"""Product areas whose polygons a worker process keeps (about one product per worker thread)."""
_POLYGON_CACHE: dict[tuple, _ProductPolygons] = {}
_POLYGON_LOCK = None


def _product_polygons(source: ClcSource, area: tuple[float, float, float, float], crs: str) -> _ProductPolygons:
    import threading

    global _POLYGON_LOCK
    if _POLYGON_LOCK is None:
        _POLYGON_LOCK = threading.Lock()
    key = (str(source.path), source.layer, source.code_column, crs, tuple(round(v, 3) for v in area))
    with _POLYGON_LOCK:
        entry = _POLYGON_CACHE.pop(key, None)
        if entry is None:
            entry = _ProductPolygons(source, area, crs)
        _POLYGON_CACHE[key] = entry
        while len(_POLYGON_CACHE) > POLYGON_CACHE_AREAS:
            _POLYGON_CACHE.pop(next(iter(_POLYGON_CACHE)))
        return entry


def rasterise(geometries: list, codes: np.ndarray, transform, shape: tuple[int, int]) -> np.ndarray:
    """Burn polygons into a uint16 grid with the pixel-centre rule; 999 where none covers.

    Args:
        geometries: shapely polygons in the grid's CRS.
        codes: their CLC codes, shape ``(n,)``.
        transform: affine transform of the grid.
        shape: ``(rows, cols)``.

    Returns:
        uint16 array of ``shape``: the code of the polygon containing each pixel centre
        (the later polygon where two overlap), 999 elsewhere.
    """
    from rasterio.features import rasterize

    if not geometries:
        return np.full(shape, NO_POLYGON_CODE, dtype=np.uint16)
    return rasterize(
        zip(geometries, (int(c) for c in codes), strict=True),
        out_shape=shape,
        transform=transform,
        fill=NO_POLYGON_CODE,
        all_touched=False,
        dtype="uint16",
    )


def reference_block(
    source: ClcSource,
    crs: str,
    transform,
    shape: tuple[int, int],
    area: tuple[float, float, float, float] | None = None,
) -> tuple[np.ndarray, list[ClcIssue]]:
    """The reference map of a whole grid (a block of patches) at 10 m.

    Args:
        source: the CORINE source.
        crs: CRS of the grid.
        transform: affine transform of the grid (10 m pixels).
        shape: ``(rows, cols)`` of the grid.
        area: ``(left, bottom, right, top)`` in ``crs`` of the whole product the block
            belongs to: its polygons are read once per worker process and reused by every
            block (and date) of that area. None reads the block's polygons only.

    Returns:
        ``(codes, issues)``: uint16 array of ``shape`` and the feature problems met (those
        of the whole ``area`` when given). The codes do not depend on ``area``.
    """
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * shape[1], top + transform.e * shape[0]
    if source.kind == "raster":
        return _sample_raster(source, crs, transform, shape), []
    if area is not None:
        cached = _product_polygons(source, area, crs)
        geometries, codes = cached.block((min(left, right), min(bottom, top), max(left, right), max(bottom, top)))
        issues = cached.issues
    else:
        geometries, codes, issues = read_polygons(source, (left, bottom, right, top), crs)
    if not geometries:
        return rasterise(geometries, codes, transform, shape), issues
    import shapely

    # Rasterised in strips of RASTERISE_STRIP_ROWS rows, each polygon clipped to its strip
    # (with a margin): pixel centres inside a strip are unaffected by the clip, and GDAL's
    # scanline fill costs (rows x vertices) per polygon, so short strips of clipped
    # polygons cost about a quarter of one pass over the whole block (same bytes).
    polygons = np.asarray(geometries, dtype=object)
    margin = 2 * abs(transform.a)
    out = np.empty(shape, dtype=np.uint16)
    for row0 in range(0, shape[0], RASTERISE_STRIP_ROWS):
        rows = min(RASTERISE_STRIP_ROWS, shape[0] - row0)
        strip_transform = transform * transform.translation(0, row0)
        s_left, s_top = strip_transform.c, strip_transform.f
        s_right, s_bottom = s_left + transform.a * shape[1], s_top + transform.e * rows
        clipped = shapely.clip_by_rect(
            polygons,
            min(s_left, s_right) - margin,
            min(s_bottom, s_top) - margin,
            max(s_left, s_right) + margin,
            max(s_bottom, s_top) + margin,
        )
        keep = ~shapely.is_empty(clipped)
        out[row0 : row0 + rows] = rasterise(list(clipped[keep]), codes[keep], strip_transform, (rows, shape[1]))
    return out, issues


def _sample_raster(source: ClcSource, crs: str, transform, shape: tuple[int, int]) -> np.ndarray:
    """Raster CORINE sampled exactly at the grid's pixel centres (nearest neighbour).

    Each 10 m pixel centre is transformed to the raster's CRS with pyproj (an exact
    transformation per point, not GDAL's approximate warp transformer) and the raster
    cell containing it is read; centres outside the raster or on no-data get 999.
    Done in strips of :data:`RASTERISE_STRIP_ROWS` rows to bound memory.
    """
    import rasterio
    from pyproj import Transformer
    from rasterio.windows import Window

    destination = np.full(shape, -1, dtype=np.int32)
    try:
        with rasterio.open(source.path) as ds:
            to_src = Transformer.from_crs(crs, ds.crs, always_xy=True)
            inverse = ~ds.transform
            cols_x = transform.c + transform.a * (np.arange(shape[1]) + 0.5)
            for row0 in range(0, shape[0], RASTERISE_STRIP_ROWS):
                rows = min(RASTERISE_STRIP_ROWS, shape[0] - row0)
                ys = transform.f + transform.e * (np.arange(row0, row0 + rows) + 0.5)
                gx, gy = np.meshgrid(cols_x, ys)
                sx, sy = to_src.transform(gx, gy)
                fc, fr = inverse * (sx, sy)
                c = np.floor(fc).astype(np.int64)
                r = np.floor(fr).astype(np.int64)
                inside = (c >= 0) & (c < ds.width) & (r >= 0) & (r < ds.height) & np.isfinite(fc) & np.isfinite(fr)
                if not inside.any():
                    continue
                c0, c1, r0, r1 = c[inside].min(), c[inside].max(), r[inside].min(), r[inside].max()
                window = ds.read(1, window=Window(int(c0), int(r0), int(c1 - c0 + 1), int(r1 - r0 + 1))).astype(
                    np.int64
                )
                values = np.full((rows, shape[1]), -1, dtype=np.int64)
                values[inside] = window[r[inside] - r0, c[inside] - c0]
                if ds.nodata is not None:
                    values[values == int(ds.nodata)] = -1
                destination[row0 : row0 + rows] = np.clip(values, -1, np.iinfo(np.int32).max)
    except rasterio.errors.RasterioError as exc:
        raise CorineError(source.path, f"cannot read raster ({exc})") from None
    out = np.full(shape, NO_POLYGON_CODE, dtype=np.uint16)
    valid = destination >= 0
    if source.raster_values == "grid_codes":
        table = grid_code_table()
        inside = valid & (destination < 256)
        out[inside] = table[destination[inside]]
    else:
        known = np.zeros(1000, dtype=bool)
        known[list(clc_codes())] = True
        inside = valid & (destination < 1000)
        inside[inside] = known[destination[inside]]
        out[inside] = destination[inside].astype(np.uint16)
    return out
