"""MGRS tile -> UTM CRS and the Sentinel-2 tile's upper-left corner.

A Sentinel-2 tile such as ``33UUP`` is the MGRS 100 km square ``UP`` of grid zone
``33U``, extended to 109,800 m eastwards and southwards. Its upper-left corner is
the square's north-west corner snapped outwards onto the 60 m pixel grid of the
tiling:

* ``ulx = floor(square_west / 60) * 60``
* ``uly = ceil((square_south + 100,000) / 60) * 60``

so squares whose edges are multiples of 300 km keep them (``33UUP``:
(300000, 5400000)) and others move by 20 or 40 m (``29SND``: (499980, 4400040),
``35VPK``: (600000, 7000020), ``33XVP``: (399960, 9400020)). These corners are
verified against real georeferenced BigEarthNet patches in ``tests/test_mgrs_grid.py``.

The square's south-west corner comes from the maintained ``mgrs`` library
(GeoTrans), which resolves the 2,000 km cycle of the row letters with the
latitude band. A tile whose square does not touch its latitude band, or whose
letters are not valid for its zone, is rejected as unknown.

Owns: MGRS tile parsing, a tile's UTM CRS and upper-left corner (:func:`tile_grid`),
:data:`TILE_SIDE_M`, :class:`UnknownTileError`.
Does not own: reBEN's split rule (``geo.split_rule``), patch tables (``splits.patches``).
May import: ``format``, mgrs, pyproj and the standard library.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import cache

from pyproj import Transformer

TILE_SIDE_M = 109_800.0
"""Side of a full Sentinel-2 tile in metres."""
SQUARE_SIDE_M = 100_000.0
TILING_PIXEL_M = 60
"""The tiling grid's corners lie on multiples of this (the 60 m band's pixel size)."""
_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_TILE_RE = re.compile(r"^T?(?P<zone>\d{2})(?P<band>[C-HJ-NP-X])(?P<square>[A-HJ-NP-Z][A-HJ-NP-V])$")


class UnknownTileError(ValueError):
    """An MGRS tile name that is malformed or names no square of its grid zone."""


@dataclass(frozen=True)
class TileGrid:
    """Where a Sentinel-2 tile lies.

    Attributes:
        tile: the MGRS tile without its leading ``T`` (``33UUP``).
        epsg: EPSG code of the tile's UTM zone (326zz north, 327zz south).
        ulx, uly: the tile's upper-left corner in metres in that CRS.
    """

    tile: str
    epsg: int
    ulx: float
    uly: float

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def patch_upper_left(self, x: int, y: int, patch_m: float = 1200.0) -> tuple[float, float]:
        """Upper-left corner of patch ``(x, y)``: ``(ulx + 1200 x, uly - 1200 y)`` (reBEN's 1,200 m patch grid)."""
        return self.ulx + patch_m * x, self.uly - patch_m * y


def _band_latitudes(band: str) -> tuple[float, float]:
    index = _BANDS.index(band)
    south = -80.0 + 8.0 * index
    north = 84.0 if band == "X" else south + 8.0
    return south, north


@cache
def _to_geographic(epsg: int) -> Transformer:
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)


@cache
def tile_grid(tile: str) -> TileGrid:
    """The UTM CRS and upper-left corner of a Sentinel-2 / MGRS tile.

    Args:
        tile: ``33UUP`` or ``T33UUP``.

    Raises:
        UnknownTileError: the name is malformed, its letters are invalid for the zone,
            or its 100 km square does not touch its latitude band.
    """
    import mgrs

    match = _TILE_RE.match(tile) if isinstance(tile, str) else None
    if not match:
        raise UnknownTileError(f"unknown MGRS tile {tile!r} (expected e.g. 33UUP: zone, latitude band, 100 km square)")
    name = tile.removeprefix("T")
    zone = int(match["zone"])
    if not 1 <= zone <= 60:
        raise UnknownTileError(f"unknown MGRS tile {tile!r}: UTM zone {zone} is not in 1..60")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            zone_out, hemisphere, easting, northing = mgrs.MGRS().MGRSToUTM(name + "0000000000")
        except Exception as exc:  # mgrs raises its own MGRSError for invalid letters
            raise UnknownTileError(f"unknown MGRS tile {tile!r}: {exc}") from None
    # 1 m precision: GeoTrans returns the south-west corner or the centre of the 1 m cell.
    west, south = float(math.floor(easting)), float(math.floor(northing))
    epsg = (32600 if hemisphere == "N" else 32700) + int(zone_out)
    band_south, band_north = _band_latitudes(match["band"])
    to_geo = _to_geographic(epsg)
    _, lats = to_geo.transform(
        [west, west + SQUARE_SIDE_M, west, west + SQUARE_SIDE_M],
        [south, south, south + SQUARE_SIDE_M, south + SQUARE_SIDE_M],
    )
    if max(lats) < band_south or min(lats) > band_north:
        raise UnknownTileError(
            f"unknown MGRS tile {tile!r}: square {match['square']} lies at latitude "
            f"{min(lats):.1f}..{max(lats):.1f}, outside band {match['band']} ({band_south:g}..{band_north:g})"
        )
    ulx = math.floor(west / TILING_PIXEL_M) * TILING_PIXEL_M
    uly = math.ceil((south + SQUARE_SIDE_M) / TILING_PIXEL_M) * TILING_PIXEL_M
    return TileGrid(tile=name, epsg=epsg, ulx=float(ulx), uly=float(uly))


def utm_epsg(tile: str) -> int:
    """EPSG code of the UTM zone of ``tile`` (``33UUP`` -> 32633)."""
    return tile_grid(tile).epsg
