"""Generator of the embedded demo region: real-layout Sentinel-2 L2A products,
Sentinel-1 scenes, a CORINE 2018 GeoPackage and country polygons.

The region straddles the Belgium / Luxembourg border over two real MGRS tiles in
two UTM zones:

* ``T31UGR`` (EPSG:32631, upper-left corner (699960, 5600040), nearest country
  Belgium): a ``.SAFE`` product of 2017-06-13 (baseline N0205, no offset, a cloud
  with cirrus and shadow) and one of 2017-12-22 (N0500, ``BOA_ADD_OFFSET`` -1000,
  a diagonal no-data swath edge and snow);
* ``T32ULV`` (EPSG:32632, upper-left corner (300000, 5500020), nearest country
  Luxembourg): a ``.SAFE`` product of 2018-04-15 (N0400, offset, a single zero
  pixel in B8A, a small cloud) and a folder of GeoTIFF bands of 2017-09-27 (N0205).

Each product is small but real in layout: its rasters start at the real tile's
upper-left corner and cover the first ``patches_per_side`` x ``patches_per_side``
patches plus 600 m, so that the last patch row and column are incomplete (as in a
full tile: 109,800 m = 91.5 patches). Bands are JPEG2000 (lossless OpenJPEG) in
``GRANULE/L2A_*/IMG_DATA/R10m|R20m|R60m`` at every resolution a real L2A product
holds them, uint16 digital numbers (0 = no data; +1000 for baselines N0400 and
later), ``SCL`` uint8 at 20 m, with ``MTD_MSIL2A.xml``, the granule's ``MTD_TL.xml``
and ``manifest.safe``.

Land cover is a mosaic of CORINE-like polygons (Voronoi cells with spatially
correlated codes, dissolved by code) plus designed features with UNLABELED codes
(a 999 gap, 122 strips, a 124 airport, a 131 quarry) placed on exact patch
fractions. Reflectances follow a per-class spectrum (vegetation red edge / NIR
high, water dark in the NIR, urban flat) with per-polygon and per-pixel noise and
a seasonal NIR factor, so a model can learn the labels from the pixels.
Sentinel-1 scenes (VV, VH, float32 dB, EPSG:4326, NaN no-data) are rotated swath
strips, 0.3 to 3.8 days from the S2 dates, whose backscatter depends on the class.

Everything is drawn from ``numpy.random.default_rng`` seeded per component, so the
same seed gives byte-identical files. :func:`generate_region` returns a
:class:`DemoRegion` with the paths and the facts a test can check (worked out from
the design geometry, not by re-implementing the pipeline); it also writes them to
``expected.json``. :func:`write_full_size_product` writes one full 10,980 x 10,980
product (plus S1 and CORINE over it) by blocks of patch rows, for memory benchmarks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from reben_tools.format.bands import PATCH_SIZE_M, S2_BANDS
from reben_tools.build.countries import BIGEARTHNET_COUNTRIES
from reben_tools.format.labels import NO_POLYGON_CODE, UNLABELED, clc_legend
from reben_tools.geo.mgrs_grid import TileGrid, tile_grid
from reben_tools.format.naming import parse_s2_product_name, patch_id, s1_patch_name

TILE_SIDE_M = 109_800
EXTRA_M = 600
"""Metres beyond the last complete patch (half a patch, as in a full tile)."""
MIN_PATCHES_PER_SIDE = 10
"""The designed features (gaps, snow, clouds, no-data) lie within the first 10 x 10 patches."""

JP2_CREATION_OPTIONS: dict[str, str] = {"QUALITY": "100", "REVERSIBLE": "YES", "YCBCR420": "NO"}
"""Lossless JPEG2000 (reversible 5/3 wavelet) with GDAL's JP2OpenJPEG driver."""

NATIVE_RESOLUTION: dict[str, int] = {**{b.name: b.resolution_m for b in S2_BANDS.values()}, "SCL": 20}
"""Native resolution (m) of the 12 L2A bands and SCL."""

SAFE_FOLDER_BANDS: dict[int, tuple[str, ...]] = {
    10: ("B02", "B03", "B04", "B08"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL"),
}
"""Rasters in each ``IMG_DATA/R..m`` folder, as in a real L2A product (AOT, WVP and TCI left out)."""

ESA_BAND_ID: dict[str, int] = {
    "B01": 0, "B02": 1, "B03": 2, "B04": 3, "B05": 4, "B06": 5, "B07": 6, "B08": 7,
    "B8A": 8, "B09": 9, "B10": 10, "B11": 11, "B12": 12,
}
"""``band_id`` of each band in ``MTD_MSIL2A.xml`` (B10 included, as ESA numbers them)."""

S2_ORDER: tuple[str, ...] = tuple(S2_BANDS)
"""B01 .. B12 (ESA order, no B10): the column order of :data:`CLASS_SPECTRA`."""


S1_PIXEL_DEG = (0.0003, 0.0002)
"""S1 pixel size (lon, lat) in degrees: about 21 m x 22 m at 50 N."""
S1_TILT = math.tan(math.radians(12.0))
"""Tangent of the swath's angle to north (ground track about 12 degrees off the meridian)."""
S1_MARGIN_M = 1500.0
"""How far the S1 rasters reach beyond the S2 product on every side."""
S1_MAX_GAP_DAYS = 6.0
"""Largest S1 - S2 gap the expected partners allow (the pipeline's default; reBEN's largest is 5.7)."""
S1_CERTAIN_MARGIN_M = 70.0
"""Distance from a swath edge within which a patch's S1 coverage is called ambiguous (3 S1 pixels)."""
LABEL_CERTAIN_INSET_M = 7.5
"""A polygon whose intersection with a patch still holds a disc of this radius covers a 10 m pixel centre."""

# ---------------------------------------------------------------------------------------
# Land cover: spectra, backscatter and SCL per CLC code
# ---------------------------------------------------------------------------------------

CLASS_SPECTRA: dict[int, tuple[float, ...]] = {
    #      B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
    111: (0.10, 0.10, 0.11, 0.12, 0.14, 0.15, 0.16, 0.17, 0.17, 0.17, 0.20, 0.17),
    112: (0.08, 0.08, 0.10, 0.10, 0.13, 0.18, 0.21, 0.22, 0.23, 0.23, 0.20, 0.15),
    121: (0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20, 0.20, 0.20, 0.24, 0.21),
    122: (0.09, 0.09, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.15, 0.15, 0.17, 0.15),
    124: (0.09, 0.10, 0.11, 0.12, 0.15, 0.20, 0.23, 0.24, 0.25, 0.25, 0.22, 0.16),
    131: (0.15, 0.17, 0.20, 0.23, 0.25, 0.26, 0.27, 0.28, 0.29, 0.29, 0.33, 0.28),
    211: (0.06, 0.07, 0.10, 0.12, 0.16, 0.22, 0.26, 0.28, 0.30, 0.30, 0.28, 0.20),
    222: (0.04, 0.04, 0.07, 0.06, 0.11, 0.25, 0.31, 0.33, 0.35, 0.35, 0.21, 0.11),
    231: (0.03, 0.04, 0.08, 0.05, 0.12, 0.30, 0.38, 0.40, 0.42, 0.42, 0.22, 0.11),
    242: (0.05, 0.05, 0.09, 0.08, 0.14, 0.26, 0.31, 0.33, 0.35, 0.35, 0.24, 0.15),
    243: (0.04, 0.04, 0.07, 0.05, 0.11, 0.27, 0.34, 0.36, 0.38, 0.38, 0.20, 0.10),
    311: (0.03, 0.03, 0.06, 0.03, 0.09, 0.28, 0.36, 0.38, 0.40, 0.40, 0.18, 0.08),
    312: (0.02, 0.02, 0.04, 0.02, 0.06, 0.16, 0.20, 0.22, 0.23, 0.23, 0.10, 0.05),
    313: (0.025, 0.025, 0.05, 0.025, 0.075, 0.22, 0.28, 0.30, 0.31, 0.31, 0.14, 0.065),
    321: (0.05, 0.05, 0.08, 0.08, 0.13, 0.22, 0.26, 0.27, 0.28, 0.28, 0.25, 0.15),
    324: (0.03, 0.035, 0.06, 0.04, 0.10, 0.24, 0.30, 0.32, 0.34, 0.34, 0.17, 0.08),
    411: (0.03, 0.03, 0.05, 0.04, 0.08, 0.18, 0.22, 0.23, 0.24, 0.24, 0.12, 0.06),
    511: (0.05, 0.06, 0.08, 0.06, 0.05, 0.03, 0.02, 0.02, 0.018, 0.018, 0.008, 0.005),
    512: (0.04, 0.05, 0.06, 0.04, 0.03, 0.02, 0.015, 0.012, 0.01, 0.01, 0.005, 0.003),
}
"""Surface reflectance (0..1) per CLC code and band, in :data:`S2_ORDER`."""

GAP_SPECTRUM_CODE = 231
"""Spectrum used where no CORINE polygon lies (the land is still there)."""

SEASON_NIR_FACTOR: dict[str, dict[int, float]] = {
    "summer": {},
    "autumn": {211: 0.7, 242: 0.85, 311: 0.85, 313: 0.9},
    "winter": {211: 0.45, 222: 0.6, 231: 0.8, 242: 0.6, 243: 0.7, 311: 0.55, 313: 0.75, 324: 0.7, 411: 0.7},
    "spring": {211: 0.75, 242: 0.85, 311: 0.8, 313: 0.9},
}
"""Multiplier of the red-edge and NIR bands (B05..B09) per season and code (1 where absent)."""
_NIR_BANDS = ("B05", "B06", "B07", "B08", "B8A", "B09")

BACKSCATTER_DB: dict[int, tuple[float, float]] = {
    111: (-3.0, -10.0), 112: (-6.0, -13.0), 121: (-4.0, -11.0), 122: (-9.0, -17.0),
    124: (-12.0, -20.0), 131: (-10.0, -19.0), 211: (-11.0, -18.0), 222: (-9.0, -16.0),
    231: (-10.5, -17.0), 242: (-10.0, -16.5), 243: (-9.0, -15.5), 311: (-7.5, -13.0),
    312: (-7.0, -12.5), 313: (-7.2, -12.8), 321: (-11.0, -18.5), 324: (-8.5, -14.5),
    411: (-12.0, -19.0), 511: (-19.0, -25.0), 512: (-21.0, -27.0),
}
"""Mean (VV, VH) backscatter in dB per CLC code."""

SCL_OF_CODE: dict[int, int] = {111: 5, 112: 5, 121: 5, 122: 5, 124: 5, 131: 5, 511: 6, 512: 6}
"""SCL class of a land-cover code without cloud or snow (4 = vegetation where absent)."""

SNOW_SPECTRUM = (0.80, 0.85, 0.85, 0.82, 0.80, 0.78, 0.76, 0.75, 0.74, 0.70, 0.08, 0.06)
CLOUD_SPECTRUM = (0.42, 0.45, 0.45, 0.46, 0.47, 0.47, 0.48, 0.48, 0.48, 0.40, 0.36, 0.28)

# ---------------------------------------------------------------------------------------
# The region's design
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cloud:
    """An elliptic cloud: centre (u, v) and semi-axes (a, b) in metres from the tile corner.

    u counts east, v south. Core (SCL 9 inside 0.6 of the ellipse, 8 beyond), a thin
    cirrus ring (SCL 10) out to 1.3 times the ellipse, and a shadow (SCL 3): the
    ellipse moved by ``shadow_shift`` (north-west: away from the late-morning sun).
    """

    u: float
    v: float
    a: float
    b: float
    shadow_shift: tuple[float, float] = (-350.0, -600.0)


@dataclass(frozen=True)
class _ProductDesign:
    mission: str
    sensing: str
    baseline: str
    orbit: str
    tile: str
    generation: str
    layout: str  # "SAFE" or "GeoTIFF"
    season: str
    clouds: tuple[_Cloud, ...] = ()
    snow_rects: tuple[tuple[float, float, float, float], ...] = ()
    nodata_edge: tuple[float, float] | None = None  # (u0, tan): no data where u > u0 + v tan
    zero_pixels: tuple[tuple[str, int, int], ...] = ()  # (band, row, col) at the band's resolution

    @property
    def name(self) -> str:
        base = f"{self.mission}_MSIL2A_{self.sensing}_{self.baseline}_{self.orbit}_T{self.tile}_{self.generation}"
        return base + ".SAFE" if self.layout == "SAFE" else base

    @property
    def boa_add_offset(self) -> int:
        return -1000 if int(self.baseline[1:]) >= 400 else 0


@dataclass(frozen=True)
class _S1Design:
    mission: str
    start: str
    tile: str
    ascending: bool
    c_min: float
    c_max: float
    """Valid where c_min <= c <= c_max, c = u - v tan (ascending) or u + v tan (descending)."""

    @property
    def name(self) -> str:
        return f"{self.mission}_IW_GRDH_1SDV_{self.start}"


@dataclass(frozen=True)
class _Feature:
    """A designed land-cover feature: a rectangle in metres from the tile corner (u0, v0, u1, v1).

    ``code`` None is a gap in the CORINE coverage (reference value 999).
    """

    tile: str
    rect: tuple[float, float, float, float]
    code: int | None


_PRODUCTS: tuple[_ProductDesign, ...] = (
    _ProductDesign(
        "S2A", "20170613T104021", "N0205", "R008", "31UGR", "20170613T104550", "SAFE", "summer",
        clouds=(_Cloud(9000.0, 7800.0, 1500.0, 1000.0),),
    ),
    _ProductDesign(
        "S2B", "20171222T104439", "N0500", "R008", "31UGR", "20230516T083212", "SAFE", "winter",
        snow_rects=((0.0, 8400.0, 3600.0, 12600.0), (3600.0, 9600.0, 4200.0, 10800.0)),
        nodata_edge=(10800.0, math.tan(math.radians(10.0))),
    ),
    _ProductDesign(
        "S2A", "20180415T103021", "N0400", "R108", "32ULV", "20220310T101214", "SAFE", "spring",
        clouds=(_Cloud(9700.0, 2300.0, 700.0, 500.0),),
        zero_pixels=(("B8A", 2 * 60 + 17, 1 * 60 + 33),),
    ),
    _ProductDesign(
        "S2B", "20170927T103019", "N0205", "R108", "32ULV", "20170927T134403", "GeoTIFF", "autumn",
    ),
)

_S1_SCENES: tuple[_S1Design, ...] = (
    # T31UGR, for 2017-06-13 10:40: west part +0.28 d, east part -2.2 d, everything +3.3 d
    _S1Design("S1B", "20170613T172309", "31UGR", True, -50_000.0, 4_000.0),
    _S1Design("S1A", "20170611T054215", "31UGR", False, 7_500.0, 60_000.0),
    _S1Design("S1A", "20170616T173105", "31UGR", True, -3_200.0, 13_200.0),
    # T31UGR, for 2017-12-22 10:44: west +0.80 d, everything -3.72 d
    _S1Design("S1B", "20171223T054912", "31UGR", False, -40_000.0, 7_000.0),
    _S1Design("S1A", "20171218T172403", "31UGR", True, -3_200.0, 13_200.0),
    # T32ULV, for 2018-04-15 10:30: west +0.29 d, all but the south-east corner +3.80 d
    _S1Design("S1A", "20180415T173212", "32ULV", True, -40_000.0, 5_000.0),
    _S1Design("S1B", "20180419T054208", "32ULV", False, -40_000.0, 14_000.0),
    # T32ULV, for 2017-09-27 10:30: everything -0.71 d, everything +4.8 d (never closest)
    _S1Design("S1B", "20170926T173110", "32ULV", True, -3_200.0, 13_200.0),
    _S1Design("S1A", "20171002T054321", "32ULV", False, -3_200.0, 16_000.0),
)

_FEATURES: tuple[_Feature, ...] = (
    _Feature("31UGR", (6000.0, 1200.0, 8400.0, 3600.0), None),  # patches x 5..6, y 1..2: 100 % 999
    _Feature("31UGR", (2400.0, 4800.0, 2700.0, 7200.0), 122),  # x 2, y 4..5: exactly 25 % (dropped)
    _Feature("31UGR", (4800.0, 4800.0, 5090.0, 7200.0), 122),  # x 4, y 4..5: 24.17 % (kept)
    _Feature("32ULV", (3600.0, 7200.0, 7800.0, 9600.0), 124),  # x 3..5, y 6..7: 100 %; x 6: 50 %
    _Feature("32ULV", (1200.0, 9600.0, 1440.0, 10800.0), 131),  # x 1, y 8: 20 % (kept)
)

_MOSAIC_CODES_FOREST = ((311, 0.4), (312, 0.3), (313, 0.3))
_MOSAIC_CODES_MIXED = ((243, 0.3), (324, 0.25), (231, 0.25), (313, 0.1), (222, 0.1))
_MOSAIC_CODES_FARM = ((211, 0.45), (231, 0.3), (242, 0.2), (321, 0.05))

# ---------------------------------------------------------------------------------------
# Public results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedPatch:
    """What a correct pipeline must find for one complete patch of a demo product.

    Attributes:
        patch_id: reBEN patch id (``..._T31UGR_03_07``).
        x, y: grid position (x eastwards, y southwards, from 0).
        has_nodata: some pixel of some S2 band is 0 (the patch must be dropped).
        unlabeled_fraction: exact share of the 120 x 120 reference map that is UNLABELED.
        labels: the 19-class labels (alphabetical), or None where a polygon grazes the
            patch so thinly that a pixel centre may or may not fall in it.
        s1_name: S1 partner name (``S1B_IW_GRDH_1SDV_20170613T172309_31UGR_3_7``) of the
            closest-in-time scene valid over the whole patch; None when no scene is.
        s1_certain: False where a swath edge passes within 70 m of the patch border, so
            the partner depends on resampling details (then ``s1_name`` is a best guess).
        s1_gap_days: |S1 - S2| acquisition gap of the partner in days (None without one).
        snow_fraction, cloud_or_shadow_fraction: exact SCL shares (classes 11; 3, 8, 9, 10).
        country: the nearest of BigEarthNet's countries (Natural Earth 1:110m, EPSG:3035).
    """

    patch_id: str
    x: int
    y: int
    has_nodata: bool
    unlabeled_fraction: float
    labels: tuple[str, ...] | None
    s1_name: str | None
    s1_certain: bool
    s1_gap_days: float | None
    snow_fraction: float
    cloud_or_shadow_fraction: float
    country: str

    @property
    def kept(self) -> bool | None:
        """Whether the patch makes it into the archive (None when that is not certain)."""
        if self.has_nodata or self.unlabeled_fraction >= 0.25:
            return False
        if not self.s1_certain:
            return None
        return self.s1_name is not None


@dataclass(frozen=True)
class DemoProduct:
    """One generated Sentinel-2 product.

    Attributes:
        name: folder name (``S2A_MSIL2A_..._T31UGR_20170613T104550.SAFE``; GeoTIFF folders
            carry no ``.SAFE``).
        path: the product folder.
        layout: ``"SAFE"`` (JPEG2000) or ``"GeoTIFF"``.
        tile: MGRS tile without ``T``; epsg: its UTM zone; ulx, uly: the tile's corner (m).
        size_m: side of the rasters in metres (1200 * patches_per_side + 600).
        patches_per_side: complete patches per row and column.
        boa_add_offset: -1000 for baselines N0400 and later, else 0.
        sensing_time: sensing start (UTC, naive).
        patches: expected facts of every complete patch, keyed by ``(x, y)``.
    """

    name: str
    path: Path
    layout: str
    tile: str
    epsg: int
    ulx: float
    uly: float
    size_m: int
    patches_per_side: int
    baseline: str
    boa_add_offset: int
    sensing_time: datetime
    patches: dict[tuple[int, int], ExpectedPatch]

    @property
    def patch_prefix(self) -> str:
        return parse_s2_product_name(self.name).patch_prefix


@dataclass(frozen=True)
class DemoS1Scene:
    """One generated Sentinel-1 scene: a folder with ``<name>_VV.tif`` and ``<name>_VH.tif``.

    Attributes:
        tile: the S2 tile whose area it covers; ascending: pass direction.
        crs: ``"EPSG:4326"``; nodata: NaN.
    """

    name: str
    path: Path
    acquisition_time: datetime
    tile: str
    ascending: bool
    crs: str = "EPSG:4326"

    @property
    def vv_path(self) -> Path:
        return self.path / f"{self.name}_VV.tif"

    @property
    def vh_path(self) -> Path:
        return self.path / f"{self.name}_VH.tif"


@dataclass(frozen=True)
class DemoFeature:
    """A designed land-cover rectangle, aligned on the 10 m pixel grid of its tile.

    Attributes:
        tile: MGRS tile; epsg: its UTM zone.
        bounds: ``(left, bottom, right, top)`` in metres in that CRS.
        code: the reference-map value every pixel inside takes (999: a CORINE gap).
    """

    tile: str
    epsg: int
    bounds: tuple[float, float, float, float]
    code: int


@dataclass(frozen=True)
class DemoRegion:
    """The generated demo region: paths and the facts a test can check.

    Attributes:
        root: the output folder.
        s2_dir, s1_dir: folders holding the S2 products and the S1 scenes.
        products: the S2 products (``.SAFE`` and GeoTIFF layout).
        s1_scenes: the S1 scenes.
        corine_path: CORINE GeoPackage (EPSG:3035, layer ``clc``, column ``Code_18``).
        countries_path: Natural Earth admin-0 subset (BigEarthNet's 10 countries).
        snow_ids_path, cloud_ids_path: patch-id lists of patches whose SCL share of
            snow / cloud-or-shadow exceeds 1 % (the pipeline's default threshold).
        expected_path: ``expected.json``, the facts below as JSON.
        seed, patches_per_side: generation parameters.
        features: the designed UNLABELED rectangles (exact reference-map pixels).
    """

    root: Path
    s2_dir: Path
    s1_dir: Path
    products: list[DemoProduct]
    s1_scenes: list[DemoS1Scene]
    corine_path: Path
    countries_path: Path
    snow_ids_path: Path
    cloud_ids_path: Path
    expected_path: Path
    seed: int
    patches_per_side: int
    features: list[DemoFeature]

    @property
    def s2_product_dirs(self) -> list[Path]:
        return [p.path for p in self.products]

    @property
    def s1_scene_dirs(self) -> list[Path]:
        return [s.path for s in self.s1_scenes]

    @property
    def patches(self) -> dict[str, ExpectedPatch]:
        """Every complete patch of every product, keyed by patch id."""
        return {p.patch_id: p for product in self.products for p in product.patches.values()}

    @property
    def snow_patch_ids(self) -> list[str]:
        return sorted(k for k, p in self.patches.items() if p.snow_fraction > 0.01)

    @property
    def cloud_patch_ids(self) -> list[str]:
        return sorted(k for k, p in self.patches.items() if p.cloud_or_shadow_fraction > 0.01)

    @property
    def nodata_patch_ids(self) -> list[str]:
        return sorted(k for k, p in self.patches.items() if p.has_nodata)

    @property
    def countries(self) -> list[str]:
        return sorted({p.country for p in self.patches.values()})

    def describe(self) -> str:
        """A few lines saying what was generated and where (for ``reben demo``)."""
        kept = [p for p in self.patches.values() if p.kept]
        lines = [
            f"demo region in {self.root} (seed {self.seed}, {self.patches_per_side}x{self.patches_per_side} patches per product)",
            f"  Sentinel-2: {len(self.products)} products in {self.s2_dir}",
        ]
        for product in self.products:
            lines.append(f"    {product.name} ({product.layout}, offset {product.boa_add_offset})")
        lines += [
            f"  Sentinel-1: {len(self.s1_scenes)} scenes (EPSG:4326) in {self.s1_dir}",
            f"  CORINE:     {self.corine_path}",
            f"  countries:  {self.countries_path} ({', '.join(self.countries)})",
            f"  expected:   {self.expected_path} ({len(self.patches)} complete patches, "
            f"{len(kept)} expected in the archive)",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """A product area: tile grid, side in metres, and coordinate helpers."""

    grid: TileGrid
    size_m: int

    @property
    def crs(self) -> str:
        return self.grid.crs

    def rect_to_utm(self, rect: tuple[float, float, float, float]):
        from shapely.geometry import box

        u0, v0, u1, v1 = rect
        return box(self.grid.ulx + u0, self.grid.uly - v1, self.grid.ulx + u1, self.grid.uly - v0)

    def patch_box(self, x: int, y: int):
        return self.rect_to_utm((1200.0 * x, 1200.0 * y, 1200.0 * (x + 1), 1200.0 * (y + 1)))

    def transform(self, res: int, row0: int = 0):
        from rasterio.transform import from_origin

        return from_origin(self.grid.ulx, self.grid.uly - row0 * res, res, res)


def _frame(tile: str, patches_per_side: int) -> _Frame:
    return _Frame(tile_grid(tile), PATCH_SIZE_M * patches_per_side + EXTRA_M)


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator per component, stable across runs and platforms."""
    digest = hashlib.sha256(("|".join(str(k) for k in (seed, *keys))).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def _choose(rng: np.random.Generator, options: tuple[tuple[int, float], ...]) -> int:
    codes = [c for c, _ in options]
    weights = np.array([w for _, w in options])
    return int(codes[rng.choice(len(codes), p=weights / weights.sum())])


def _clc_mosaic(bounds_3035: tuple[float, float, float, float], rng: np.random.Generator, cell_km2: float):
    """Polygons (EPSG:3035) tiling ``bounds`` with spatially correlated CLC codes, dissolved by code.

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
    field_ = 0.5 + 0.25 * np.sin(2 * np.pi * cx / wavelengths[0] + phases[0]) * np.cos(
        2 * np.pi * cy / wavelengths[1] + phases[1]
    ) + 0.22 * np.sin(2 * np.pi * (cx + cy) / wavelengths[2] + phases[2])
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


def _build_corine(frames: dict[str, _Frame], seed: int, cell_km2: float = 0.9):
    """The CORINE polygons of every tile area: ``{tile: [(polygon EPSG:3035, code), ...]}``.

    Designed features (:data:`_FEATURES`) are cut out of the mosaic and added with
    their own code; a feature with code None stays a hole.
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
        mosaic = _clc_mosaic(bounds, _rng(seed, "clc", tile), cell_km2)
        to_3035 = _transformer(frame.crs, "EPSG:3035")
        designed = []
        for feature in _FEATURES:
            if feature.tile != tile:
                continue
            utm = shapely.segmentize(frame.rect_to_utm(feature.rect), 20.0)
            polygon = shapely.transform(utm, lambda xy: np.column_stack(to_3035.transform(xy[:, 0], xy[:, 1])))
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


@functools.cache
def _transformer(src: str, dst: str):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _to_crs(polygons: list, src: str, dst: str) -> list:
    """Transform shapely polygons vertex by vertex (after densifying to 50 m)."""
    import shapely

    transformer = _transformer(src, dst)

    def fn(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return [shapely.transform(shapely.segmentize(p, 50.0), fn) for p in polygons]


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
            out_shape=(nrows, ncols), transform=self.frame.transform(res, row0), fill=0, dtype="int32",
        )


# ---------------------------------------------------------------------------------------
# Rendering S2 bands
# ---------------------------------------------------------------------------------------


def _pixel_centres(res: int, row0: int, nrows: int, ncols: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) metres east / south of the tile corner of each pixel centre, shapes (1, ncols) and (nrows, 1)."""
    u = (np.arange(ncols, dtype=np.float64) + 0.5)[None, :] * res
    v = (np.arange(row0, row0 + nrows, dtype=np.float64) + 0.5)[:, None] * res
    return u, v


def _overlay_masks(design: _ProductDesign, res: int, row0: int, nrows: int, ncols: int) -> dict[str, np.ndarray]:
    """Boolean masks (nrows, ncols) of no-data, cloud core (high / medium), cirrus, shadow and snow."""
    u, v = _pixel_centres(res, row0, nrows, ncols)
    shape = (nrows, ncols)
    masks = {k: np.zeros(shape, dtype=bool) for k in ("nodata", "high", "medium", "cirrus", "shadow", "snow")}
    if design.nodata_edge is not None:
        u0, tan = design.nodata_edge
        # judged at the centre of the 60 m cell holding the pixel, so all bands agree
        u60 = (np.floor(u / 60.0) + 0.5) * 60.0
        v60 = (np.floor(v / 60.0) + 0.5) * 60.0
        masks["nodata"] = np.broadcast_to(u60 > u0 + v60 * tan, shape).copy()
    for cloud in design.clouds:
        r2 = ((u - cloud.u) / cloud.a) ** 2 + ((v - cloud.v) / cloud.b) ** 2
        du, dv = cloud.shadow_shift
        s2 = ((u - cloud.u - du) / cloud.a) ** 2 + ((v - cloud.v - dv) / cloud.b) ** 2
        masks["high"] |= r2 <= 0.36
        masks["medium"] |= (r2 > 0.36) & (r2 <= 1.0)
        masks["cirrus"] |= (r2 > 1.0) & (r2 <= 1.69)
        masks["shadow"] |= (s2 <= 1.0) & (r2 > 1.69)
    for u0, v0, u1, v1 in design.snow_rects:
        masks["snow"] |= (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
    cloudy = masks["high"] | masks["medium"] | masks["cirrus"]
    masks["shadow"] &= ~cloudy
    masks["snow"] &= ~(cloudy | masks["shadow"])
    return masks


def _render_native(
    design: _ProductDesign, cover: _LandCover, res: int, row0: int, nrows: int, ncols: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The bands native at ``res`` (and SCL at 20 m) for a window of rows: uint16 DN / uint8 SCL."""
    index = cover.index(res, row0, nrows, ncols)
    codes_ext = np.concatenate([[GAP_SPECTRUM_CODE], cover.codes])
    gains_ext = np.concatenate([[1.0], cover.gains])
    code_map = codes_ext[index]
    gain_map = gains_ext[index]
    masks = _overlay_masks(design, res, row0, nrows, ncols)
    spectra_codes = sorted(CLASS_SPECTRA)
    lookup = np.zeros((1000, len(S2_ORDER)), dtype=np.float32)
    for code in spectra_codes:
        lookup[code] = CLASS_SPECTRA[code]
    nir = np.ones(1000, dtype=np.float32)
    for code, factor in SEASON_NIR_FACTOR[design.season].items():
        nir[code] = factor
    offset = -design.boa_add_offset
    out: dict[str, np.ndarray] = {}
    for band in [b for b in S2_ORDER if NATIVE_RESOLUTION[b] == res]:
        j = S2_ORDER.index(band)
        refl = lookup[code_map, j] * gain_map.astype(np.float32)
        if band in _NIR_BANDS:
            refl = refl * nir[code_map]
        noise = rng.standard_normal(refl.shape, dtype=np.float32)
        refl = refl * (1.0 + np.float32(0.04) * noise) + np.float32(0.003) * noise
        if masks["snow"].any():
            refl = np.where(masks["snow"], np.float32(SNOW_SPECTRUM[j]) * (1.0 + np.float32(0.02) * noise), refl)
        if masks["shadow"].any():
            refl = np.where(masks["shadow"], refl * np.float32(0.35), refl)
        if masks["cirrus"].any():
            refl = np.where(masks["cirrus"], refl + np.float32(0.06), refl)
        cloud = masks["high"] | masks["medium"]
        if cloud.any():
            refl = np.where(cloud, np.float32(CLOUD_SPECTRUM[j]) * (1.0 + np.float32(0.03) * noise), refl)
        dn = np.clip(np.rint(refl * 10000.0) + offset, 1, 65535).astype(np.uint16)
        dn[masks["nodata"]] = 0
        out[band] = dn
    if res == 20:
        scl_of = np.full(1000, 4, dtype=np.uint8)
        for code, value in SCL_OF_CODE.items():
            scl_of[code] = value
        scl = scl_of[code_map]
        scl[masks["snow"]] = 11
        scl[masks["shadow"]] = 3
        scl[masks["cirrus"]] = 10
        scl[masks["medium"]] = 8
        scl[masks["high"]] = 9
        scl[masks["nodata"]] = 0
        out["SCL"] = scl
    for band, row, col in design.zero_pixels:
        if band in out and row0 <= row < row0 + nrows and col < ncols:
            out[band][row - row0, col] = 0
    return out


def _aggregate(array: np.ndarray, factor: int) -> np.ndarray:
    """Block mean (DN; 0 where any input is 0) or, for uint8 SCL, the top-left value."""
    rows, cols = array.shape[0] // factor, array.shape[1] // factor
    blocks = array[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    if array.dtype == np.uint8:
        return blocks[:, 0, :, 0].copy()
    mean = np.rint(blocks.astype(np.float64).mean(axis=(1, 3))).astype(np.uint16)
    mean[(blocks == 0).any(axis=(1, 3))] = 0
    return mean


def _render_block(
    design: _ProductDesign, cover: _LandCover, frame: _Frame, v0_m: int, v1_m: int, seed: int, block: int,
) -> dict[tuple[str, int], np.ndarray]:
    """Every raster of the product for the rows between v0_m and v1_m metres south of the corner.

    Returns:
        ``{(band, resolution): array}``: native bands plus the resampled copies a SAFE
        product holds (B02 at 20 m, B01 at 20 m, SCL at 60 m, ...).
    """
    ncols_m = frame.size_m
    native: dict[str, np.ndarray] = {}
    for res in (10, 20, 60):
        rng = _rng(seed, "s2", design.name, res, block)
        native.update(_render_native(design, cover, res, v0_m // res, (v1_m - v0_m) // res, ncols_m // res, rng))
    out = {(b, NATIVE_RESOLUTION[b]): a for b, a in native.items()}
    if design.layout == "SAFE":
        for res in (20, 60):
            for band in SAFE_FOLDER_BANDS[res]:
                if (band, res) in out:
                    continue
                src_res = NATIVE_RESOLUTION[band]
                if src_res < res:
                    out[(band, res)] = _aggregate(native[band], res // src_res)
                else:  # B01 at 20 m: each 60 m pixel repeated 3 x 3
                    out[(band, res)] = np.repeat(np.repeat(native[band], 3, axis=0), 3, axis=1)
    return out


# ---------------------------------------------------------------------------------------
# Writing rasters
# ---------------------------------------------------------------------------------------


class _RasterSink:
    """A single-band raster written by row windows.

    JPEG2000 is encoded at :meth:`close` from an uncompressed temporary GeoTIFF with
    GDAL's CreateCopy (the JP2 driver cannot be written by windows), so memory stays
    at one block whatever the raster size.
    """

    def __init__(self, path: Path, driver: str, width: int, height: int, dtype: str, crs: str, transform,
                 nodata: float | None = None):
        import rasterio

        self.path = path
        self.driver = driver
        path.parent.mkdir(parents=True, exist_ok=True)
        if driver == "JP2OpenJPEG":
            self.tmp = path.with_name(path.name + ".tmp.tif")
            self.dataset = rasterio.open(
                self.tmp, "w", driver="GTiff", width=width, height=height, count=1, dtype=dtype, crs=crs,
                transform=transform,
            )
        else:
            self.tmp = None
            profile = dict(
                driver="GTiff", width=width, height=height, count=1, dtype=dtype, crs=crs, transform=transform,
                tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                predictor=3 if dtype == "float32" else 2, nodata=nodata,
            )
            self.dataset = rasterio.open(path, "w", **profile)

    def write(self, array: np.ndarray, row0: int) -> None:
        from rasterio.windows import Window

        self.dataset.write(array, 1, window=Window(0, row0, array.shape[1], array.shape[0]))

    def abort(self) -> None:
        """Close without encoding and remove the temporary file (after an error)."""
        self.dataset.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        import rasterio.shutil

        self.dataset.close()
        if self.tmp is not None:
            rasterio.shutil.copy(self.tmp, self.path, driver="JP2OpenJPEG", **JP2_CREATION_OPTIONS)
            self.tmp.unlink()


def _absolute_orbit(mission: str, sensing: datetime) -> int:
    """A plausible absolute orbit number (about 14.3 orbits a day since launch)."""
    launch = datetime(2015, 6, 23) if mission == "S2A" else datetime(2017, 3, 7)
    return int((sensing - launch).total_seconds() / 86400.0 * 143 / 10)


def _safe_paths(design: _ProductDesign, root: Path) -> tuple[str, dict[tuple[str, int], Path]]:
    """Granule folder name and the path of every raster of a product."""
    sensing = datetime.strptime(design.sensing, "%Y%m%dT%H%M%S")
    if design.layout == "SAFE":
        granule = f"L2A_T{design.tile}_A{_absolute_orbit(design.mission, sensing):06d}_{design.sensing}"
        img = root / "GRANULE" / granule / "IMG_DATA"
        paths = {
            (band, res): img / f"R{res}m" / f"T{design.tile}_{design.sensing}_{band}_{res}m.jp2"
            for res, bands in SAFE_FOLDER_BANDS.items() for band in bands
        }
        return granule, paths
    paths = {
        (band, NATIVE_RESOLUTION[band]): root / f"T{design.tile}_{design.sensing}_{band}.tif"
        for band in NATIVE_RESOLUTION
    }
    return "", paths


def _write_product(
    design: _ProductDesign, cover: _LandCover, frame: _Frame, out_root: Path, seed: int,
    block_rows: int | None = None, progress: bool = False,
) -> tuple[Path, dict[tuple[str, int], np.ndarray] | None]:
    """Write one S2 product by blocks of patch rows.

    Args:
        block_rows: patch rows per block (None: the whole product in one block, and the
            arrays are returned for the expected facts).

    Returns:
        ``(product folder, arrays or None)``.
    """
    from tqdm import tqdm

    root = out_root / design.name
    granule, paths = _safe_paths(design, root)
    driver = "JP2OpenJPEG" if design.layout == "SAFE" else "GTiff"
    sinks = {}
    for (band, res), path in paths.items():
        n = frame.size_m // res
        dtype = "uint8" if band == "SCL" else "uint16"
        sinks[(band, res)] = _RasterSink(path, driver, n, n, dtype, frame.crs, frame.transform(res), nodata=0)
    step = frame.size_m if block_rows is None else block_rows * PATCH_SIZE_M
    starts = list(range(0, frame.size_m, step))
    arrays = None
    try:
        for block, v0 in enumerate(tqdm(starts, desc=design.name[:60], disable=not progress, unit="block")):
            v1 = min(v0 + step, frame.size_m)
            rendered = _render_block(design, cover, frame, v0, v1, seed, block)
            for key, array in rendered.items():
                sinks[key].write(array, v0 // key[1])
            if block_rows is None:
                arrays = rendered
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    for sink in tqdm(sinks.values(), desc="encoding", disable=not progress, unit="file", leave=False):
        sink.close()
    if design.layout == "SAFE":
        _write_safe_metadata(design, frame, root, granule, paths)
    return root, arrays


def _write_safe_metadata(design: _ProductDesign, frame: _Frame, root: Path, granule: str, paths) -> None:
    """``MTD_MSIL2A.xml``, the granule's ``MTD_TL.xml`` and ``manifest.safe``."""
    sensing = datetime.strptime(design.sensing, "%Y%m%dT%H%M%S")
    generation = datetime.strptime(design.generation, "%Y%m%dT%H%M%S")
    baseline = f"{design.baseline[1:3]}.{design.baseline[3:5]}"
    orbit = int(design.orbit[1:])
    absolute = _absolute_orbit(design.mission, sensing)
    iso = sensing.strftime("%Y-%m-%dT%H:%M:%S.024Z")
    spacecraft = "Sentinel-2A" if design.mission == "S2A" else "Sentinel-2B"
    image_files = "\n".join(
        f"              <IMAGE_FILE>{p.relative_to(root).with_suffix('').as_posix()}</IMAGE_FILE>"
        for p in sorted(paths.values())
    )
    if design.boa_add_offset:
        offsets = "\n".join(
            f'        <BOA_ADD_OFFSET band_id="{i}">{design.boa_add_offset}</BOA_ADD_OFFSET>' for i in range(13)
        )
        offsets = f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{offsets}\n      </BOA_ADD_OFFSET_VALUES_LIST>\n"
    else:
        offsets = ""
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}"/>'
        for b, i in ESA_BAND_ID.items()
    )
    scl_names = [
        (0, "NO_DATA"), (1, "SATURATED_DEFECTIVE"), (2, "DARK_FEATURE_SHADOW"), (3, "CLOUD_SHADOW"),
        (4, "VEGETATION"), (5, "NOT_VEGETATED"), (6, "WATER"), (7, "UNCLASSIFIED"),
        (8, "CLOUD_MEDIUM_PROBA"), (9, "CLOUD_HIGH_PROBA"), (10, "THIN_CIRRUS"), (11, "SNOW_ICE"),
    ]
    scl = "\n".join(
        f"        <Scene_Classification_ID>\n          <SCENE_CLASSIFICATION_TEXT>SC_{n}</SCENE_CLASSIFICATION_TEXT>\n"
        f"          <SCENE_CLASSIFICATION_INDEX>{i}</SCENE_CLASSIFICATION_INDEX>\n        </Scene_Classification_ID>"
        for i, n in scl_names
    )
    datastrip = f"S2{design.mission[-1]}_OPER_MSI_L2A_DS_{design.generation}_S{design.sensing}_N{baseline}"
    granule_id = f"S2{design.mission[-1]}_OPER_MSI_L2A_TL_{design.generation}_A{absolute:06d}_T{design.tile}_N{baseline}"
    mtd = f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{iso}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{iso}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{design.name}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{generation.strftime("%Y-%m-%dT%H:%M:%S.000000Z")}</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{design.mission}_{design.sensing}_{absolute:06d}_N{baseline}">
        <SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{iso}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>{orbit}</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="{datastrip}" granuleIdentifier="{granule_id}" imageFormat="JPEG2000">
{image_files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
{offsets}      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
      <Scene_Classification_List>
{scl}
      </Scene_Classification_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""
    (root / "MTD_MSIL2A.xml").write_text(mtd, encoding="utf-8")
    sizes = "\n".join(
        f'      <Size resolution="{res}">\n        <NROWS>{frame.size_m // res}</NROWS>\n'
        f"        <NCOLS>{frame.size_m // res}</NCOLS>\n      </Size>"
        for res in (10, 20, 60)
    )
    geopos = "\n".join(
        f'      <Geoposition resolution="{res}">\n        <ULX>{frame.grid.ulx:.0f}</ULX>\n'
        f"        <ULY>{frame.grid.uly:.0f}</ULY>\n        <XDIM>{res}</XDIM>\n        <YDIM>-{res}</YDIM>\n"
        "      </Geoposition>"
        for res in (10, 20, 60)
    )
    zone = frame.grid.epsg % 100
    tl = f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>{granule_id}</TILE_ID>
    <DATASTRIP_ID>{datastrip}</DATASTRIP_ID>
    <SENSING_TIME>{iso}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding>
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {zone}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{frame.grid.epsg}</HORIZONTAL_CS_CODE>
{sizes}
{geopos}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:Level-2A_Tile_ID>
"""
    (root / "GRANULE" / granule / "MTD_TL.xml").write_text(tl, encoding="utf-8")
    for empty in ("AUX_DATA", "DATASTRIP", "HTML", "rep_info", f"GRANULE/{granule}/QI_DATA", f"GRANULE/{granule}/AUX_DATA"):
        (root / empty).mkdir(parents=True, exist_ok=True)
    _write_manifest(root, design)


def _write_manifest(root: Path, design: _ProductDesign) -> None:
    """A ``manifest.safe`` (XFDU) listing every file of the product with its size and MD5."""
    entries = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.safe")
    for i, path in enumerate(files):
        digest = hashlib.md5(path.read_bytes()).hexdigest().upper()
        rel = path.relative_to(root).as_posix()
        mime = "application/octet-stream" if path.suffix == ".jp2" else "text/xml"
        entries.append(
            f'    <dataObject ID="{path.stem}_{i}">\n      <byteStream mimeType="{mime}" size="{path.stat().st_size}">\n'
            f'        <fileLocation locatorType="URL" href="./{rel}"/>\n'
            f'        <checksum checksumName="MD5">{digest}</checksum>\n      </byteStream>\n    </dataObject>'
        )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product">\n'
        f'  <informationPackageMap>\n    <xfdu:contentUnit unitType="Product_Level-2A" textInfo="{design.name}"/>\n'
        "  </informationPackageMap>\n  <dataObjectSection>\n" + "\n".join(entries) + "\n  </dataObjectSection>\n</xfdu:XFDU>\n"
    )
    (root / "manifest.safe").write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Sentinel-1
# ---------------------------------------------------------------------------------------


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
        frame.crs, "EPSG:4326", g.ulx - S1_MARGIN_M, g.uly - size - S1_MARGIN_M, g.ulx + size + S1_MARGIN_M,
        g.uly + S1_MARGIN_M, densify_pts=51,
    )
    dx, dy = S1_PIXEL_DEG
    west, east = math.floor(west / dx) * dx, math.ceil(east / dx) * dx
    south, north = math.floor(south / dy) * dy, math.ceil(north / dy) * dy
    width, height = int(round((east - west) / dx)), int(round((north - south) / dy))
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
        db = table[code_map, k] + polygon_shift[index] + incidence + rng.standard_normal(code_map.shape, dtype=np.float32)
        out.append(np.where(valid, db, np.float32(np.nan)).astype(np.float32))
    return out[0], out[1]


def _write_s1_scene(scene: _S1Design, frame: _Frame, polygons_4326: list, codes: np.ndarray, out_root: Path,
                    seed: int, rows_per_block: int | None = None) -> Path:
    """Write ``<name>/<name>_VV.tif`` and ``_VH.tif`` (EPSG:4326, float32 dB, NaN no-data)."""
    import shapely
    from rasterio.features import rasterize
    from rasterio.transform import from_origin
    from shapely.geometry import box

    folder = out_root / scene.name
    tree = shapely.STRtree(polygons_4326)
    header = _s1_grid(frame, 0, 1)
    sinks = [
        _RasterSink(folder / f"{scene.name}_{pol}.tif", "GTiff", header.width, header.height, "float32",
                    "EPSG:4326", header.transform, nodata=float("nan"))
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
            index = rasterize(
                ((polygons_4326[i], i + 1) for i in hits), out_shape=(n, header.width),
                transform=block_transform, fill=0, dtype="int32",
            ) if hits else np.zeros((n, header.width), dtype=np.int32)
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


# ---------------------------------------------------------------------------------------
# Expected facts
# ---------------------------------------------------------------------------------------


def _expected_labels(cover: _LandCover, patch) -> tuple[str, ...] | None:
    """Labels of a patch from the geometry alone, or None when a sliver makes them uncertain."""
    legend = clc_legend()
    sure: set[str] = set()
    maybe: set[str] = set()
    for i in sorted(cover.tree.query(patch.buffer(1.0)).tolist()):
        polygon = cover.polygons[i]
        name = legend[int(cover.codes[i])].class19
        if name == UNLABELED:
            continue
        inside = polygon.intersection(patch)
        if not inside.is_empty and not inside.buffer(-LABEL_CERTAIN_INSET_M).is_empty:
            sure.add(name)
        elif polygon.distance(patch) < 1.0:
            maybe.add(name)
    if maybe - sure:
        return None
    return tuple(sorted(sure))


def _unlabeled_fraction(tile: str, x: int, y: int) -> float:
    """Exact UNLABELED share: the designed features are aligned on the 10 m pixel grid."""
    u0, v0 = 1200.0 * x, 1200.0 * y
    area = 0.0
    for feature in _FEATURES:
        if feature.tile != tile:
            continue
        fu0, fv0, fu1, fv1 = feature.rect
        w = max(0.0, min(fu1, u0 + 1200.0) - max(fu0, u0))
        h = max(0.0, min(fv1, v0 + 1200.0) - max(fv0, v0))
        area += w * h
    pixels = int(round(area / 100.0))  # 10 m x 10 m pixels, exactly
    return pixels / 14400


def _expected_s1(design: _ProductDesign, x: int, y: int) -> tuple[str | None, bool, float | None]:
    """(S1 scene name, certain, gap in days) of the closest scene valid over the whole patch."""
    sensing = datetime.strptime(design.sensing, "%Y%m%dT%H%M%S")
    def gap_days(scene: _S1Design) -> float:
        return abs((datetime.strptime(scene.start, "%Y%m%dT%H%M%S") - sensing).total_seconds()) / 86400.0

    candidates = sorted((s for s in _S1_SCENES if s.tile == design.tile and gap_days(s) <= S1_MAX_GAP_DAYS), key=gap_days)
    us = np.array([1200.0 * x, 1200.0 * (x + 1)] * 2)
    vs = np.array([1200.0 * y] * 2 + [1200.0 * (y + 1)] * 2)
    certain = True
    for scene in candidates:
        c = _across_track(scene, us, vs)
        m = S1_CERTAIN_MARGIN_M
        if np.all((c >= scene.c_min + m) & (c <= scene.c_max - m)):
            return scene.name, certain, round(gap_days(scene), 4)
        if not np.any((c < scene.c_min - m) | (c > scene.c_max + m)):
            certain = False  # a swath edge within the margin: this scene may or may not count as valid
    return None, certain, None


def _countries_3035(countries_path: Path):
    import geopandas as gpd

    frame = gpd.read_file(countries_path, engine="pyogrio")
    frame = frame[frame["ADM0_A3"].isin(tuple(BIGEARTHNET_COUNTRIES))].to_crs("EPSG:3035")
    return list(frame["NAME"]), list(frame.geometry)


def _expected_countries(frame: _Frame, n: int, names: list[str], geometries: list) -> dict[tuple[int, int], str]:
    """Nearest country of every patch (distance in EPSG:3035, 0 when they intersect)."""
    keys = [(x, y) for y in range(n) for x in range(n)]
    boxes = _to_crs([frame.patch_box(x, y) for x, y in keys], frame.crs, "EPSG:3035")
    out = {}
    for key, patch in zip(keys, boxes):
        distances = [g.distance(patch) for g in geometries]
        order = np.argsort(distances, kind="stable")
        if distances[order[1]] - distances[order[0]] < 2000.0:
            raise RuntimeError(f"demo design error: country of patch {key} is ambiguous")
        out[key] = names[order[0]]
    return out


# ---------------------------------------------------------------------------------------
# CORINE and countries files
# ---------------------------------------------------------------------------------------


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


def _write_countries(path: Path) -> None:
    """The packaged Natural Earth file reduced to BigEarthNet's 10 countries (same properties)."""
    text = resources.files("reben_tools.resources").joinpath("ne_110m_admin_0_countries.geojson").read_text("utf-8")
    data = json.loads(text)
    data["features"] = [f for f in data["features"] if f["properties"].get("ADM0_A3") in tuple(BIGEARTHNET_COUNTRIES)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True), encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------

_OUTPUT_ENTRIES = ("S2", "S1", "corine", "countries", "flags", "expected.json")


def _land_cover(frame: _Frame, polygons_3035: list, seed: int, tile: str) -> _LandCover:
    polygons = [p for p, _ in polygons_3035]
    codes = np.array([c for _, c in polygons_3035], dtype=np.int64)
    gains = _rng(seed, "gain", tile).normal(1.0, 0.08, len(codes)).clip(0.75, 1.25)
    return _LandCover(_to_crs(polygons, "EPSG:3035", frame.crs), codes, gains, frame)


def generate_region(
    out_dir: str | Path, *, seed: int = 0, patches_per_side: int = 10, overwrite: bool = False, progress: bool = False,
) -> DemoRegion:
    """Generate the demo region (about 5 to 15 s on 2 cores at the default size).

    Args:
        out_dir: output folder; created. It must be empty unless ``overwrite``.
        seed: drives every random draw; the same seed gives byte-identical files.
        patches_per_side: complete patches per product row and column (>= 10; the
            rasters are 1200 m x this + 600 m wide).
        overwrite: remove the outputs of an earlier generation in ``out_dir`` first
            (only the entries this function writes).
        progress: show tqdm progress bars.

    Returns:
        the :class:`DemoRegion` (paths plus expected facts, also in ``expected.json``).

    Raises:
        ValueError: ``patches_per_side`` below :data:`MIN_PATCHES_PER_SIDE`.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    from tqdm import tqdm

    if patches_per_side < MIN_PATCHES_PER_SIDE:
        raise ValueError(f"patches_per_side must be at least {MIN_PATCHES_PER_SIDE}, got {patches_per_side}")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root}: output folder is not empty (pass overwrite=True to replace a demo region)")
        for entry in _OUTPUT_ENTRIES:
            target = root / entry
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    s2_dir, s1_dir = root / "S2", root / "S1"
    tiles = sorted({d.tile for d in _PRODUCTS})
    frames = {tile: _frame(tile, patches_per_side) for tile in tiles}

    corine = _build_corine(frames, seed)
    corine_path = root / "corine" / "CLC2018_demo_BE_LU.gpkg"
    _write_corine(corine_path, corine)
    countries_path = root / "countries" / "ne_110m_admin_0_countries_bigearthnet.geojson"
    _write_countries(countries_path)
    country_names, country_geometries = _countries_3035(countries_path)
    covers = {tile: _land_cover(frames[tile], corine[tile], seed, tile) for tile in tiles}

    products: list[DemoProduct] = []
    for design in tqdm(_PRODUCTS, desc="Sentinel-2", disable=not progress, unit="product"):
        frame, cover = frames[design.tile], covers[design.tile]
        path, arrays = _write_product(design, cover, frame, s2_dir, seed)
        assert arrays is not None
        products.append(
            _expected_product(design, frame, cover, path, arrays, patches_per_side, country_names, country_geometries)
        )

    scenes: list[DemoS1Scene] = []
    polygons_4326 = {
        tile: _to_crs([p for p, _ in corine[tile]], "EPSG:3035", "EPSG:4326") for tile in tiles
    }
    codes = {tile: np.array([c for _, c in corine[tile]], dtype=np.int64) for tile in tiles}
    for scene in tqdm(_S1_SCENES, desc="Sentinel-1", disable=not progress, unit="scene"):
        folder = _write_s1_scene(scene, frames[scene.tile], polygons_4326[scene.tile], codes[scene.tile], s1_dir, seed)
        scenes.append(
            DemoS1Scene(scene.name, folder, datetime.strptime(scene.start, "%Y%m%dT%H%M%S"), scene.tile, scene.ascending)
        )

    region = DemoRegion(
        root=root, s2_dir=s2_dir, s1_dir=s1_dir, products=products, s1_scenes=scenes, corine_path=corine_path,
        countries_path=countries_path, snow_ids_path=root / "flags" / "snow_patch_ids.txt",
        cloud_ids_path=root / "flags" / "cloud_or_shadow_patch_ids.txt", expected_path=root / "expected.json",
        seed=seed, patches_per_side=patches_per_side,
        features=[
            DemoFeature(f.tile, frames[f.tile].grid.epsg, tuple(frames[f.tile].rect_to_utm(f.rect).bounds),
                        NO_POLYGON_CODE if f.code is None else f.code)
            for f in _FEATURES
        ],
    )
    region.snow_ids_path.parent.mkdir(parents=True, exist_ok=True)
    region.snow_ids_path.write_text("".join(f"{p}\n" for p in region.snow_patch_ids), encoding="utf-8")
    region.cloud_ids_path.write_text("".join(f"{p}\n" for p in region.cloud_patch_ids), encoding="utf-8")
    region.expected_path.write_text(json.dumps(_region_json(region), indent=1, sort_keys=True), encoding="utf-8")
    return region


def _expected_product(
    design: _ProductDesign, frame: _Frame, cover: _LandCover, path: Path, arrays: dict, n: int,
    country_names: list[str], country_geometries: list,
) -> DemoProduct:
    name = parse_s2_product_name(design.name)
    patches = {}
    scl = arrays[("SCL", 20)]
    countries = _expected_countries(frame, n, country_names, country_geometries)
    for y in range(n):
        for x in range(n):
            has_nodata = False
            for band, res in NATIVE_RESOLUTION.items():
                if band == "SCL":
                    continue
                k = PATCH_SIZE_M // res
                if not arrays[(band, res)][y * k:(y + 1) * k, x * k:(x + 1) * k].all():
                    has_nodata = True
                    break
            window = scl[y * 60:(y + 1) * 60, x * 60:(x + 1) * 60]
            snow = float(np.count_nonzero(window == 11)) / window.size
            cloud = float(np.count_nonzero(np.isin(window, (3, 8, 9, 10)))) / window.size
            box = frame.patch_box(x, y)
            s1_scene, s1_certain, gap = _expected_s1(design, x, y)
            patches[(x, y)] = ExpectedPatch(
                patch_id=patch_id(name.patch_prefix, x, y), x=x, y=y, has_nodata=has_nodata,
                unlabeled_fraction=_unlabeled_fraction(design.tile, x, y),
                labels=_expected_labels(cover, box),
                s1_name=None if s1_scene is None else s1_patch_name(s1_scene, design.tile, x, y),
                s1_certain=s1_certain, s1_gap_days=gap, snow_fraction=snow, cloud_or_shadow_fraction=cloud,
                country=countries[(x, y)],
            )
    return DemoProduct(
        name=design.name, path=path, layout=design.layout, tile=design.tile, epsg=frame.grid.epsg,
        ulx=frame.grid.ulx, uly=frame.grid.uly, size_m=frame.size_m, patches_per_side=n, baseline=design.baseline,
        boa_add_offset=design.boa_add_offset, sensing_time=name.sensing_time, patches=patches,
    )


def _region_json(region: DemoRegion) -> dict:
    def rel(p: Path) -> str:
        return p.relative_to(region.root).as_posix()

    return {
        "seed": region.seed,
        "patches_per_side": region.patches_per_side,
        "corine": rel(region.corine_path),
        "countries": rel(region.countries_path),
        "snow_patch_ids": rel(region.snow_ids_path),
        "cloud_or_shadow_patch_ids": rel(region.cloud_ids_path),
        "features": [
            {"tile": f.tile, "epsg": f.epsg, "bounds": list(f.bounds), "code": f.code} for f in region.features
        ],
        "s1_scenes": [
            {"name": s.name, "path": rel(s.path), "acquisition_time": s.acquisition_time.isoformat(), "tile": s.tile,
             "ascending": s.ascending, "crs": s.crs}
            for s in region.s1_scenes
        ],
        "s2_products": [
            {
                "name": p.name, "path": rel(p.path), "layout": p.layout, "tile": p.tile, "epsg": p.epsg,
                "ulx": p.ulx, "uly": p.uly, "size_m": p.size_m, "patches_per_side": p.patches_per_side,
                "baseline": p.baseline, "boa_add_offset": p.boa_add_offset,
                "sensing_time": p.sensing_time.isoformat(),
                "patches": [
                    {
                        "patch_id": e.patch_id, "x": e.x, "y": e.y, "has_nodata": e.has_nodata,
                        "unlabeled_fraction": e.unlabeled_fraction,
                        "labels": None if e.labels is None else list(e.labels),
                        "s1_name": e.s1_name, "s1_certain": e.s1_certain, "s1_gap_days": e.s1_gap_days,
                        "snow_fraction": e.snow_fraction, "cloud_or_shadow_fraction": e.cloud_or_shadow_fraction,
                        "country": e.country, "kept": e.kept,
                    }
                    for e in sorted(p.patches.values(), key=lambda e: e.patch_id)
                ],
            }
            for p in region.products
        ],
    }


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
    out_dir: str | Path, *, tile: str = "33UUP", sensing: str = "20170613T101031", baseline: str = "N0500",
    orbit: str = "R022", mission: str = "S2A", seed: int = 0, with_s1: bool = True, with_corine: bool = True,
    block_patch_rows: int = 2, progress: bool = True,
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
            Path(out_dir), tile=tile, sensing=sensing, baseline=baseline, orbit=orbit, mission=mission, seed=seed,
            with_s1=with_s1, with_corine=with_corine, block_patch_rows=block_patch_rows, progress=progress,
        )


def _write_full_size_product(
    root: Path, *, tile: str, sensing: str, baseline: str, orbit: str, mission: str, seed: int, with_s1: bool,
    with_corine: bool, block_patch_rows: int, progress: bool,
) -> FullSizeProduct:
    root.mkdir(parents=True, exist_ok=True)
    name = parse_s2_product_name(f"{mission}_MSIL2A_{sensing}_{baseline}_{orbit}_T{tile.removeprefix('T')}")
    design = _ProductDesign(
        mission, sensing, baseline, orbit, name.tile, "20240101T000000", "SAFE", "summer",
        clouds=(_Cloud(60_000.0, 40_000.0, 4000.0, 2500.0),),
    )
    frame = _Frame(tile_grid(name.tile), TILE_SIDE_M)
    corine = _build_corine({name.tile: frame}, seed, cell_km2=1.5)
    cover = _land_cover(frame, corine[name.tile], seed, name.tile)
    corine_path = None
    if with_corine:
        corine_path = root / "corine" / f"CLC2018_full_T{name.tile}.gpkg"
        _write_corine(corine_path, corine)
    product_dir, _ = _write_product(design, cover, frame, root / "S2", seed, block_rows=block_patch_rows, progress=progress)
    s1_dir = None
    if with_s1:
        start = datetime.strptime(sensing, "%Y%m%dT%H%M%S")
        start = start.replace(hour=17, minute=23, second=9)
        scene = _S1Design("S1B", start.strftime("%Y%m%dT%H%M%S"), name.tile, True, -40_000.0, 150_000.0)
        polygons_4326 = _to_crs([p for p, _ in corine[name.tile]], "EPSG:3035", "EPSG:4326")
        codes = np.array([c for _, c in corine[name.tile]], dtype=np.int64)
        s1_dir = _write_s1_scene(scene, frame, polygons_4326, codes, root / "S1", seed, rows_per_block=256)
    return FullSizeProduct(product_dir, s1_dir, corine_path)


def tree_digest(root: str | Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root`` (sorted)."""
    digest = hashlib.sha256()
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(path.relative_to(base).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


__all__ = [
    "DemoFeature", "DemoProduct", "DemoRegion", "DemoS1Scene", "ExpectedPatch", "FullSizeProduct", "JP2_CREATION_OPTIONS",
    "generate_region", "tree_digest", "write_full_size_product",
]

