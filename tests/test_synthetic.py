"""Tests of the demo-region generator (reben_tools.builder.demo_region).

One region is generated per module (about 10 s of CPU) and every fact the
generator states is checked against the files it wrote, read back with
rasterio / geopandas and worked out independently (own rasterisation, own warp,
literal tile corners), so that the pipeline's tests can rely on those facts.
"""

from __future__ import annotations

import functools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from reben_tools.builder.demo_region.design import _PRODUCTS
from reben_tools.builder.demo_region.geometry import _frame
from reben_tools.builder.demo_region.land_cover import _build_corine
from reben_tools.builder.demo_region.raster_sink import JP2_CREATION_OPTIONS
from reben_tools.builder.demo_region.region import generate_region, tree_digest
from reben_tools.builder.demo_region.results import DemoRegion
from reben_tools.builder.demo_region.s2_render import _render_block
from reben_tools.format.labels import clc_legend
from reben_tools.format.naming import parse_s2_product_name

NATIVE = {
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B08": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B8A": 20,
    "B11": 20,
    "B12": 20,
    "SCL": 20,
    "B01": 60,
    "B09": 60,
}
# Real Sentinel-2 tile corners (MTD_TL.xml Geoposition of real products of these tiles)
TILE_CORNERS = {"31UGR": (32631, 699960.0, 5600040.0), "32ULV": (32632, 300000.0, 5500020.0)}
SIDE_M = 10 * 1200 + 600


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> DemoRegion:
    return generate_region(tmp_path_factory.mktemp("demo") / "region", seed=0)


def _band_path(product, band: str) -> Path:
    name = parse_s2_product_name(product.name)
    res = NATIVE[band]
    if product.layout == "SAFE":
        (granule,) = (product.path / "GRANULE").iterdir()
        return granule / "IMG_DATA" / f"R{res}m" / f"T{name.tile}_{name.sensing}_{band}_{res}m.jp2"
    return product.path / f"T{name.tile}_{name.sensing}_{band}.tif"


@functools.cache
def _read_path(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        array = ds.read(1)
    array.flags.writeable = False
    return array


def _read(product, band: str) -> np.ndarray:
    return _read_path(_band_path(product, band))


def _product(region: DemoRegion, tile: str, month: str):
    (product,) = [p for p in region.products if p.tile == tile and p.sensing_time.strftime("%Y%m") == month]
    return product


# --- names and layout -------------------------------------------------------------------


def test_products_cover_two_tiles_two_dates_mixed_baselines_and_both_layouts(region):
    names = [parse_s2_product_name(p.name) for p in region.products]
    assert sorted(n.tile for n in names) == ["31UGR", "31UGR", "32ULV", "32ULV"]
    for tile in ("31UGR", "32ULV"):
        assert len({n.sensing for n in names if n.tile == tile}) == 2
    assert {n.baseline_number >= 400 for n in names} == {True, False}
    assert sorted(p.layout for p in region.products) == ["GeoTIFF", "SAFE", "SAFE", "SAFE"]
    for product in region.products:
        assert product.path.is_dir()
        assert product.path.name.endswith(".SAFE") == (product.layout == "SAFE")
        assert product.path.parent == region.s2_dir
    assert region.countries == ["Belgium", "Luxembourg"]


def test_every_band_at_its_native_resolution_crs_and_real_tile_corner(region):
    for product in region.products:
        epsg, ulx, uly = TILE_CORNERS[product.tile]
        assert (product.epsg, product.ulx, product.uly) == (epsg, ulx, uly)
        for band, res in NATIVE.items():
            path = _band_path(product, band)
            assert path.is_file(), path
            with rasterio.open(path) as ds:
                assert ds.driver == ("JP2OpenJPEG" if product.layout == "SAFE" else "GTiff")
                assert ds.crs.to_epsg() == epsg
                assert tuple(ds.transform)[:6] == (res, 0.0, ulx, 0.0, -res, uly)
                assert (ds.width, ds.height) == (SIDE_M // res, SIDE_M // res)
                assert ds.dtypes[0] == ("uint8" if band == "SCL" else "uint16")
        # B10 does not exist in L2A
        assert not list(product.path.rglob("*B10*"))


def test_safe_folders_hold_the_resampled_copies_of_a_real_product(region):
    product = _product(region, "31UGR", "201706")
    (granule,) = (product.path / "GRANULE").iterdir()
    assert granule.name.startswith("L2A_T31UGR_A") and granule.name.endswith("_20170613T104021")
    r20 = sorted(p.name.split("_")[2] for p in (granule / "IMG_DATA" / "R20m").iterdir())
    r60 = sorted(p.name.split("_")[2] for p in (granule / "IMG_DATA" / "R60m").iterdir())
    assert r20 == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B11", "B12", "B8A", "SCL"]
    assert r60 == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B09", "B11", "B12", "B8A", "SCL"]
    assert (granule / "MTD_TL.xml").is_file() and (product.path / "manifest.safe").is_file()
    # the 20 m copy of B02 is the 2x2 mean of the native 10 m band
    b02 = _read(product, "B02").astype(np.float64)
    with rasterio.open(granule / "IMG_DATA" / "R20m" / "T31UGR_20170613T104021_B02_20m.jp2") as ds:
        b02_20 = ds.read(1)
    assert np.array_equal(b02_20, np.rint(b02.reshape(630, 2, 630, 2).mean(axis=(1, 3))).astype(np.uint16))


def test_manifest_checksums_match_the_files(region):
    import hashlib

    product = _product(region, "32ULV", "201804")
    root = ET.parse(product.path / "manifest.safe").getroot()
    objects = root.findall(".//dataObject")
    assert len(objects) == len([p for p in product.path.rglob("*") if p.is_file()]) - 1
    for obj in objects:
        href = obj.find(".//fileLocation").get("href")
        path = product.path / href.removeprefix("./")
        assert hashlib.md5(path.read_bytes()).hexdigest().upper() == obj.find(".//checksum").text
        assert int(obj.find("byteStream").get("size")) == path.stat().st_size


# --- pixels -----------------------------------------------------------------------------


def test_jp2_options_round_trip_uint16_exactly(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 65536, (130, 170), dtype=np.uint16)
    data[:7] = 0
    path = tmp_path / "x.jp2"
    with rasterio.open(
        path,
        "w",
        driver="JP2OpenJPEG",
        width=170,
        height=130,
        count=1,
        dtype="uint16",
        crs="EPSG:32631",
        transform=from_origin(699960, 5600040, 10, 10),
        **JP2_CREATION_OPTIONS,
    ) as ds:
        ds.write(data, 1)
    with rasterio.open(path) as ds:
        assert np.array_equal(ds.read(1), data)


def test_generated_jp2_bands_hold_exactly_the_rendered_values(region):
    design = _PRODUCTS[1]  # the N0500 winter product with no data and snow
    product = _product(region, "31UGR", "201712")
    assert product.name == design.name
    from reben_tools.builder.demo_region.land_cover import _land_cover

    frame = _frame("31UGR", 10)
    corine = _build_corine({"31UGR": frame}, seed=0)
    cover = _land_cover(frame, corine["31UGR"], 0, "31UGR")
    rendered = _render_block(design, cover, frame, 0, frame.size_m, 0, 0)
    for band, res in NATIVE.items():
        assert np.array_equal(_read(product, band), rendered[(band, res)]), band


def test_mtd_declares_the_offset_exactly_for_baselines_from_n0400(region):
    for product in [p for p in region.products if p.layout == "SAFE"]:
        root = ET.parse(product.path / "MTD_MSIL2A.xml").getroot()
        characteristics = root.find("./{*}General_Info/Product_Image_Characteristics")
        assert characteristics is not None
        offsets = characteristics.find("BOA_ADD_OFFSET_VALUES_LIST")
        quant = characteristics.find("QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE")
        assert quant.text == "10000"
        uri = root.find("./{*}General_Info/Product_Info/PRODUCT_URI").text
        assert uri == product.name
        if parse_s2_product_name(product.name).baseline_number >= 400:
            values = {int(e.get("band_id")): int(e.text) for e in offsets.findall("BOA_ADD_OFFSET")}
            assert values == dict.fromkeys(range(13), -1000)
            assert product.boa_add_offset == -1000
        else:
            assert offsets is None
            assert product.boa_add_offset == 0
        # every listed image file exists (names without the .jp2 extension, as ESA writes them)
        for image in root.iter("IMAGE_FILE"):
            assert (product.path / (image.text + ".jp2")).is_file()


def test_offset_raises_digital_numbers_by_about_1000(region):
    old, new = _product(region, "32ULV", "201709"), _product(region, "32ULV", "201804")
    for band in ("B02", "B03", "B11"):
        difference = float(np.median(_read(new, band))) - float(np.median(_read(old, band)))
        assert 700 < difference < 1300, band


def test_nodata_patches_are_exactly_the_designed_ones(region):
    expected = {
        ("31UGR", "201712"): {(9, y) for y in range(6)},  # swath edge u > 10800 + v tan 10 deg
        ("32ULV", "201804"): {(1, 2)},  # one zero pixel of B8A
        ("31UGR", "201706"): set(),
        ("32ULV", "201709"): set(),
    }
    for (tile, month), cells in expected.items():
        product = _product(region, tile, month)
        assert {k for k, p in product.patches.items() if p.has_nodata} == cells
        bands = {band: _read(product, band) for band in NATIVE if band != "SCL"}
        for (x, y), patch in product.patches.items():
            zero = any(
                (
                    a[
                        y * (1200 // NATIVE[b]) : (y + 1) * (1200 // NATIVE[b]),
                        x * (1200 // NATIVE[b]) : (x + 1) * (1200 // NATIVE[b]),
                    ]
                    == 0
                ).any()
                for b, a in bands.items()
            )
            assert zero == patch.has_nodata, patch.patch_id
    b8a = _read(_product(region, "32ULV", "201804"), "B8A")
    assert np.argwhere(b8a == 0).tolist() == [[137, 93]]
    # the incomplete last column of the winter product is no data too (never a patch)
    assert (_read(_product(region, "31UGR", "201712"), "B02")[:60, 1200:] == 0).all()


def test_scl_fractions_and_flag_lists_match_the_files(region):
    for product in region.products:
        scl = _read(product, "SCL")
        for (x, y), patch in product.patches.items():
            window = scl[y * 60 : (y + 1) * 60, x * 60 : (x + 1) * 60]
            assert patch.snow_fraction == np.isin(window, [11]).mean()
            assert patch.cloud_or_shadow_fraction == np.isin(window, [3, 8, 9, 10]).mean()
    winter = _product(region, "31UGR", "201712")
    assert {k for k, p in winter.patches.items() if p.snow_fraction == 1.0} == {
        (x, y) for x in range(3) for y in (7, 8, 9)
    }
    assert winter.patches[(3, 8)].snow_fraction == 0.5
    summer = _product(region, "31UGR", "201706")
    summer_scl = _read(summer, "SCL")
    assert {3, 8, 9, 10} <= set(np.unique(summer_scl).tolist())
    assert sum(p.cloud_or_shadow_fraction > 0.5 for p in summer.patches.values()) >= 4
    listed_snow = region.snow_ids_path.read_text().split()
    listed_cloud = region.cloud_ids_path.read_text().split()
    assert listed_snow == sorted(k for k, p in region.patches.items() if p.snow_fraction > 0.01)
    assert listed_cloud == sorted(k for k, p in region.patches.items() if p.cloud_or_shadow_fraction > 0.01)
    assert len(listed_snow) == 10 and len(listed_cloud) >= 8


# --- CORINE -----------------------------------------------------------------------------


def test_corine_geopackage_is_clc_like(region):
    frame = gpd.read_file(region.corine_path, layer="clc")
    assert frame.crs.to_epsg() == 3035
    assert {"ID", "Code_18", "Remark", "Area_Ha"} <= set(frame.columns)
    assert all(isinstance(c, str) for c in frame["Code_18"])
    codes = {int(c) for c in frame["Code_18"]}
    legend = clc_legend()
    assert codes <= set(legend) - {999}
    assert {122, 124, 131} <= codes
    assert len({legend[c].class19 for c in codes} - {"UNLABELED"}) >= 12
    assert frame.geometry.is_valid.all()
    assert (frame.geometry.geom_type == "MultiPolygon").all()
    # polygons form a mosaic: no overlaps (a designed feature left in the mosaic would overlap by km2)
    assert frame.geometry.area.sum() == pytest.approx(frame.geometry.union_all().area, abs=1.0)


def _reference_map(region: DemoRegion, product) -> np.ndarray:
    """Own rasterisation of the GeoPackage on the product's 10 m grid, pixel-centre rule, 999 elsewhere."""
    frame = gpd.read_file(region.corine_path, layer="clc").to_crs(f"EPSG:{product.epsg}")
    transform = from_origin(product.ulx, product.uly, 10, 10)
    return rasterize(
        ((g, int(c)) for g, c in zip(frame.geometry, frame["Code_18"], strict=True)),
        out_shape=(1260, 1260),
        transform=transform,
        fill=999,
        dtype="uint16",
    )


def test_labels_and_unlabeled_fractions_match_an_independent_rasterisation(region):
    legend = clc_legend()
    checked_labels = 0
    for product in region.products:
        reference = _reference_map(region, product)
        for (x, y), patch in product.patches.items():
            window = reference[y * 120 : (y + 1) * 120, x * 120 : (x + 1) * 120]
            classes = [legend[int(c)].class19 for c in np.unique(window)]
            unlabeled = float(np.isin(window, [c for c, e in legend.items() if e.class19 == "UNLABELED"]).mean())
            assert unlabeled == pytest.approx(patch.unlabeled_fraction, abs=1e-9), patch.patch_id
            if patch.labels is not None:
                assert tuple(sorted(set(classes) - {"UNLABELED"})) == patch.labels, patch.patch_id
                checked_labels += 1
    assert checked_labels >= 300


def test_designed_unlabeled_features_sit_on_exact_patch_fractions(region):
    belgium = _product(region, "31UGR", "201706")
    assert belgium.patches[(5, 1)].unlabeled_fraction == 1.0  # CORINE gap (999)
    assert belgium.patches[(2, 4)].unlabeled_fraction == 0.25  # exactly 25 %: dropped
    assert belgium.patches[(2, 4)].kept is False
    assert belgium.patches[(4, 4)].unlabeled_fraction == pytest.approx(29 / 120)  # 24.17 %: kept
    luxembourg = _product(region, "32ULV", "201709")
    assert luxembourg.patches[(6, 6)].unlabeled_fraction == 0.5  # half the airport patch
    assert luxembourg.patches[(1, 8)].unlabeled_fraction == pytest.approx(0.2)  # quarry
    assert sum(p.unlabeled_fraction >= 0.25 for p in luxembourg.patches.values()) == 8
    reference = _reference_map(region, belgium)
    assert (reference[120:360, 600:840] == 999).all()
    # the stated feature rectangles are exact on the pixel grid
    assert len(region.features) == 5
    for feature in region.features:
        product = next(p for p in region.products if p.tile == feature.tile)
        reference = _reference_map(region, product)
        left, bottom, right, top = feature.bounds
        c0, c1 = int((left - product.ulx) / 10), int((right - product.ulx) / 10)
        r0, r1 = int((product.uly - top) / 10), int((product.uly - bottom) / 10)
        inside = reference[r0:r1, c0:c1]
        assert (inside == feature.code).all()
        ring = np.ones((r1 - r0 + 2, c1 - c0 + 2), dtype=bool)
        ring[1:-1, 1:-1] = False
        assert not (reference[r0 - 1 : r1 + 1, c0 - 1 : c1 + 1][ring] == feature.code).any()


def test_spectra_and_backscatter_differ_by_class(region):
    product = _product(region, "32ULV", "201709")  # GeoTIFF, no offset, no cloud
    reference = _reference_map(region, product)
    red = _read(product, "B04").astype(np.float64)
    nir = _read(product, "B08").astype(np.float64)
    ndvi = (nir - red) / (nir + red)
    forest = np.isin(reference, [311, 312, 313])
    water = np.isin(reference, [511, 512])
    urban = np.isin(reference, [111, 112, 121])
    assert forest.sum() > 10_000 and water.sum() > 1_000 and urban.sum() > 1_000
    assert ndvi[forest].mean() > 0.6
    assert ndvi[water].mean() < 0.0
    assert 0.1 < ndvi[urban].mean() < 0.5
    # Sentinel-1: water is dark, forest bright (sampled at pixel centres of water / forest)
    scene = next(s for s in region.s1_scenes if s.name.endswith("20170926T173110"))
    with rasterio.open(scene.vv_path) as ds:
        vv = np.full((1260, 1260), np.nan, dtype=np.float32)
        reproject(
            rasterio.band(ds, 1),
            vv,
            dst_transform=from_origin(product.ulx, product.uly, 10, 10),
            dst_crs=f"EPSG:{product.epsg}",
            resampling=Resampling.nearest,
            dst_nodata=np.nan,
        )
    assert np.nanmean(vv[forest]) - np.nanmean(vv[water]) > 8.0


# --- Sentinel-1 -------------------------------------------------------------------------


def test_s1_scenes_are_geographic_float32_db_with_nan_nodata(region):
    assert len(region.s1_scenes) == 9
    for scene in region.s1_scenes:
        assert scene.path.name == scene.name and scene.path.parent == region.s1_dir
        assert scene.name.startswith(("S1A_IW_GRDH_1SDV_", "S1B_IW_GRDH_1SDV_")) and len(scene.name) == 32
        for path in (scene.vv_path, scene.vh_path):
            with rasterio.open(path) as ds:
                assert ds.crs.to_epsg() == 4326
                assert ds.dtypes[0] == "float32"
                assert ds.nodata is not None and math.isnan(ds.nodata)
                data = ds.read(1)
            valid = np.isfinite(data)
            assert 0.2 < valid.mean() < 1.0  # a strip with no data around it
            assert float(np.nanmin(data)) > -35 and float(np.nanmax(data)) < 5


def test_s1_partners_match_an_independent_warp(region):
    """For every patch: the stated partner is valid over all 120x120 warped pixels, closer scenes are not."""
    arrays = {}
    for scene in region.s1_scenes:
        with rasterio.open(scene.vv_path) as ds:
            arrays[scene.name] = (ds.read(1), ds.transform)

    def fully_valid(scene, product, x, y) -> bool:
        data, transform = arrays[scene.name]
        dst = np.full((120, 120), np.nan, dtype=np.float32)
        reproject(
            data,
            dst,
            src_transform=transform,
            src_crs="EPSG:4326",
            src_nodata=np.nan,
            dst_transform=from_origin(product.ulx + 1200 * x, product.uly - 1200 * y, 10, 10),
            dst_crs=f"EPSG:{product.epsg}",
            dst_nodata=np.nan,
            resampling=Resampling.bilinear,
        )
        return bool(np.isfinite(dst).all())

    checked = 0
    for product in region.products:
        t2 = product.sensing_time
        scenes = sorted(
            (s for s in region.s1_scenes if s.tile == product.tile and abs((s.acquisition_time - t2).days) <= 6),
            key=lambda s: abs((s.acquisition_time - t2).total_seconds()),
        )
        for (x, y), patch in product.patches.items():
            if not patch.s1_certain:
                continue
            valid = [fully_valid(s, product, x, y) for s in scenes]
            if patch.s1_name is None:
                assert not any(valid), patch.patch_id
                continue
            first = valid.index(True)
            partner = scenes[first]
            assert patch.s1_name == f"{partner.name}_{product.tile}_{x}_{y}", patch.patch_id
            gap = abs((partner.acquisition_time - t2).total_seconds()) / 86400
            assert patch.s1_gap_days == pytest.approx(gap, abs=1e-3) and 0.2 <= gap <= 6.0
            checked += 1
    assert checked >= 350
    # the closest-in-time rule matters: several partners per product, and some patches have none
    summer = _product(region, "31UGR", "201706")
    assert len({p.s1_name.split("_")[4] for p in summer.patches.values() if p.s1_name}) == 3
    spring = _product(region, "32ULV", "201804")
    assert {k for k, p in spring.patches.items() if p.s1_name is None} == {(9, 7), (9, 8), (9, 9)}


# --- countries, expected.json, determinism ----------------------------------------------


def test_countries_file_is_the_bigearthnet_subset_of_natural_earth(region):
    frame = gpd.read_file(region.countries_path)
    assert sorted(frame["ADM0_A3"]) == ["AUT", "BEL", "CHE", "FIN", "IRL", "KOS", "LTU", "LUX", "PRT", "SRB"]
    belgium = _product(region, "31UGR", "201706")
    luxembourg = _product(region, "32ULV", "201804")
    assert {p.country for p in belgium.patches.values()} == {"Belgium"}
    assert {p.country for p in luxembourg.patches.values()} == {"Luxembourg"}


def test_expected_json_agrees_with_the_returned_facts(region):
    data = json.loads(region.expected_path.read_text())
    assert data["patches_per_side"] == 10 and data["seed"] == 0
    assert [p["name"] for p in data["s2_products"]] == [p.name for p in region.products]
    by_id = {q["patch_id"]: q for p in data["s2_products"] for q in p["patches"]}
    assert by_id.keys() == region.patches.keys()
    for key, patch in region.patches.items():
        entry = by_id[key]
        assert entry["kept"] == patch.kept and entry["s1_name"] == patch.s1_name
        assert entry["labels"] == (None if patch.labels is None else list(patch.labels))
    kept = sum(p.kept is True for p in region.patches.values())
    assert 300 < kept < 380


def test_same_seed_gives_byte_identical_files(region, tmp_path):
    again = generate_region(tmp_path / "again", seed=0)
    assert tree_digest(again.root) == tree_digest(region.root)
    frames = {"31UGR": _frame("31UGR", 10)}
    codes0 = [c for _, c in _build_corine(frames, 0)["31UGR"]]
    codes1 = [c for _, c in _build_corine(frames, 1)["31UGR"]]
    assert codes0 != codes1


def test_refuses_a_non_empty_folder_and_too_few_patches(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_region(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "x"
    with pytest.raises(ValueError, match="at least 10"):
        generate_region(tmp_path / "small", patches_per_side=8)


@pytest.mark.slow
def test_full_size_product(tmp_path):
    from reben_tools.builder.demo_region.full_size import write_full_size_product

    full = write_full_size_product(tmp_path, progress=False)
    (granule,) = (full.product_dir / "GRANULE").iterdir()
    with rasterio.open(granule / "IMG_DATA" / "R10m" / "T33UUP_20170613T101031_B02_10m.jp2") as ds:
        assert (ds.width, ds.height) == (10980, 10980)
        assert tuple(ds.transform)[:6] == (10.0, 0.0, 300000.0, 0.0, -10.0, 5400000.0)
        assert ds.read(1, window=((5000, 5120), (5000, 5120))).min() > 0
    assert full.s1_dir is not None and full.corine_path is not None
