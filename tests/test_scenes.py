"""Opening S2 products (SAFE/JP2 and GeoTIFF folders) and S1 scenes; errors name the file."""

from __future__ import annotations

import shutil

import numpy as np
import pipeline_fixtures as fx
import pytest
import rasterio

from reben_tools.builder.s1_warp import S1Warper
from reben_tools.builder.scenes import SceneError, open_s1_scene, open_s2_product, read_block


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    arrays = fx.band_arrays(7, True)
    safe = fx.write_safe(root, fx.P1_NAME, arrays)
    tif = fx.write_geotiff_product(root, fx.P2_NAME, arrays)
    return root, arrays, safe, tif


def test_safe_product(products):
    _, arrays, safe, _ = products
    product = open_s2_product(safe)
    assert product.layout == "SAFE" and product.prefix == fx.P1_PREFIX
    assert product.crs == "EPSG:32633" and product.boa_add_offset == -1000
    assert (product.grid.ulx, product.grid.uly, product.grid.ncols, product.grid.nrows) == (300000, 5400000, 3, 3)
    assert product.band_paths["B8A"].parent.name == "R20m" and product.band_paths["B09"].parent.name == "R60m"
    block = product.grid.blocks(2)[1]  # patch row 2
    pixels = read_block(product, block)
    assert pixels["B02"].shape == (120, 360) and pixels["B05"].shape == (60, 180) and pixels["B01"].shape == (20, 60)
    np.testing.assert_array_equal(pixels["B02"], arrays["B02"][240:360, 0:360])
    np.testing.assert_array_equal(pixels["B09"], arrays["B09"][40:60, 0:60])
    assert pixels["SCL"].dtype == np.uint8


def test_geotiff_product_and_offset_default(products):
    _, arrays, _, tif = products
    product = open_s2_product(tif)
    assert product.layout == "GeoTIFF"
    assert product.band_paths["B02"].name.endswith("_B02_10m.tif") and product.band_paths["B05"].name.endswith(
        "_B05.tif"
    )
    assert product.boa_add_offset is None  # no MTD_MSIL2A.xml: unknown, whatever the baseline
    assert open_s2_product(product.path, boa_add_offset=0).boa_add_offset == 0  # set by the config
    pixels = read_block(product, product.grid.blocks(1)[0], bands=("B12",))
    np.testing.assert_array_equal(pixels["B12"], arrays["B12"][0:60, 0:180])


def test_missing_band_names_the_folder(products, tmp_path):
    _, _, safe, _ = products
    copy = shutil.copytree(safe, tmp_path / safe.name)
    next(copy.rglob("*_B11_20m.jp2")).unlink()
    with pytest.raises(SceneError, match=r"R20m.*missing band B11"):
        open_s2_product(copy)


def test_crs_mismatch_names_the_file(products, tmp_path):
    _, _, _, tif = products
    copy = shutil.copytree(tif, tmp_path / tif.name)
    b03 = next(copy.glob("*_B03_10m.tif"))
    with rasterio.open(b03) as ds:
        profile, data = ds.profile, ds.read(1)
    profile["crs"] = "EPSG:32632"
    with rasterio.open(b03, "w", **profile) as ds:
        ds.write(data, 1)
    with pytest.raises(SceneError) as info:
        open_s2_product(copy)
    assert info.value.path == str(b03) and "EPSG:32632" in info.value.reason


def test_wrong_resolution_and_bad_name(products, tmp_path):
    _, _, _, tif = products
    copy = shutil.copytree(tif, tmp_path / tif.name)
    b05 = next(copy.glob("*_B05.tif"))
    b05.rename(b05.with_name(b05.name.replace("_B05.tif", "_B05_10m.tif")))
    with pytest.raises(SceneError, match="B05 is not at its native 20 m"):
        open_s2_product(copy)
    with pytest.raises(SceneError, match="not a Sentinel-2 L2A product name"):
        open_s2_product(shutil.copytree(tif, tmp_path / "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP"))


def test_truncated_jp2_fails_on_read_naming_the_file(products, tmp_path):
    _, _, safe, _ = products
    copy = shutil.copytree(safe, tmp_path / safe.name)
    b04 = next(copy.rglob("*_B04_10m.jp2"))
    with open(b04, "r+b") as f:
        f.truncate(b04.stat().st_size // 3)
    product = open_s2_product(copy)
    with pytest.raises(SceneError) as info:
        read_block(product, product.grid.blocks(3)[0])
    assert info.value.path == str(b04)


def test_s1_scene_and_warp_validity(tmp_path):
    folder = fx.write_s1_scene(tmp_path, 1)
    scene = open_s1_scene(folder)
    assert scene.prefix == "S1A_IW_GRDH_1SDV_20170613T221031" and scene.crs == "EPSG:3035"
    assert scene.acquired == fx.S1_SCENES[1][1] and scene.nodata == -9999.0
    with S1Warper(scene) as warper:
        from affine import Affine

        covered = warper.warp("EPSG:32633", Affine(10, 0, fx.ULX, 0, -10, fx.ULY), 120)
        assert covered is not None and covered[0].dtype == np.float32 and covered[0].shape == (120, 120)
        # patch (2, 2): u + v from 4800 to 7200 crosses the swath edge at 4900
        assert warper.warp("EPSG:32633", Affine(10, 0, fx.ULX + 2400, 0, -10, fx.ULY - 2400), 120) is None
        # far away: no overlap
        assert warper.warp("EPSG:32633", Affine(10, 0, fx.ULX + 90_000, 0, -10, fx.ULY), 120) is None


def test_s1_scene_errors(tmp_path):
    folder = fx.write_s1_scene(tmp_path, 2)
    next(folder.glob("*_VH.tif")).unlink()
    with pytest.raises(SceneError, match=r"expected one \*_VH.tif file, found 0"):
        open_s1_scene(folder)
    bad = tmp_path / "S3A_SL_2_LST"
    bad.mkdir()
    with pytest.raises(SceneError, match="not a Sentinel-1 product name"):
        open_s1_scene(bad)


def test_tiled_jp2_blocks_read_by_tile_rows_equal_direct_reads(tmp_path):
    from reben_tools.builder import scenes

    # a 60 m-like raster of 200 x 200 pixels in 64 x 64 JPEG2000 tiles
    rng = np.random.default_rng(3)
    data = rng.integers(1, 60000, size=(200, 200), dtype=np.uint16)
    path = tmp_path / "tiled.jp2"
    with rasterio.open(
        path,
        "w",
        driver="JP2OpenJPEG",
        width=200,
        height=200,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=rasterio.Affine(60, 0, 0, 0, -60, 0),
        QUALITY="100",
        REVERSIBLE="YES",
        BLOCKXSIZE="64",
        BLOCKYSIZE="64",
    ) as ds:
        ds.write(data, 1)
    scenes.forget_tile_rows()
    with rasterio.open(path) as ds:
        assert ds.block_shapes[0][0] == 64
        for row0 in range(0, 200 - 40, 40):  # windows of 40 rows: consecutive ones share a tile row
            window = scenes.Window(0, row0, 180, 40)
            np.testing.assert_array_equal(scenes._read_by_tile_rows(ds, window), data[row0 : row0 + 40, :180])
            kept_row, kept = next(iter(scenes._LAST_TILE_ROW.values()))
            assert kept_row == (row0 + 39) // 64 * 64 and kept.shape[1] == 200
    scenes.forget_tile_rows()


def test_linear_sigma0_is_refused_or_converted(tmp_path):
    import rasterio

    scene = tmp_path / "S1A_IW_GRDH_1SDV_20170613T221031"
    scene.mkdir()
    linear = np.full((40, 40), 0.05, np.float32)  # -13.0103 dB
    linear[:, :10] = 0.0  # untagged no-data
    for pol in ("VV", "VH"):
        with rasterio.open(
            scene / f"s_{pol}.tif",
            "w",
            driver="GTiff",
            width=40,
            height=40,
            count=1,
            dtype="float32",
            crs="EPSG:3035",
            transform=rasterio.Affine(20, 0, 4_000_000, 0, -20, 3_000_000),
        ) as ds:
            ds.write(linear, 1)
    with pytest.raises(SceneError, match="linear sigma0") as err:
        open_s1_scene(scene)
    assert err.value.path == str(scene / "s_VV.tif")
    opened = open_s1_scene(scene, values="linear")
    assert opened.linear and opened.nodata == 0.0
    with S1Warper(opened) as warper:
        values = warper._read(rasterio.windows.Window(0, 0, 40, 40))
    assert np.isnan(values[:, :, :10]).all()
    np.testing.assert_allclose(values[:, :, 10:], 10 * np.log10(0.05), rtol=0, atol=1e-5)
