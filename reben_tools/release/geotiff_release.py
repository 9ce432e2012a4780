"""reBEN's GeoTIFF release layout: find patch folders, read patches, write them back (SPEC section 8).

The release holds one single-band GeoTIFF per band and patch::

    BigEarthNet-S2/<product>/<patch_id>/<patch_id>_<band>.tif        uint16, uncompressed
    BigEarthNet-S1/<s1 product>/<s1_name>/<s1_name>_<VV|VH>.tif       float32 dB, uncompressed
    Reference_Maps/<product>/<patch_id>/<patch_id>_reference_map.tif  uint16 CLC codes, deflate, nodata 0

Discovery is lenient about the folder structure: it walks the whole tree and groups
files by the name before the band suffix, so flat folders of patch folders (BigEarthNet
v1's layout), files lying directly in the root, and ``.tiff``/``.TIF`` endings work too.

Reading goes through rasterio. Opening a GeoTIFF costs far more than reading its few KB of
pixels, and most of the opening cost is building the CRS from the GeoKeys, so only one
file per patch (B02, or VV for an S1 patch) is opened with its georeferencing; every other
band is opened with the GTiff open option ``GEOREF_SOURCES=NONE``. Use
:func:`reading_environment` around loops that read many patches: it sets the GDAL options
that stop GDAL from listing directories and probing side-car files on each open.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reben_tools.format.bands import PATCH_SIZE_M, S1_BANDS, S2_BANDS

S2_RELEASE_DIR = "BigEarthNet-S2"
S1_RELEASE_DIR = "BigEarthNet-S1"
REFERENCE_MAPS_RELEASE_DIR = "Reference_Maps"
REFERENCE_MAP_BAND = "reference_map"
"""File-name suffix of a reference map (``<patch_id>_reference_map.tif``)."""
TIFF_SUFFIXES = (".tif", ".tiff")
"""File endings accepted as GeoTIFFs (compared case-insensitively)."""
GEOREFERENCED_BAND = {"S2": "B02", "S1": "VV", "reference_map": REFERENCE_MAP_BAND}
"""The band whose file is opened with georeferencing, per kind of patch."""
KINDS = ("S2", "S1", "reference_map")

GDAL_READ_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per open
    "GDAL_PAM_ENABLED": "NO",  # no .aux.xml probing (pixel values never come from PAM)
    "GTIFF_REPORT_COMPD_CS": "NO",
    "GTIFF_MAX_CUMULATED_MEM_USAGE": str(1 << 30),  # fixed libtiff limit: no /proc/meminfo + cgroup reads per open
    "GDAL_CACHEMAX": 64 << 20,  # bytes; fixed, for the same reason
    "GTIFF_SRS_SOURCE": "GEOKEYS",  # the CRS as the file's GeoKeys state it, without EPSG database look-ups
}
"""GDAL configuration used while reading a release (see :func:`reading_environment`)."""

_BAND_PATTERN = {
    "S2": "|".join(S2_BANDS),
    "S1": "|".join(S1_BANDS),
    "reference_map": REFERENCE_MAP_BAND,
}
_STEM_RE = {kind: re.compile(rf"^(?P<name>.+)_(?P<band>{pattern})$") for kind, pattern in _BAND_PATTERN.items()}
_EXPECTED_BANDS: dict[str, dict[str, tuple[tuple[int, int], str]]] = {
    "S2": {b.name: ((b.size, b.size), np.dtype(b.dtype).name) for b in S2_BANDS.values()},
    "S1": {b.name: ((b.size, b.size), np.dtype(b.dtype).name) for b in S1_BANDS.values()},
    "reference_map": {REFERENCE_MAP_BAND: ((120, 120), "uint16")},
}


class ReleaseError(ValueError):
    """A patch of a GeoTIFF release cannot be used; the message names the file and the reason.

    Attributes:
        path: the offending file (or patch folder).
        reason: what is wrong, without the path.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class PatchFiles:
    """The band files of one patch found in a release.

    Attributes:
        name: the patch name before the band suffix: S2 patch id, S1 name, or the patch id of
            a reference map. This is the archive key (``<name>_reference_map`` for maps).
        kind: ``"S2"``, ``"S1"`` or ``"reference_map"``.
        files: band name -> file path (``{"reference_map": path}`` for a reference map).
            Plain strings: millions of them travel to worker processes, and ``str`` pickles
            an order of magnitude faster than ``Path``.
        duplicates: band name -> every file found for a band that occurs more than once.
    """

    name: str
    kind: str
    files: dict[str, str]
    duplicates: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The folder holding the patch's files (the first band's)."""
        return Path(next(iter(self.files.values()))).parent

    def missing_bands(self) -> list[str]:
        """Expected bands without a file, in band-table order."""
        return [b for b in _EXPECTED_BANDS[self.kind] if b not in self.files]

    def expected_path(self, band: str) -> Path:
        """Where the release would keep ``band`` of this patch (for error messages)."""
        return self.folder / f"{self.name}_{band}.tif"


@dataclass(frozen=True)
class Georeference:
    """Where a patch lies: CRS and the geotransform of its 10 m grid.

    Attributes:
        crs: ``"EPSG:<code>"`` when the CRS has an EPSG code, else its WKT.
        transform: GDAL-order geotransform of the file it was read from, as an
            ``affine.Affine`` (pixel size in metres, upper-left corner in CRS metres).
        width, height: size in pixels of that file.
    """

    crs: str
    transform: object
    width: int
    height: int

    @property
    def ulx(self) -> float:
        return float(self.transform.c)

    @property
    def uly(self) -> float:
        return float(self.transform.f)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return (min(xs), min(ys), max(xs), max(ys))


def discover_patches(root: str | os.PathLike, kind: str) -> dict[str, PatchFiles]:
    """Find every patch of ``kind`` under ``root``, keyed by patch name, sorted by name.

    Walks the whole tree, so ``<root>/<product>/<patch>/`` (reBEN), ``<root>/<patch>/``
    (flat folders of patch folders) and files directly in ``root`` all work. A file
    counts when it ends in ``.tif``/``.tiff`` (any case) and its name is
    ``<name>_<band>`` with a band of ``kind``; anything else (JSON side-cars, other
    bands such as SCL) is ignored.

    Raises:
        ReleaseError: ``root`` is not a directory.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown patch kind {kind!r}; expected one of {KINDS}")
    root = Path(root)
    if not root.is_dir():
        raise ReleaseError(root, f"not a directory (expected the {kind} part of a GeoTIFF release)")
    match_stem = _STEM_RE[kind].match
    join = os.path.join
    found: dict[str, dict[str, list[str]]] = {}
    for folder, _, filenames in os.walk(root):
        for filename in filenames:
            dot = filename.rfind(".")
            if dot < 0 or filename[dot:].lower() not in TIFF_SUFFIXES:
                continue
            match = match_stem(filename[:dot])
            if match is None:
                continue
            found.setdefault(match["name"], {}).setdefault(match["band"], []).append(join(folder, filename))
    patches = {}
    for name in sorted(found):
        bands = found[name]
        files = {band: sorted(paths)[0] for band, paths in bands.items()}
        duplicates = {band: tuple(sorted(paths)) for band, paths in bands.items() if len(paths) > 1}
        patches[name] = PatchFiles(name, kind, files, duplicates)
    return patches


_READING = threading.local()
"""``depth``: how many :func:`reading_environment` blocks this thread is inside (GDAL
environments are per thread in rasterio)."""


@contextlib.contextmanager
def reading_environment() -> Iterator[None]:
    """GDAL options for reading many small GeoTIFFs fast, and no warnings for the
    files deliberately opened without georeferencing.

    Inside it, :func:`read_band` opens files through the environment that is already
    active instead of letting ``rasterio.open`` set up (and tear down) a GDAL
    environment around every single file, which costs as much as opening the file.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with rasterio.Env(**GDAL_READ_OPTIONS), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        _READING.depth = getattr(_READING, "depth", 0) + 1
        try:
            yield
        finally:
            _READING.depth -= 1


def _open_in_active_environment():
    """``open(path, **options)`` that skips rasterio.open's per-call environment set-up,
    or None when this rasterio does not offer the classes it needs."""
    try:
        from rasterio._path import _UnparsedPath
        from rasterio.io import DatasetReader
    except ImportError:  # pragma: no cover - other rasterio versions
        return None

    def open_reader(path: str | os.PathLike, **options):
        return DatasetReader(_UnparsedPath(os.fspath(path)), driver="GTiff", sharing=False, **options)

    return open_reader


_OPEN_IN_ACTIVE_ENVIRONMENT = _open_in_active_environment()


_CRS_STRINGS: dict[str, str] = {}


def _crs_string(crs: object) -> str:
    """``EPSG:<code>`` if the CRS has one, else WKT; cached per WKT (identifying is slow)."""
    wkt = crs.to_wkt()
    text = _CRS_STRINGS.get(wkt)
    if text is None:
        epsg = crs.to_epsg()
        text = f"EPSG:{epsg}" if epsg is not None else wkt
        if len(_CRS_STRINGS) < 1024:
            _CRS_STRINGS[wkt] = text
    return text


def read_band(
    path: str | os.PathLike,
    shape: tuple[int, int],
    dtype: np.dtype | str,
    georeferenced: bool = False,
) -> tuple[np.ndarray, Georeference | None]:
    """Read the single band of a GeoTIFF, checking its shape and dtype.

    Args:
        path: the GeoTIFF.
        shape: expected (rows, columns).
        dtype: expected numpy dtype of the pixels.
        georeferenced: also return the file's :class:`Georeference`; otherwise the file
            is opened without georeferencing (much faster).

    Returns:
        (array of ``shape`` and ``dtype`` in native byte order, georeference or None).

    Raises:
        ReleaseError: the file cannot be opened or read, holds more than one band, or has
            another shape or dtype; the message names the file.
    """
    import rasterio
    from rasterio.errors import RasterioError

    options = {} if georeferenced else {"GEOREF_SOURCES": "NONE"}
    fast_open = _OPEN_IN_ACTIVE_ENVIRONMENT if getattr(_READING, "depth", 0) > 0 else None
    try:
        opened = fast_open(path, **options) if fast_open else rasterio.open(path, driver="GTiff", sharing=False, **options)
        with opened as dataset:
            if dataset.count != 1:
                raise ReleaseError(path, f"holds {dataset.count} bands, expected 1")
            dtype_name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
            if dataset.dtypes[0] != dtype_name:
                raise ReleaseError(path, f"dtype {dataset.dtypes[0]}, expected {dtype_name}")
            if (dataset.height, dataset.width) != tuple(shape):
                raise ReleaseError(
                    path, f"shape {dataset.height}x{dataset.width}, expected {shape[0]}x{shape[1]}"
                )
            array = dataset.read(1)
            georeference = None
            if georeferenced:
                if dataset.crs is None:
                    raise ReleaseError(path, "has no CRS (not georeferenced)")
                if dataset.transform.is_identity:
                    raise ReleaseError(path, "has no geotransform (not georeferenced)")
                georeference = Georeference(
                    _crs_string(dataset.crs), dataset.transform, dataset.width, dataset.height
                )
    except ReleaseError:
        raise
    except (RasterioError, OSError, ValueError) as exc:
        raise ReleaseError(path, f"unreadable TIFF ({' '.join(str(exc).split())})") from None
    return array, georeference


def read_patch(patch: PatchFiles, georeferenced: bool = True) -> tuple[dict[str, np.ndarray], Georeference | None]:
    """Read every band of a patch, checking that none is missing, repeated or malformed.

    Args:
        patch: the patch's files.
        georeferenced: open the kind's georeferenced band (B02, VV or the map) with its
            georeferencing and return it; False opens every file without (faster).

    Returns:
        (band name -> array at native size: uint16 S2 bands 120/60/20 px, float32 VV/VH
        120 px, or ``{"reference_map": uint16 120x120}``; the georeference of the kind's
        georeferenced band, or None when ``georeferenced`` is False).

    Raises:
        ReleaseError: naming the first offending file.
    """
    expected = _EXPECTED_BANDS[patch.kind]
    if patch.duplicates:
        band, paths = next(iter(sorted(patch.duplicates.items())))
        raise ReleaseError(paths[0], f"band {band} of {patch.name} found {len(paths)} times: {list(paths)}")
    missing = patch.missing_bands()
    if missing:
        raise ReleaseError(
            patch.expected_path(missing[0]), f"missing band file(s) {missing} of {patch.kind} patch {patch.name}"
        )
    georeferenced_band = GEOREFERENCED_BAND[patch.kind] if georeferenced else None
    arrays: dict[str, np.ndarray] = {}
    georeference = None
    for band, (shape, dtype) in expected.items():
        is_georef = band == georeferenced_band
        arrays[band], georef = read_band(patch.files[band], shape, dtype, georeferenced=is_georef)
        if is_georef:
            georeference = georef
    return arrays, georeference


# ---------------------------------------------------------------------------- writing


def product_of(name: str) -> str:
    """The product folder of a patch or S1 name.

    S2 patch ids lose their ``_x_y`` suffix (``..._R022_T33UUP``); S1 names keep mission
    through acquisition start (``S1B_IW_GRDH_1SDV_20170612T165809``), as in the release.
    """
    from reben_tools.format.naming import parse_s1_patch_name

    try:
        return parse_s1_patch_name(name)[0]
    except ValueError:
        pass
    parts = name.rsplit("_", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"{name!r} does not end in _<x>_<y>; cannot derive its product folder")
    return parts[0]


MAX_COMPONENT_BYTES = 200
"""Longest patch or product name used as a folder name (file names add a band suffix; most
file systems stop at 255 bytes)."""


def _check_component(part: str, name: str) -> None:
    """``part`` (derived from the untrusted ``name``) must be one plain path component."""
    if (
        not part
        or part in (".", "..")
        or part.startswith(".")
        or any(c in part for c in ("/", "\\", "\x00"))
        or len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES
    ):
        raise ValueError(
            f"name {name[:80]!r}{'...' if len(name) > 80 else ''} cannot be a folder name "
            f"(empty, '.', '..', leading '.', '/', '\\', NUL or over {MAX_COMPONENT_BYTES} bytes)"
        )


def patch_folder(release_root: str | os.PathLike, kind: str, name: str, nested: bool = True) -> Path:
    """The folder of a patch in the release layout (``nested=False``: no product level).

    Names come from archive metadata and are untrusted: a name that is not a plain path
    component (``/``, ``..``, NUL, absurd length), or whose folder would resolve outside
    ``release_root``, raises ValueError naming it.
    """
    top = {"S2": S2_RELEASE_DIR, "S1": S1_RELEASE_DIR, "reference_map": REFERENCE_MAPS_RELEASE_DIR}[kind]
    if not isinstance(name, str):
        raise ValueError(f"patch name must be a string, got {type(name).__name__}: {name!r}")
    _check_component(name, name)
    base = Path(release_root) / top
    if nested:
        product = product_of(name)
        _check_component(product, name)
        folder = base / product / name
    else:
        folder = base / name
    root = Path(release_root).resolve()
    if not folder.resolve().is_relative_to(root):
        raise ValueError(f"name {name[:80]!r}: its folder {folder} resolves outside {root}")
    return folder


def grid_transform(ulx: float, uly: float, size: int):
    """The geotransform of a ``size`` x ``size`` band of a patch with upper-left corner (ulx, uly)."""
    from affine import Affine

    resolution = PATCH_SIZE_M / size
    return Affine(resolution, 0.0, float(ulx), 0.0, -resolution, float(uly))


def write_band(
    path: str | os.PathLike,
    array: np.ndarray,
    crs: str,
    transform: object,
    compress: str | None = None,
    nodata: float | None = None,
) -> None:
    """Write one single-band GeoTIFF the way the reBEN release does (striped, not tiled).

    Args:
        path: destination (parent folders are created).
        array: 2-D pixels; written with their dtype.
        crs: anything rasterio accepts (``"EPSG:32633"``, WKT).
        transform: the band's ``affine.Affine``.
        compress: ``None`` for uncompressed (S2, S1) or ``"deflate"`` (reference maps).
        nodata: the nodata value to declare (0 for reference maps), or None.
    """
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 1,
        "dtype": array.dtype.name, "crs": crs, "transform": transform,
    }
    if compress:
        profile["compress"] = compress
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array, 1)


def write_patch(
    release_root: str | os.PathLike,
    kind: str,
    name: str,
    arrays: Mapping[str, np.ndarray],
    crs: str,
    ulx: float,
    uly: float,
    nested: bool = True,
    suffix: str = ".tif",
) -> Path:
    """Write one patch into the release layout; returns its folder.

    Args:
        release_root: folder that holds (or will hold) ``BigEarthNet-S2`` etc.
        kind: ``"S2"``, ``"S1"`` or ``"reference_map"``.
        name: patch id, S1 name, or (for a reference map) the patch id.
        arrays: band -> pixels (``{"reference_map": ...}`` or ``{"Data": ...}`` for a map).
        crs, ulx, uly: the patch's 10 m grid (S1 patches use their S2 partner's grid).
        nested: ``<kind dir>/<product>/<name>/`` (reBEN) or ``<kind dir>/<name>/``.
        suffix: file ending, ``.tif`` as in the release.
    """
    folder = patch_folder(release_root, kind, name, nested)
    if kind == "reference_map":
        array = arrays.get(REFERENCE_MAP_BAND, arrays.get("Data"))
        if array is None:
            raise ValueError(f"reference map of {name} given without a 'reference_map' or 'Data' array")
        write_band(folder / f"{name}_{REFERENCE_MAP_BAND}{suffix}", array, crs,
                   grid_transform(ulx, uly, array.shape[0]), compress="deflate", nodata=0)
        return folder
    for band, array in arrays.items():
        write_band(folder / f"{name}_{band}{suffix}", array, crs, grid_transform(ulx, uly, array.shape[0]))
    return folder


# ---------------------------------------------------------------------------- synthetic release


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

    Patches lie on the SPEC grid of real tiles (:data:`SYNTHETIC_TILES`, real UTM CRSs and
    corners), spread over one S2 product per tile; each has an S1 partner named by SPEC
    section 2 (acquired 0.2 to 5.7 days from the S2 sensing time), a reference map of real
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
    from reben_tools.format.archive import FLAGGED_METADATA_FILE, METADATA_FILE, write_metadata
    from reben_tools.format.labels import labels_from_reference_map
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
    for (tile, product, s1_product), count in zip(products, per_product):
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
        rows.append({
            "patch_id": pid,
            "labels": labels_from_reference_map(reference_map),
            "split": str(reben_split(np.array([x]), np.array([y]))[0]),
            "country": tile.country,
            "s1_name": s1_name,
            "s2v1_name": naming.s2v1_name(pid),
            "contains_seasonal_snow": bool(flag < flagged_fraction / 3),
            "contains_cloud_or_shadow": bool(flagged_fraction / 3 <= flag < flagged_fraction),
        })
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


__all__ = [
    "GDAL_READ_OPTIONS", "GEOREFERENCED_BAND", "Georeference", "PatchFiles", "REFERENCE_MAPS_RELEASE_DIR",
    "REFERENCE_MAP_BAND", "ReleaseError", "S1_RELEASE_DIR", "S2_RELEASE_DIR", "SYNTHETIC_TILES",
    "SyntheticRelease", "SyntheticTile", "TIFF_SUFFIXES", "discover_patches", "grid_transform", "patch_folder",
    "product_of", "read_band", "read_patch", "reading_environment", "synthetic_patch", "write_band",
    "write_patch", "write_synthetic_release",
]
