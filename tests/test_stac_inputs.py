"""STAC and remote inputs without a build: the search rules, asset conventions, radiometry claims,
URLs kept as URLs, what never reaches an output (issue 22). Servers run on 127.0.0.1 only."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
from servers import StacApi, range_http_server
from typer.testing import CliRunner

from reben_tools.builder.locations import RemotePath, RemoteSettings, absolute, gdal_options, location, redact
from reben_tools.builder.scenes import SceneError
from reben_tools.builder.stac import StacItem, asset_key, claimed_radiometry, item_kind
from reben_tools.cli import app

S2 = {
    "type": "Feature",
    "id": "S2A_32ULV_20180415_0_L2A",
    "collection": "sentinel-2-l2a",
    "bbox": [6.0, 49.5, 6.2, 49.7],
    "geometry": {"type": "Polygon", "coordinates": [[[6.0, 49.5], [6.2, 49.5], [6.2, 49.7], [6.0, 49.7], [6.0, 49.5]]]},
    "properties": {
        "datetime": "2018-04-15T10:30:21Z",
        "eo:cloud_cover": 10.0,
        "s2:product_uri": "S2A_MSIL2A_20180415T103021_N0400_R108_T32ULV_20220310T101214.SAFE",
        "s2:processing_baseline": "04.00",
        "earthsearch:boa_offset_applied": False,
    },
    "assets": {"blue": {"href": "b.tif"}},
    "links": [],
}
S1 = {
    "type": "Feature",
    "id": "S1A_IW_GRDH_1SDV_20180415T173212",
    "collection": "sentinel-1-grd",
    "bbox": [5.9, 49.4, 6.3, 49.8],
    "geometry": {"type": "Polygon", "coordinates": [[[5.9, 49.4], [6.3, 49.4], [6.3, 49.8], [5.9, 49.8], [5.9, 49.4]]]},
    "properties": {"datetime": "2018-04-15T17:32:12Z"},
    "assets": {"vv": {"href": "vv.tif"}, "vh": {"href": "vh.tif"}},
    "links": [],
}


def _variant(base: dict, item_id: str, **changes) -> dict:
    item = copy.deepcopy(base)
    item["id"] = item_id
    for key, value in changes.items():
        if key in ("bbox", "geometry", "collection", "assets"):
            item[key] = value
        else:
            item["properties"][key.replace("__", ":")] = value
    return item


def _far_geometry() -> dict:
    return {"type": "Polygon", "coordinates": [[[9.0, 45.0], [9.2, 45.0], [9.2, 45.2], [9.0, 45.2], [9.0, 45.0]]]}


def test_reben_search_keeps_exactly_the_items_rebens_rules_select(tmp_path):
    keep = [
        S2,
        _variant(
            S2,
            "S2B_32ULV_20180420_0_L2A",
            datetime="2018-04-20T10:30:21Z",
            s2__product_uri="S2B_MSIL2A_20180420T103021_N0400_R108_T32ULV_20220310T101214.SAFE",
        ),
        S1,  # same day, footprint meets
        _variant(S1, "S1B_IW_GRDH_1SDV_20180410T054208", datetime="2018-04-10T05:42:08Z"),  # 5.2 d before the first S2
        _variant(
            S1, "S1B_IW_GRDH_1SDV_20180426T054208", datetime="2018-04-26T05:42:08Z"
        ),  # 5.8 d after the second, outside the interval
    ]
    decoys = [
        _variant(
            S2,
            "S2A_31UGR_20180415_0_L2A",
            s2__product_uri="S2A_MSIL2A_20180415T103021_N0400_R108_T31UGR_20220310T101214.SAFE",
        ),  # not on --tiles
        _variant(
            S2,
            "S2A_32ULV_20180416_0_L2A",
            eo__cloud_cover=80.0,
            datetime="2018-04-16T10:30:21Z",
            s2__product_uri="S2A_MSIL2A_20180416T103021_N0400_R108_T32ULV_20220310T101214.SAFE",
        ),  # cloudy
        _variant(
            S2,
            "S2A_32ULV_20180417_0_L1C",
            s2__product_uri="S2A_MSIL1C_20180417T103021_N0400_R108_T32ULV_20220310T101214.SAFE",
            datetime="2018-04-17T10:30:21Z",
        ),  # L1C
        _variant(
            S2,
            "S2A_32ULV_20180501_0_L2A",
            datetime="2018-05-01T10:30:21Z",
            s2__product_uri="S2A_MSIL2A_20180501T103021_N0400_R108_T32ULV_20220310T101214.SAFE",
        ),  # after the interval
        _variant(S1, "S1A_IW_GRDH_1SDV_20180403T173212", datetime="2018-04-03T17:32:12Z"),  # 11.7 d before
        _variant(
            S1,
            "S1A_IW_GRDH_1SDV_20180416T173212",
            datetime="2018-04-16T17:32:12Z",
            geometry=_far_geometry(),
            bbox=[5.9, 45.0, 9.2, 49.8],
        ),  # meets no S2 footprint
        _variant(S1, "S1A_IW_GRDH_1SSV_20180415T173300", assets={"vv": {"href": "vv.tif"}}),  # VV only
    ]
    api = StacApi(keep + decoys, page_size=3)
    out = tmp_path / "items.json"
    with range_http_server(tmp_path, stac=api) as server:
        result = CliRunner().invoke(
            app,
            [
                "search",
                "--stac",
                f"{server.url}/stac",
                "--collections",
                "sentinel-2-l2a,sentinel-1-grd",
                "--bbox",
                "5.0,45.0,10.0,50.0",
                "--datetime",
                "2018-04-12/2018-04-21",
                "--max-cloud",
                "50",
                "--tiles",
                "32ULV",
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection"
    assert [f["id"] for f in collection["features"]] == [
        "S2A_32ULV_20180415_0_L2A",
        "S2B_32ULV_20180420_0_L2A",
        "S1B_IW_GRDH_1SDV_20180410T054208",
        "S1A_IW_GRDH_1SDV_20180415T173212",
        "S1B_IW_GRDH_1SDV_20180426T054208",
    ]
    # one search over the interval widened by the 6-day pairing window, followed through its pages
    assert api.searches[0]["datetime"] == "2018-04-06T00:00:00Z/2018-04-27T23:59:59Z"
    assert len(api.searches) == 4
    assert "kept 2 Sentinel-2 L2A item(s) on 1 tile(s) (32ULV) and 3 Sentinel-1 item(s)" in result.output


def test_a_missing_band_asset_is_one_line_naming_the_item_and_the_band():
    item = StacItem(copy.deepcopy(S2))
    with pytest.raises(SceneError) as caught:
        asset_key(item, "B05")
    assert "item S2A_32ULV_20180415_0_L2A: no asset for band B05 (looked for rededge1, B05, B05_20m" in str(
        caught.value
    )
    assert "\n" not in str(caught.value)
    with pytest.raises(SceneError, match="no asset 'band_05' for band B05"):
        asset_key(item, "B05", {"B05": "band_05"})
    item.data["assets"]["B05"] = {"href": "x.tif"}  # Planetary Computer's key
    assert asset_key(item, "B05") == "B05"


@pytest.mark.parametrize(
    "baseline, applied, carries, offset, problem",
    [
        ("04.00", False, True, -1000, False),
        ("05.09", True, False, 0, False),
        ("02.05", False, False, 0, False),
        ("02.05", True, False, 0, True),  # Earth Search says applied where no offset exists
        ("05.00", None, True, -1000, False),  # Planetary Computer: the baseline alone
        (None, None, None, None, False),
    ],
)
def test_radiometry_claims_follow_the_item_properties(baseline, applied, carries, offset, problem):
    props = {"datetime": "2020-01-01T00:00:00Z"}
    if baseline is not None:
        props["s2:processing_baseline"] = baseline
    if applied is not None:
        props["earthsearch:boa_offset_applied"] = applied
    claim = claimed_radiometry(StacItem({"id": "x", "properties": props, "assets": {}}))
    assert (claim.carries, claim.offset, claim.problem is not None) == (carries, offset, problem)


def test_item_kinds():
    assert item_kind(StacItem(S2)) == "s2" and item_kind(StacItem(S1)) == "s1"
    rtc = _variant(
        S1, "S1A_IW_GRDH_1SDV_20230101T054023_20230101T054048_046585_0595B3_rtc", collection="sentinel-1-rtc"
    )
    from reben_tools.builder.stac import s1_product_type

    assert s1_product_type(StacItem(rtc)) == "RTC gamma0" and s1_product_type(StacItem(S1)) == "GRD sigma0"


def test_urls_are_never_taken_for_relative_paths(tmp_path, monkeypatch):
    from reben_tools.builder.pipeline.config import PipelineConfig
    from reben_tools.builder.pipeline.run import absolute_paths

    monkeypatch.chdir(tmp_path)
    assert absolute("s3://bucket/S2/") == "s3://bucket/S2/"
    assert absolute("https://host/clc.gpkg") == "https://host/clc.gpkg"
    assert absolute("S2") == str(tmp_path / "S2")
    config = absolute_paths(
        PipelineConfig(
            s2=["s3://b/S2/", "S2"], s1=["s3://b/S1"], clc="https://h/c.gpkg", stac_items=["https://h/i.json"]
        )
    )
    assert config.s2 == ["s3://b/S2/", str(tmp_path / "S2")]
    assert (config.s1, config.clc, config.stac_items) == (["s3://b/S1"], "https://h/c.gpkg", ["https://h/i.json"])
    (tmp_path / "c.toml").write_text(
        's2 = ["s3://b/S2/", "local"]\nclc = "https://h/c.gpkg"\nstac_items = ["i.json"]\n'
    )
    loaded = PipelineConfig.from_file(tmp_path / "c.toml")
    assert loaded.s2 == ["s3://b/S2/", str(tmp_path / "local")] and loaded.clc == "https://h/c.gpkg"
    assert loaded.stac_items == [str(tmp_path / "i.json")]
    assert isinstance(location("/vsis3/b/k.tif"), RemotePath) and str(location("/vsis3/b/k.tif")) == "s3://b/k.tif"


def test_cli_passes_urls_through_untouched(monkeypatch, tmp_path):
    import reben_tools.builder.pipeline.run as run

    seen = {}

    def fake_build(config, **_):
        seen["config"] = config
        raise run.BuildError("stop here")

    monkeypatch.setattr(run, "build_archive", fake_build)
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--s2",
            "s3://b/S2/",
            "--s1",
            "s3://b/S1",
            "--clc",
            "https://h/c.gpkg",
            "--stac-items",
            "https://h/i.json",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1 and "stop here" in result.output
    config = seen["config"]
    assert (config.s2, config.s1, config.clc, config.stac_items) == (
        ["s3://b/S2/"],
        ["s3://b/S1"],
        "https://h/c.gpkg",
        ["https://h/i.json"],
    )


def test_signed_urls_reach_gdal_only(monkeypatch):
    fake = types.ModuleType("planetary_computer")
    fake.sign = lambda url: url + "?st=2026&se=2027&sig=SASTOKENSECRET"
    monkeypatch.setitem(sys.modules, "planetary_computer", fake)
    from reben_tools.builder.stac import asset_location

    item = StacItem(
        {"id": "x", "properties": {}, "assets": {"B02": {"href": "https://acct.blob.core.windows.net/c/B02.tif"}}}
    )
    path = asset_location(item, "B02")
    assert "SASTOKENSECRET" in path.__fspath__() and path.__fspath__().startswith("/vsicurl/https://")
    assert str(path) == "https://acct.blob.core.windows.net/c/B02.tif"
    assert "SASTOKENSECRET" not in redact(f"cannot read {path.__fspath__()}: HTTP 403")


def test_redact_removes_credentials_endpoints_and_queries(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very/secret+key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.1.2.3:9000")
    text = "GET http://10.1.2.3:9000/b/k?X-Amz-Signature=abc failed; key very/secret+key; https://user:pw@host/x"
    clean = redact(text)
    for secret in ("very/secret+key", "10.1.2.3:9000", "X-Amz-Signature", "user:pw"):
        assert secret not in clean


def test_gdal_reaches_a_custom_endpoint_from_aws_endpoint_url(monkeypatch):
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_VIRTUAL_HOSTING", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://eodata.dataspace.copernicus.eu")
    options = gdal_options(RemoteSettings(retries=4, timeout_s=30, cache_mb=64))
    assert options["AWS_S3_ENDPOINT"] == "eodata.dataspace.copernicus.eu"
    assert options["AWS_HTTPS"] == "YES" and options["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert options["GDAL_HTTP_MAX_RETRY"] == "4" and options["CPL_VSIL_CURL_CACHE_SIZE"] == str(64 * 1024 * 1024)
    assert not any(k.startswith(("AWS_SECRET", "AWS_ACCESS")) for k in options)


def test_corine_over_https_reads_the_polygons_of_the_local_file(tmp_path):
    import shutil

    import numpy as np
    from servers import range_http_server_process

    from reben_tools.builder.corine import open_clc, read_polygons

    source = next((__import__("pathlib").Path(__file__).parent / "data").glob("clc_sample_*.gpkg"))
    shutil.copy(source, tmp_path / "clc.gpkg")
    local = open_clc(tmp_path / "clc.gpkg")
    import pyogrio

    bounds = pyogrio.read_info(tmp_path / "clc.gpkg")["total_bounds"]
    with range_http_server_process(tmp_path) as url:
        remote = open_clc(f"{url}/clc.gpkg")
        assert str(remote.path) == f"{url}/clc.gpkg" and remote.code_column == local.code_column
        crs = "EPSG:3035"
        a = read_polygons(local, tuple(bounds), crs)
        b = read_polygons(remote, tuple(bounds), crs)
    assert np.array_equal(a[1], b[1]) and [g.wkb for g in a[0]] == [g.wkb for g in b[0]]
