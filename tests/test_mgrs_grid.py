"""MGRS tile -> UTM CRS and tile corner, checked against real georeferenced BigEarthNet patches."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio

from reben_tools.format.naming import parse_s1_patch_name
from reben_tools.geo.mgrs_grid import TILE_SIDE_M, UnknownTileError, tile_grid, utm_epsg

EXAMPLES = Path(__file__).parent / "data" / "ben_v1_examples" / "BigEarthNet-S1-Example"


def _real_patches():
    """(tile, x, y, EPSG, patch ulx, patch uly) from the real BigEarthNet S1 GeoTIFFs: the tile and the
    patch position are in the name, the corner and CRS in the file's georeferencing."""
    out = []
    for tif in sorted(EXAMPLES.glob("*/*_VV.tif")):
        _, tile, x, y = parse_s1_patch_name(tif.parent.name)
        with rasterio.open(tif) as dataset:
            out.append((tile, x, y, dataset.crs.to_epsg(), dataset.transform.c, dataset.transform.f))
    return out


def test_examples_cover_four_tiles_in_three_zones():
    tiles = {t for t, *_ in _real_patches()}
    assert tiles == {"33UUP", "29UPU", "35VPK", "29SND"}


@pytest.mark.parametrize("tile, x, y, epsg, ulx, uly", _real_patches())
def test_corner_matches_real_georeferencing(tile, x, y, epsg, ulx, uly):
    grid = tile_grid(tile)
    assert grid.epsg == epsg
    # SPEC 2: patch (x, y) has its upper-left corner at (tile_ulx + 1200 x, tile_uly - 1200 y)
    assert grid.patch_upper_left(x, y) == (ulx, uly)


@pytest.mark.parametrize(
    "tile, epsg, corner",
    [
        # SPEC 2's real example
        ("33UUP", 32633, (300000.0, 5400000.0)),
        ("T33UUP", 32633, (300000.0, 5400000.0)),
        # worked out from the real GeoTIFFs above: ulx - 1200 x, uly + 1200 y
        ("29UPU", 32629, (643200.0 - 1200 * 36, 5798040.0 + 1200 * 85)),
        ("29SND", 32629, (567180.0 - 1200 * 56, 4358040.0 + 1200 * 35)),
        ("35VPK", 32635, (682800.0 - 1200 * 69, 6971220.0 + 1200 * 24)),
        # the Sentinel-2 tiling grid KML's polygon for 33XVP: (399960 9400020, ..., 509760 9290220)
        ("33XVP", 32633, (399960.0, 9400020.0)),
    ],
)
def test_known_corners(tile, epsg, corner):
    grid = tile_grid(tile)
    assert (grid.epsg, grid.ulx, grid.uly) == (epsg, *corner)
    assert grid.crs == f"EPSG:{epsg}"


def test_spec_patch_example():
    # SPEC 2: patch ..._T33UUP_26_57 spans x 331200..332400, y 5330400..5331600
    ulx, uly = tile_grid("33UUP").patch_upper_left(26, 57)
    assert (ulx, ulx + 1200, uly - 1200, uly) == (331200, 332400, 5330400, 5331600)


def test_southern_hemisphere_and_zone_codes():
    assert utm_epsg("60CWT") == 32760
    assert utm_epsg("01CCV") == 32701
    assert utm_epsg("32UPB") == 32632
    assert TILE_SIDE_M == 109_800


def test_neighbouring_tiles_snap_outwards_to_the_60_m_grid():
    # 33UVP: square west edge 400,000 -> 60 m grid below: 6,666 * 60 = 399,960
    east = tile_grid("33UVP")
    assert (east.ulx, east.uly) == (399960.0, 5400000.0)
    # 33UUQ: square north edge 5,500,000 -> 60 m grid above: 91,667 * 60 = 5,500,020
    north = tile_grid("33UUQ")
    assert (north.ulx, north.uly) == (300000.0, 5500020.0)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("33UUK", "outside band U"),  # square UK of zone 33 lies at 62-63 N, not in band U (48-56 N)
        ("33UAA", "33UAA"),  # column letter A is not used in zone 33 (S..Z)
        ("61UUP", "zone 61"),
        ("33IUP", "unknown MGRS tile"),
        ("33UUPX", "unknown MGRS tile"),
        ("", "unknown MGRS tile"),
    ],
)
def test_unknown_tiles_raise(name, reason):
    with pytest.raises(UnknownTileError, match=reason):
        tile_grid(name)
