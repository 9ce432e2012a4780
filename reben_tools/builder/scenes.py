"""Reading Sentinel-2 L2A products and Sentinel-1 scenes (L2A .SAFE/JPEG2000 or GeoTIFF folders; S1 VV/VH GeoTIFFs).

Sentinel-2 products come either as ``.SAFE`` folders (JPEG2000 bands under
``GRANULE/*/IMG_DATA/R10m|R20m|R60m``, ``MTD_MSIL2A.xml`` at the top) or as a
folder named like the product holding one GeoTIFF per band (``..._B02.tif``,
``..._B02_10m.tif``, ``..._SCL.tif``). Each band is taken at its native
resolution; all rasters must share one CRS and one extent, their 10, 20 and 60 m
grids anchored at the same upper-left corner.

Sentinel-1 scenes are folders named like the S1 product
(``S1B_IW_GRDH_1SDV_20170612T165809...``) holding ``*_VV.tif`` and ``*_VH.tif``
(float32 backscatter in dB) in any CRS.

A product or scene folder may be local or under an ``s3://`` prefix (a
:class:`~reben_tools.builder.locations.RemotePath`, listed through s3fs and read through GDAL's
``/vsis3/``); products and scenes described by STAC items (``builder.stac``) reuse the
raster checks here (:func:`check_band_rasters`, :func:`s1_scene_from_files`).

Every failure raises :class:`SceneError` naming the file at fault (credentials, endpoints
and signed query strings removed: ``locations.redact``).

Owns: recognising and opening S2 products (:func:`open_s2_product`) and S1 scenes
(:func:`open_s1_scene`), reading a block's bands (:func:`read_block`), :class:`SceneError`.
Does not own: warping S1 onto patches (s1_warp.py), product naming rules (reben_tools.format.naming), the patch grid (build.tiling),
pairing S1 with S2 (build.pipeline.discovery).
May import: reben_tools.format, reben_tools.geo, reben_tools.builder.tiling / locations, rasterio, numpy.
"""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.windows import Window

from reben_tools.builder.locations import RemoteError, RemotePath, location, redact
from reben_tools.builder.tiling import Block, PatchGrid, tile_patch_grid
from reben_tools.format import naming
from reben_tools.format.bands import PATCH_SIZE_M, S2_BANDS, SCL_BAND

if TYPE_CHECKING:
    from reben_tools.builder.stac import ItemRef

PRODUCT_BANDS: dict[str, int] = {**{b.name: b.resolution_m for b in S2_BANDS.values()}, "SCL": SCL_BAND.resolution_m}
"""Every raster read from a product (12 bands + SCL) and its native resolution in metres."""


_GEOTIFF_BAND_RE = re.compile(r"_(B0[1-9]|B1[0-2]|B8A|SCL)(?:_(10|20|60)m)?\.tiff?$", re.IGNORECASE)
_ALIGN_TOL_M = 1e-3


class SceneError(ValueError):
    """A product or scene cannot be used; ``path`` is the file or folder at fault."""

    def __init__(self, path: Path | RemotePath | ItemRef | str, reason: str):
        path, reason = redact(str(path)), redact(str(reason))
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class S2Product:
    """A Sentinel-2 L2A product whose rasters were checked to agree.

    Attributes:
        path: the product folder (``.SAFE`` or GeoTIFF folder; a local ``Path`` or an ``s3://``
            :class:`~reben_tools.builder.locations.RemotePath`), or the STAC item (``stac.ItemRef``,
            named like the product).
        name: the parsed product name.
        layout: ``"SAFE"``, ``"GeoTIFF"`` or ``"STAC"``.
        band_paths: raster file of each of the 12 bands and ``SCL``.
        crs: the rasters' CRS as an EPSG string (``"EPSG:32633"``) or WKT when it has no EPSG code.
        grid: the 1,200 m patch grid cut from the rasters' extent.
        boa_add_offset: offset to add to DNs, from ``MTD_MSIL2A.xml``; without that file None
            (unknown: the baseline number does not tell it) unless the config sets it.
    """

    path: Path | RemotePath | ItemRef
    name: naming.S2ProductName
    layout: str
    band_paths: dict[str, Path | RemotePath]
    crs: str
    grid: PatchGrid
    boa_add_offset: int | None

    @property
    def prefix(self) -> str:
        """The product name without generation time: the stem of its patch ids."""
        return self.name.patch_prefix


@dataclass(frozen=True)
class S1Scene:
    """A Sentinel-1 scene: VV and VH rasters on one grid.

    Attributes:
        path: the scene folder.
        prefix: S1 product prefix, mission through acquisition start.
        acquired: acquisition start (UTC, naive).
        vv, vh: the two rasters.
        crs: the rasters' CRS (EPSG string or WKT).
        bounds: ``(left, bottom, right, top)`` in ``crs``.
        nodata: no-data besides NaN (None: only NaN); by default the nodata tag, else exact 0
            (SNAP / Earth Engine exports write an untagged 0; 0 dB does not occur in real scenes).
        linear: the rasters hold linear power, converted to dB when read.
        product_type: ``"GRD sigma0"`` (reBEN's input: SNAP-processed GRD) or ``"RTC gamma0"``
            (radiometrically terrain-corrected, e.g. Planetary Computer's ``sentinel-1-rtc``);
            recorded in the manifest.
    """

    path: Path
    prefix: str
    acquired: datetime
    vv: Path
    vh: Path
    crs: str
    bounds: tuple[float, float, float, float]
    nodata: float | None = field(default=None)
    linear: bool = False
    product_type: str = "GRD sigma0"


def error_text(exc: BaseException) -> str:
    """An exception's message with the GDAL error that caused it (rasterio's says "see previous exception")."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


def crs_string(crs: rasterio.crs.CRS) -> str:
    """``"EPSG:nnnn"`` when the CRS has an EPSG code, else its WKT."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def looks_like_s2_product(path: Path | RemotePath) -> bool:
    """Whether ``path`` is a product folder itself rather than a folder of products."""
    if path.suffix.upper() == ".SAFE":
        return True
    if (path / "GRANULE").is_dir() or (path / "MTD_MSIL2A.xml").is_file():
        return True
    return any(_GEOTIFF_BAND_RE.search(p.name) for p in path.glob("*.tif*"))


def _find_safe_bands(path: Path | RemotePath) -> dict[str, Path | RemotePath]:
    granules = sorted(p for p in (path / "GRANULE").glob("*") if p.is_dir())
    if not granules:
        raise SceneError(path / "GRANULE", "no granule folder in the SAFE product")
    if len(granules) > 1:
        raise SceneError(path / "GRANULE", f"{len(granules)} granule folders; expected one")
    img = granules[0] / "IMG_DATA"
    out: dict[str, Path | RemotePath] = {}
    for band, res in PRODUCT_BANDS.items():
        folder = img / f"R{res}m"
        matches: list[Path | RemotePath] = sorted(folder.glob(f"*_{band}_{res}m.jp2"))
        if not matches:
            raise SceneError(folder, f"missing band {band}: no *_{band}_{res}m.jp2 file")
        if len(matches) > 1:
            raise SceneError(folder, f"band {band} found {len(matches)} times: {[m.name for m in matches]}")
        out[band] = matches[0]
    return out


def _find_geotiff_bands(path: Path | RemotePath) -> dict[str, Path | RemotePath]:
    candidates: dict[str, list[tuple[int | None, Path | RemotePath]]] = {}
    files: list[Path | RemotePath] = sorted(path.iterdir())
    for file in files:
        match = _GEOTIFF_BAND_RE.search(file.name)
        if match and file.is_file():
            res = int(match.group(2)) if match.group(2) else None
            candidates.setdefault(match.group(1).upper(), []).append((res, file))
    out: dict[str, Path | RemotePath] = {}
    for band, res in PRODUCT_BANDS.items():
        found = candidates.get(band, [])
        native = [f for r, f in found if r == res] or [f for r, f in found if r is None]
        if not native:
            if found:
                raise SceneError(found[0][1], f"band {band} is not at its native {res} m resolution")
            raise SceneError(path, f"missing band {band}: no *_{band}.tif or *_{band}_{res}m.tif file")
        if len(native) > 1:
            raise SceneError(path, f"band {band} found {len(native)} times: {[f.name for f in native]}")
        out[band] = native[0]
    return out


def read_boa_add_offset(mtd_path: Path | RemotePath) -> int:
    """The BOA_ADD_OFFSET of a product from ``MTD_MSIL2A.xml`` (0 when the file lists none).

    Raises:
        SceneError: the file is not readable XML, or its offsets differ between bands.
    """
    try:
        root = ET.fromstring(mtd_path.read_bytes())
    except (OSError, ET.ParseError) as exc:
        raise SceneError(mtd_path, f"cannot parse product metadata ({exc})") from None
    values = set()
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "BOA_ADD_OFFSET":
            try:
                values.add(int(float((element.text or "").strip())))
            except ValueError:
                raise SceneError(mtd_path, f"BOA_ADD_OFFSET {element.text!r} is not a number") from None
    if len(values) > 1:
        raise SceneError(mtd_path, f"BOA_ADD_OFFSET differs between bands: {sorted(values)}")
    return values.pop() if values else 0


def open_s2_product(path: str | Path | RemotePath, boa_add_offset: int | None = None) -> S2Product:
    """Find, parse and check a Sentinel-2 L2A product (headers only; no pixels are decoded).

    Args:
        path: a ``.SAFE`` folder or a folder of band GeoTIFFs, local or under ``s3://``.
        boa_add_offset: the offset to record when the product has no ``MTD_MSIL2A.xml``
            (None: unknown). A metadata file always wins.

    Raises:
        SceneError: the folder is named unlike a Sentinel-2 L2A product, a band is
            missing or unreadable, or the rasters disagree in CRS, resolution or extent.
    """
    path = location(path)
    try:
        return _open_s2_product(path, boa_add_offset)
    except RemoteError as exc:
        raise SceneError(path, f"cannot list or read ({exc})") from None


def _open_s2_product(path: Path | RemotePath, boa_add_offset: int | None) -> S2Product:
    if not path.is_dir():
        if isinstance(path, RemotePath) and path.scheme != "s3":
            raise SceneError(
                path,
                f"an {path.scheme}:// URL names a single file, not a product folder; give products on an "
                "HTTP server through STAC (--stac-items), or folders under s3://",
            )
        raise SceneError(path, "not a folder (expected a .SAFE product or a folder of band GeoTIFFs)")
    stem = path.name
    try:
        name = naming.parse_s2_product_name(stem)
    except ValueError as exc:
        raise SceneError(path, str(exc)) from None
    if (path / "GRANULE").is_dir():
        layout, band_paths = "SAFE", _find_safe_bands(path)
    else:
        layout, band_paths = "GeoTIFF", _find_geotiff_bands(path)
    crs, grid = check_band_rasters(path, name, band_paths)
    mtd = path / "MTD_MSIL2A.xml"
    offset: int | None
    if mtd.is_file():
        offset = read_boa_add_offset(mtd)
    else:
        offset = boa_add_offset
    return S2Product(path, name, layout, band_paths, crs, grid, offset)


def check_band_rasters(path, name: naming.S2ProductName, band_paths: dict) -> tuple[str, PatchGrid]:
    """Open every band's header and check they agree; returns ``(crs string, patch grid)``.

    Every band must be north-up at its native resolution, all in one CRS with one
    extent, on the product's MGRS tile grid, holding at least one complete patch.

    Raises:
        SceneError: naming the first raster at fault.
    """
    reference = None
    for band, file in band_paths.items():
        res = PRODUCT_BANDS[band]
        try:
            with rasterio.open(file) as ds:
                crs, transform, width, height, count = ds.crs, ds.transform, ds.width, ds.height, ds.count
        except rasterio.errors.RasterioError as exc:
            raise SceneError(file, f"cannot open raster ({exc})") from None
        if crs is None:
            raise SceneError(file, "raster has no CRS")
        if count < 1:
            raise SceneError(file, "raster has no band")
        if abs(transform.a - res) > 1e-9 or abs(transform.e + res) > 1e-9 or transform.b or transform.d:
            raise SceneError(file, f"pixel size {transform.a} x {-transform.e} m, expected north-up {res} m for {band}")
        extent = (transform.c, transform.f, width * res, height * res)
        if reference is None:
            reference = (file, crs, extent)
            continue
        ref_file, ref_crs, ref_extent = reference
        if crs != ref_crs:
            raise SceneError(file, f"CRS {crs_string(crs)} differs from {crs_string(ref_crs)} of {ref_file.name}")
        if any(abs(a - b) > _ALIGN_TOL_M for a, b in zip(extent, ref_extent, strict=True)):
            raise SceneError(
                file,
                f"extent (ulx {extent[0]}, uly {extent[1]}, {extent[2]} x {extent[3]} m) differs from "
                f"{ref_file.name} (ulx {ref_extent[0]}, uly {ref_extent[1]}, {ref_extent[2]} x {ref_extent[3]} m)",
            )
    assert reference is not None
    _, ref_crs, (ulx, uly, width_m, height_m) = reference
    grid = _tile_grid_of(path, name, ref_crs, ulx, uly, width_m, height_m)
    if grid.num_patches == 0:
        raise SceneError(path, f"extent {width_m} x {height_m} m holds no complete {PATCH_SIZE_M} m patch")
    return crs_string(ref_crs), grid


def _tile_grid_of(
    path,
    name: naming.S2ProductName,
    crs: rasterio.crs.CRS,
    ulx: float,
    uly: float,
    width_m: float,
    height_m: float,
) -> PatchGrid:
    """The product's patch grid on its MGRS tile's grid (:func:`tile_patch_grid`); SceneError if off it."""
    try:
        return tile_patch_grid(
            name.tile, crs.to_epsg(), crs_string(crs), ulx, uly, width_m, height_m, max(PRODUCT_BANDS.values())
        )
    except ValueError as exc:
        raise SceneError(path, str(exc)) from None


def block_window(block: Block, resolution_m: int, grid: PatchGrid | None = None) -> Window:
    """The pixel window of a block in a raster of ``resolution_m`` (the grid's corner ``pad`` metres in)."""
    per_patch = PATCH_SIZE_M // resolution_m
    col0 = round(grid.pad_x_m / resolution_m) if grid is not None else 0
    row0 = round(grid.pad_y_m / resolution_m) if grid is not None else 0
    return Window(col0, row0 + block.row_start * per_patch, block.ncols * per_patch, block.nrows * per_patch)


_LAST_TILE_ROW: dict[tuple[int, str], tuple[int, np.ndarray]] = {}
"""Per thread and raster: the last JPEG2000 tile row decoded (index, full-width array)."""


class _OpenRasters:
    """Rasters kept open between blocks with their last decoded tile row: each thread keeps its
    own ``capacity`` most recently used (about one product), so threads building different
    products never evict each other's rasters. ``opened`` counts opens (tests, benchmarks)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._open: dict[int, OrderedDict[str, rasterio.io.DatasetReader]] = {}
        self._lock = threading.Lock()
        self.opened = 0

    def get(self, path: Path | RemotePath) -> rasterio.io.DatasetReader:
        thread = threading.get_ident()
        with self._lock:
            mine = self._open.setdefault(thread, OrderedDict())
            ds = mine.pop(str(path), None)
            if ds is None:
                ds = rasterio.open(path)
                self.opened += 1
            mine[str(path)] = ds
            while len(mine) > self.capacity:
                _, old = mine.popitem(last=False)
                _LAST_TILE_ROW.pop((thread, old.name), None)
                old.close()
            return ds

    def discard(self, path: Path | RemotePath) -> None:
        thread = threading.get_ident()
        with self._lock:
            ds = self._open.get(thread, OrderedDict()).pop(str(path), None)
            if ds is not None:
                _LAST_TILE_ROW.pop((thread, ds.name), None)
                ds.close()

    def close_all(self) -> None:
        with self._lock:
            for mine in self._open.values():
                while mine:
                    mine.popitem()[1].close()
            self._open.clear()
            _LAST_TILE_ROW.clear()


OPEN_RASTERS = _OpenRasters()
"""The open rasters of this process (used by :func:`read_block` with ``keep_open=True``)."""


def _read_by_tile_rows(ds, window: Window) -> np.ndarray:
    """Read ``window`` of a tiled JPEG2000 whole tile rows at a time, keeping the last one.

    A JPEG2000 tile is decoded whole whatever part of it is read, and GDAL's driver keeps
    no decoded tiles between reads. Blocks of patch rows do not line up with the tiles
    (1,200 m patches, 1,024-pixel tiles), so two consecutive blocks share a tile row:
    keeping the last decoded tile row lets the next block of the product on the same
    worker start from it instead of decoding it again.
    """
    block_h = ds.block_shapes[0][0]
    if ds.driver != "JP2OpenJPEG" or block_h >= ds.height:
        return ds.read(1, window=window, boundless=False)
    key = (threading.get_ident(), ds.name)
    row0, col0 = int(window.row_off), int(window.col_off)
    height, width = int(window.height), int(window.width)
    out = np.empty((height, width), dtype=ds.dtypes[0])
    first = row0 - row0 % block_h
    for r in range(first, row0 + height, block_h):
        cached = _LAST_TILE_ROW.get(key)
        if cached is not None and cached[0] == r:
            tile_row = cached[1]
        else:
            tile_row = ds.read(1, window=Window(0, r, ds.width, min(block_h, ds.height - r)))
        r_start, r_stop = max(r, row0), min(r + block_h, row0 + height)
        out[r_start - row0 : r_stop - row0] = tile_row[r_start - r : r_stop - r, col0 : col0 + width]
        if r_stop == row0 + height:
            _LAST_TILE_ROW[key] = (r, tile_row)
    return out


def forget_tile_rows() -> None:
    """Drop the decoded tile rows kept by :func:`read_block` (``keep_open=True``)."""
    _LAST_TILE_ROW.clear()


def read_block(
    product: S2Product,
    block: Block,
    bands: tuple[str, ...] | None = None,
    keep_open: bool = False,
) -> dict[str, np.ndarray]:
    """Read a block's window of each band at native resolution.

    Args:
        product: the product.
        block: the patch rows to read.
        bands: the rasters to read (default: the 12 bands and SCL).
        keep_open: leave the rasters open in :data:`OPEN_RASTERS` and keep the last decoded
            JPEG2000 tile row of each, so that the next block of the same product on this
            worker does not decode the tile row both blocks share again.

    Returns:
        ``{band: array}``: uint16 (SCL: uint8) arrays of shape
        ``(nrows * 1200 / res, ncols * 1200 / res)`` for each band's resolution ``res``.

    Raises:
        SceneError: a raster cannot be decoded (corrupt or truncated file), naming it.
    """
    out = {}
    for band in bands or tuple(PRODUCT_BANDS):
        file = product.band_paths[band]
        window = block_window(block, PRODUCT_BANDS[band], product.grid)
        try:
            if keep_open:
                data = _read_by_tile_rows(OPEN_RASTERS.get(file), window)
            else:
                with rasterio.open(file) as ds:
                    data = ds.read(1, window=window, boundless=False)
        except (rasterio.errors.RasterioError, ValueError) as exc:
            OPEN_RASTERS.discard(file)
            where = " (a remote read that failed after its retries)" if isinstance(file, RemotePath) else ""
            raise SceneError(
                file,
                f"cannot read band {band} rows {window.row_off}..{window.row_off + window.height}{where} "
                f"({error_text(exc)})",
            ) from None
        if data.shape != (window.height, window.width):
            raise SceneError(
                file, f"read {data.shape} pixels for band {band}, expected {(window.height, window.width)}"
            )
        out[band] = data.astype(np.uint8 if band == "SCL" else np.uint16, copy=False)
    return out


def looks_like_s1_scene(path: Path | RemotePath) -> bool:
    """Whether ``path`` holds VV/VH rasters itself rather than being a folder of scenes."""
    return any(path.glob("*_VV.tif*")) or any(path.glob("*_VH.tif*"))


S1_LINEAR_MAX = 2.0
"""Largest 99th-percentile value of a scene taken as linear sigma0 (dB scenes reach below 0)."""


def open_s1_scene(path: str | Path | RemotePath, nodata: str | float = "auto", values: str = "db") -> S1Scene:
    """Parse and check a Sentinel-1 scene folder (headers and a decimated overview of VV).

    Args:
        path: the scene folder, local or under ``s3://``.
        nodata: ``"auto"`` (the nodata tag, else exact 0), ``"nan"`` (only NaN), or a number.
        values: ``"db"`` (refuse a scene that looks linear: no negative value and the 99th
            percentile at most :data:`S1_LINEAR_MAX`) or ``"linear"`` (convert with 10 log10).

    Raises:
        SceneError: the name is not a Sentinel-1 product name, a polarisation is missing,
            VV and VH are not on the same grid, or dB values were expected and the scene is linear.
    """
    path = location(path)
    try:
        prefix = naming.s1_product_prefix(path.name)
        acquired = naming.s1_acquisition_time(path.name)
    except ValueError as exc:
        raise SceneError(path, str(exc)) from None
    files = {}
    try:
        for pol in ("VV", "VH"):
            matches = sorted(path.glob(f"*_{pol}.tif")) + sorted(path.glob(f"*_{pol}.tiff"))
            if len(matches) != 1:
                raise SceneError(path, f"expected one *_{pol}.tif file, found {len(matches)}")
            files[pol] = matches[0]
    except RemoteError as exc:
        raise SceneError(path, f"cannot list or read ({exc})") from None
    return s1_scene_from_files(path, prefix, acquired, files["VV"], files["VH"], nodata, values)


def s1_scene_from_files(
    path,
    prefix: str,
    acquired: datetime,
    vv,
    vh,
    nodata: str | float = "auto",
    values: str = "db",
    product_type: str = "GRD sigma0",
) -> S1Scene:
    """Check a scene's VV and VH rasters (same grid, a CRS, dB unless ``values='linear'``) and describe it.

    Raises:
        SceneError: naming the raster at fault.
    """
    files = {"VV": vv, "VH": vh}
    headers = {}
    for pol, file in files.items():
        try:
            with rasterio.open(file) as ds:
                headers[pol] = (ds.crs, ds.transform, ds.width, ds.height, ds.nodata, ds.bounds)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(file, f"cannot open raster ({exc})") from None
        if headers[pol][0] is None:
            raise SceneError(file, "raster has no CRS")
    if headers["VV"][:4] != headers["VH"][:4]:
        raise SceneError(files["VH"], f"VH grid differs from VV ({files['VV'].name})")
    crs, _, width, height, tag, bounds = headers["VV"]
    if nodata == "auto":
        value = tag if tag is not None else 0.0
    elif nodata == "nan":
        value = None
    else:
        value = float(nodata)
    linear = values == "linear"
    if not linear:
        try:
            with rasterio.open(files["VV"]) as ds:
                step = max(1, max(width, height) // 512)
                sample = ds.read(1, out_shape=(max(1, height // step), max(1, width // step))).astype(np.float64)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(files["VV"], f"cannot read raster ({exc})") from None
        sample = sample[
            np.isfinite(sample) & ((sample != value) if value is not None and not np.isnan(value) else True)
        ]
        if sample.size and sample.min() >= 0 and np.percentile(sample, 99) <= S1_LINEAR_MAX:
            raise SceneError(
                files["VV"],
                "values look like linear sigma0 (none negative, 99% at most "
                f"{S1_LINEAR_MAX}), not dB; convert them, or set s1_values = 'linear'",
            )
    return S1Scene(
        path, prefix, acquired, files["VV"], files["VH"], crs_string(crs), tuple(bounds), value, linear, product_type
    )
