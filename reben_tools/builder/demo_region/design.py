"""The demo region's design: which products, S1 swaths and UNLABELED features it holds.

Owns: the product designs (dates, baselines, layouts, clouds, snow, no-data edges, zero
pixels), the S1 scene designs (swath strips), the designed land-cover features, the
sizes and margins every other module of the generator uses, and the two region designs:
:data:`DEMO_DESIGN` (the demo: 4 products on 2 tiles) and :func:`benchmark_design` (one
product on each of up to 8 tiles in 8 countries, every one of the 19 classes drawn).
Does not own: rendering or writing anything (s2_render, s2_product, s1_scene), the
expected facts (expected).
May import: the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TILE_SIDE_M = 109_800
EXTRA_M = 600
"""Metres beyond the last complete patch (half a patch, as in a full tile)."""
MIN_PATCHES_PER_SIDE = 10
"""The designed features (gaps, snow, clouds, no-data) lie within the first 10 x 10 patches."""

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
        "S2A",
        "20170613T104021",
        "N0205",
        "R008",
        "31UGR",
        "20170613T104550",
        "SAFE",
        "summer",
        clouds=(_Cloud(9000.0, 7800.0, 1500.0, 1000.0),),
    ),
    _ProductDesign(
        "S2B",
        "20171222T104439",
        "N0500",
        "R008",
        "31UGR",
        "20230516T083212",
        "SAFE",
        "winter",
        snow_rects=((0.0, 8400.0, 3600.0, 12600.0), (3600.0, 9600.0, 4200.0, 10800.0)),
        nodata_edge=(10800.0, math.tan(math.radians(10.0))),
    ),
    _ProductDesign(
        "S2A",
        "20180415T103021",
        "N0400",
        "R108",
        "32ULV",
        "20220310T101214",
        "SAFE",
        "spring",
        clouds=(_Cloud(9700.0, 2300.0, 700.0, 500.0),),
        zero_pixels=(("B8A", 2 * 60 + 17, 1 * 60 + 33),),
    ),
    _ProductDesign(
        "S2B",
        "20170927T103019",
        "N0205",
        "R108",
        "32ULV",
        "20170927T134403",
        "GeoTIFF",
        "autumn",
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


@dataclass(frozen=True)
class RegionDesign:
    """Everything a generated region holds: its S2 products, S1 scenes and designed features.

    ``all_classes`` draws every one of the 19 classes into the land-cover mosaic (a share of
    the mosaic's cells gets a class drawn uniformly; :func:`benchmark_design`); the demo keeps
    its 14 classes of a Belgian / Luxembourgish landscape.
    """

    name: str
    products: tuple[_ProductDesign, ...]
    s1_scenes: tuple[_S1Design, ...]
    features: tuple[_Feature, ...]
    all_classes: bool = False

    @property
    def tiles(self) -> list[str]:
        return sorted({d.tile for d in self.products})


DEMO_DESIGN = RegionDesign("demo", _PRODUCTS, _S1_SCENES, _FEATURES)
"""The demo region (``reben demo``): the constants above."""

BENCHMARK_TILES: tuple[tuple[str, str], ...] = (
    ("31UGR", "Belgium"),
    ("32ULV", "Luxembourg"),
    ("33TVP", "Austria"),
    ("35VMK", "Finland"),
    ("29SNE", "Portugal"),
    ("29UNV", "Ireland"),
    ("34UFG", "Lithuania"),
    ("34TDP", "Serbia"),
)
"""Real MGRS tiles whose first 30 x 30 patches lie unambiguously in one BigEarthNet country."""

_BENCHMARK_SEASONS = (
    ("20170613T104021", "summer"),
    ("20170927T103019", "autumn"),
    ("20180415T103021", "spring"),
    ("20170705T100031", "summer"),
    ("20170810T112119", "summer"),
    ("20180521T114351", "spring"),
    ("20170906T095031", "autumn"),
    ("20180610T093041", "summer"),
)


def benchmark_design(tiles: int = 8) -> RegionDesign:
    """A larger region for comparisons that need power: one cloud-free product per tile.

    Products lie on the first ``tiles`` of :data:`BENCHMARK_TILES` (one country each), every
    product has one S1 scene 0.3 days later whose swath covers all of it, and the land-cover
    mosaic draws all 19 classes (:attr:`RegionDesign.all_classes`). No designed features,
    clouds or snow: every patch with labels is kept. Layouts alternate (``.SAFE`` on even
    products, a GeoTIFF folder of baseline N0205 on odd ones).
    """
    if not 1 <= tiles <= len(BENCHMARK_TILES):
        raise ValueError(f"tiles must be in 1..{len(BENCHMARK_TILES)}, got {tiles}")
    products, scenes = [], []
    for i, (tile, _) in enumerate(BENCHMARK_TILES[:tiles]):
        sensing, season = _BENCHMARK_SEASONS[i]
        layout = "SAFE" if i % 2 == 0 else "GeoTIFF"
        products.append(
            _ProductDesign(
                "S2A" if i % 2 == 0 else "S2B",
                sensing,
                "N0205" if layout == "GeoTIFF" else "N0400",
                f"R{8 + 10 * i:03d}",
                tile,
                sensing[:8] + "T120000",
                layout,
                season,
            )
        )
        start = f"{sensing[:9]}{int(sensing[9:11]) + 7:02d}{sensing[11:]}"  # the same day, 7 h later
        scenes.append(_S1Design("S1A", start, tile, i % 2 == 0, -1e6, 1e6))
    return RegionDesign(f"benchmark-{tiles}", tuple(products), tuple(scenes), (), all_classes=True)
