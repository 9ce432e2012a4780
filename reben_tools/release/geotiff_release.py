"""reBEN's GeoTIFF release layout: find patch folders, read patches, write them back (reBEN's BigEarthNet-S2/-S1/Reference_Maps folders).

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

Owns: the release layout (folder names, band-file naming, expected shapes and dtypes),
:class:`ReleaseError`, :class:`PatchFiles`, :class:`Georeference`, discovering patches and
reading bands and patches (with the GDAL reading environment).
Does not own: writing GeoTIFFs and patch folders (``release.geotiff_write``), the synthetic
test release (``release.synthetic_release``), encoding to an archive (``release.encode*``).
May import: ``format`` (bands), numpy, rasterio (lazily).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reben_tools.format.bands import S1_BANDS, S2_BANDS

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.crs import CRS

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
    transform: Affine
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


def _crs_string(crs: CRS) -> str:
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
        opened = (
            fast_open(path, **options) if fast_open else rasterio.open(path, driver="GTiff", sharing=False, **options)
        )
        with opened as dataset:
            if dataset.count != 1:
                raise ReleaseError(path, f"holds {dataset.count} bands, expected 1")
            dtype_name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
            if dataset.dtypes[0] != dtype_name:
                raise ReleaseError(path, f"dtype {dataset.dtypes[0]}, expected {dtype_name}")
            if (dataset.height, dataset.width) != tuple(shape):
                raise ReleaseError(path, f"shape {dataset.height}x{dataset.width}, expected {shape[0]}x{shape[1]}")
            array = dataset.read(1)
            georeference = None
            if georeferenced:
                if dataset.crs is None:
                    raise ReleaseError(path, "has no CRS (not georeferenced)")
                if dataset.transform.is_identity:
                    raise ReleaseError(path, "has no geotransform (not georeferenced)")
                georeference = Georeference(_crs_string(dataset.crs), dataset.transform, dataset.width, dataset.height)
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


__all__ = [
    "GDAL_READ_OPTIONS",
    "GEOREFERENCED_BAND",
    "REFERENCE_MAPS_RELEASE_DIR",
    "REFERENCE_MAP_BAND",
    "S1_RELEASE_DIR",
    "S2_RELEASE_DIR",
    "TIFF_SUFFIXES",
    "Georeference",
    "PatchFiles",
    "ReleaseError",
    "discover_patches",
    "read_band",
    "read_patch",
    "reading_environment",
]
