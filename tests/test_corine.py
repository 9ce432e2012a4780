"""CORINE loading and reference-map rasterisation (pixel-centre rule, 999 elsewhere)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pipeline_fixtures as fx
import pytest
import rasterio
import shapely
from affine import Affine

from reben_tools.builder.corine import CorineError, grid_code_table, open_clc, read_polygons, reference_block

LANJARON = Path(__file__).parent / "data" / "clc_sample_lanjaron_es.gpkg"


def test_edges_between_pixel_centres_in_the_products_crs(tmp_path):
    # one polygon whose west edge lies at x = 1003 m (centres at ...995 and 1005) and a
    # slanted east edge x = 2003 - v/4; written in EPSG:32633 with column code_18 (lower case)
    poly = fx.uv_polygon([(1003, 0), (2003, 0), (1703, 1200), (1003, 1200)])
    path = tmp_path / "one.gpkg"
    gpd.GeoDataFrame({"code_18": ["412"]}, geometry=[poly], crs="EPSG:32633").to_file(path, engine="pyogrio")
    source = open_clc(path)
    assert source.code_column == "code_18" and source.kind == "vector"
    transform = Affine(10, 0, fx.ULX, 0, -10, fx.ULY)
    ref, issues = reference_block(source, "EPSG:32633", transform, (120, 240))
    assert issues == [] and ref.dtype == np.uint16
    u = 10 * np.arange(240) + 5
    v = 10 * np.arange(120) + 5
    uu, vv = np.meshgrid(u, v)
    expected = np.where((uu > 1003) & (uu < 2003 - vv / 4), 412, 999)
    np.testing.assert_array_equal(ref, expected)
    assert ref[0, 100] == 412 and ref[0, 99] == 999 and ref[0, 199] == 412 and ref[0, 200] == 999


def test_fixture_polygons_in_3035_with_repairs_and_unknown_codes(tmp_path):
    path = fx.write_clc(tmp_path / "clc.gpkg")
    source = open_clc(path, code_column="Code_18")
    assert source.code_column == "CODE_18"
    transform = Affine(10, 0, fx.ULX, 0, -10, fx.ULY)
    ref, issues = reference_block(source, "EPSG:32633", transform, (360, 360))
    for x in range(3):
        for y in range(3):
            np.testing.assert_array_equal(
                ref[y * 120 : (y + 1) * 120, x * 120 : (x + 1) * 120], fx.expected_reference_map(x, y)
            )
    reasons = {i.code: i.reason for i in issues}
    assert "unknown CLC code" in reasons["777"] and "repaired with make_valid" in reasons["311"]


def test_bbox_filter_reads_only_nearby_polygons(tmp_path):
    path = fx.write_clc(tmp_path / "clc.gpkg")
    source = open_clc(path)
    # the north half of patch (2, 0) lies 600 m from any polygon but the big conifer one
    geometries, codes, _ = read_polygons(source, (fx.ULX + 2400, fx.ULY - 600, fx.ULX + 3600, fx.ULY), "EPSG:32633")
    assert codes.tolist() == [312] and len(geometries) == 1
    # patch (0, 0) lies inside the arable polygon: OGR's filter tests geometries, not just
    # their bounding boxes, so the conifer polygon around it is not read
    _, codes, _ = read_polygons(source, (fx.ULX, fx.ULY - 1200, fx.ULX + 1200, fx.ULY), "EPSG:32633")
    assert codes.tolist() == [211]
    # patch (1, 0) meets both and touches the road's corner (the query rectangle, taken to
    # EPSG:3035, grows by the grid convergence); far polygons (777, 311) are not read
    _, codes, _ = read_polygons(source, (fx.ULX + 1200, fx.ULY - 1200, fx.ULX + 2400, fx.ULY), "EPSG:32633")
    assert codes.tolist() == [211, 122, 312]


def test_real_clc_extract_case_insensitive_column_and_crs():
    source = open_clc(LANJARON)
    assert source.code_column.lower() == "code_18"
    frame = gpd.read_file(LANJARON, layer=source.layer)
    assert frame.crs.to_epsg() == 25830
    # a 1.2 km patch in UTM 30N (EPSG:32630; ETRS89 and WGS84 differ by well under a metre here)
    minx, miny, maxx, maxy = frame.total_bounds
    left, top = np.floor((minx + maxx) / 2 / 10) * 10 - 600, np.floor((miny + maxy) / 2 / 10) * 10 + 600
    transform = Affine(10, 0, left, 0, -10, top)
    ref, _ = reference_block(source, "EPSG:25830", transform, (120, 120))
    xs, ys = np.meshgrid(left + 10 * np.arange(120) + 5, top - 10 * np.arange(120) - 5)
    expected = np.full((120, 120), 999, dtype=np.uint16)
    for code, geometry in zip(frame[source.code_column], frame.geometry, strict=True):
        expected[shapely.contains_xy(geometry, xs, ys)] = int(code)
    assert (ref == expected).mean() > 0.999  # pixel centres on an edge may go either way
    assert len(set(np.unique(ref).tolist()) - {999}) >= 2


def test_strip_rasterisation_gives_the_bytes_of_one_pass_over_unclipped_polygons():
    # reference_block rasterises 120-row strips of clipped polygons; the answer must be the
    # bytes of a single GDAL pass over the whole grid with the polygons as read (unclipped),
    # here on a 300-row grid (strips of 120, 120, 60 rows) in a CRS other than the file's
    from rasterio.features import rasterize

    from reben_tools.builder.corine import RASTERISE_STRIP_ROWS

    assert RASTERISE_STRIP_ROWS == 120
    source = open_clc(LANJARON)
    frame = gpd.read_file(LANJARON, layer=source.layer)
    minx, miny, maxx, maxy = frame.total_bounds
    left = np.floor((minx + maxx) / 2 / 10) * 10 - 1200
    top = np.floor((miny + maxy) / 2 / 10) * 10 + 1500
    transform = Affine(10, 0, left, 0, -10, top)
    shape = (300, 240)
    ref, _ = reference_block(source, "EPSG:32630", transform, shape)
    geometries, codes, _ = read_polygons(source, (left, top - 3000, left + 2400, top), "EPSG:32630")
    one_pass = rasterize(
        zip(geometries, (int(c) for c in codes), strict=True),
        out_shape=shape,
        transform=transform,
        fill=999,
        all_touched=False,
        dtype="uint16",
    )
    assert ref.dtype == np.uint16 and ref.shape == shape
    assert ref.tobytes() == one_pass.tobytes()
    # the polygons do cross the strip borders (rows 119/120 and 239/240 share codes)
    assert len(set(np.unique(ref).tolist()) - {999}) >= 2
    assert (ref[119] == ref[120]).any() and (ref[239] == ref[240]).any() and (ref[119] != 999).any()


def test_raster_clc_grid_codes_and_raw_codes(tmp_path):
    # a 100 m raster in EPSG:32633 covering the fixture tile corner: grid codes 1..44, 48 = no data
    data = np.full((12, 12), 48, dtype=np.uint8)
    data[:, :6] = 12  # 12th code: 211
    data[:6, 6:] = 24  # 24th code: 312
    path = tmp_path / "clc.tif"
    profile = {
        "driver": "GTiff",
        "width": 12,
        "height": 12,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(100, 0, fx.ULX, 0, -100, fx.ULY),
        "nodata": 48,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    source = open_clc(path)
    assert source.kind == "raster" and source.raster_values == "grid_codes"
    assert grid_code_table()[12] == 211 and grid_code_table()[24] == 312
    ref, _ = reference_block(source, "EPSG:32633", Affine(10, 0, fx.ULX, 0, -10, fx.ULY), (120, 120))
    assert (ref[:, :60] == 211).all() and (ref[:60, 60:] == 312).all() and (ref[60:, 60:] == 999).all()
    raw = tmp_path / "raw.tif"
    profile.update(dtype="uint16", nodata=0)
    with rasterio.open(raw, "w", **profile) as ds:
        ds.write(np.where(data == 48, 0, 523).astype(np.uint16), 1)
    source = open_clc(raw)
    assert source.raster_values == "codes"
    ref, _ = reference_block(source, "EPSG:32633", Affine(10, 0, fx.ULX, 0, -10, fx.ULY), (120, 120))
    assert (ref[:, :60] == 523).all() and (ref[60:, 60:] == 999).all()


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "clc.gpkg"
    gpd.GeoDataFrame({"code": ["211"]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:3035").to_file(
        path, engine="pyogrio"
    )
    with pytest.raises(CorineError, match=r"clc.gpkg: no column 'Code_18'"):
        open_clc(path)
    broken = tmp_path / "broken.gpkg"
    broken.write_bytes(b"not a geopackage")
    with pytest.raises(CorineError, match=r"broken\.gpkg"):
        open_clc(broken)


def test_raster_clc_is_sampled_exactly_at_the_pixel_centres(tmp_path):
    """A 100 m EPSG:3035 raster of random codes sampled onto a rotated UTM 10 m grid.

    The expected code of each pixel is that of the raster cell holding the pixel centre,
    the centre taken to EPSG:3035 point by point with pyproj. GDAL's approximate warp
    transformer (which rasterio's reproject used whatever its tolerance) put about 2% of
    the pixels in a neighbouring cell.
    """
    from pyproj import Transformer

    codes = np.array([111, 112, 121, 211, 231, 311, 312, 313, 321, 512], dtype=np.uint16)
    rng = np.random.default_rng(7)
    to_3035 = Transformer.from_crs("EPSG:32633", "EPSG:3035", always_xy=True)
    x0, y0 = to_3035.transform(fx.ULX, fx.ULY)
    left, top = np.floor(x0 / 100) * 100 - 2000, np.ceil(y0 / 100) * 100 + 2000
    data = rng.choice(codes, size=(80, 80)).astype(np.uint16)
    path = tmp_path / "clc3035.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=80,
        height=80,
        count=1,
        dtype="uint16",
        crs="EPSG:3035",
        transform=Affine(100, 0, left, 0, -100, top),
        nodata=0,
    ) as ds:
        ds.write(data, 1)
    source = open_clc(path)
    assert source.raster_values == "codes"
    ref, _ = reference_block(source, "EPSG:32633", Affine(10, 0, fx.ULX, 0, -10, fx.ULY), (240, 360))
    cx, cy = np.meshgrid(fx.ULX + 10 * (np.arange(360) + 0.5), fx.ULY - 10 * (np.arange(240) + 0.5))
    sx, sy = to_3035.transform(cx, cy)
    expected = data[np.floor((top - sy) / 100).astype(int), np.floor((sx - left) / 100).astype(int)]
    assert np.array_equal(ref, expected), f"{np.count_nonzero(ref != expected)} pixels in the wrong cell"
