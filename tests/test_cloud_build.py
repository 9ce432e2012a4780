"""Building from where the scenes live: a bucket, COGs behind a STAC API, failing servers (issue 22).

Everything runs on 127.0.0.1 and is started by the tests: moto's S3 server in its own
process (a client holding the GIL while it waits, as pyogrio does when it opens CORINE, must
not starve the server) and the Range HTTP server of ``servers.py`` with its STAC API. The
reference is the demo region built from local disk once per session (``demo_reference``);
the COGs and items are ``cloud_demo.cog_catalogue``'s.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cloud_demo import (
    archive_digest,
    bbox_union,
    cog_catalogue,
    demo_settings,
    rtc_scene,
    shard_digest,
    upload_tree,
    write_toml,
)
from servers import Failures, StacApi, range_http_server, s3_server_process
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.codec import decode_value
from reben_tools.format.reader import Archive

KEY_ID = "AKIAREBENNEVERWRITE1"
SECRET = "reben/secret+never-in-any-output"
TOKEN = "reben-session-token-never-in-any-output"
BUCKET = "reben-demo"


def _run(args: list[str]):
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def cloud(demo_inputs, tmp_path_factory):
    """The demo as COGs + STAC items (``items.json``, relative hrefs)."""
    return cog_catalogue(demo_inputs, tmp_path_factory.mktemp("cloud"))


@pytest.fixture(scope="module")
def served(cloud):
    """The COG catalogue over the Range HTTP server, with a STAC API of its items under /stac."""
    with range_http_server(cloud.root, stac=StacApi(cloud.items)) as endpoint:
        yield endpoint


def _config(tmp_path: Path, demo_inputs: Path, **extra) -> Path:
    return write_toml(tmp_path / "build.toml", {**demo_settings(demo_inputs), **extra})


def _search_window(cloud) -> tuple[str, str]:
    s2 = [i for i in cloud.items if i["collection"] == "sentinel-2-l2a"]
    return ",".join(f"{v:.2f}" for v in bbox_union(s2)), "2017-06-01/2018-04-30"


# -- a bucket holding the .SAFE products ---------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(demo_inputs):
    """The demo's own inputs (.SAFE products, the GeoTIFF folder, S1 folders, CORINE) in a moto bucket."""
    with s3_server_process() as endpoint:
        client = endpoint.client()
        client.create_bucket(Bucket=BUCKET)
        for sub in ("S2", "S1", "corine"):
            upload_tree(client, BUCKET, demo_inputs / sub, f"inputs/{sub}")
        yield endpoint


def test_safe_products_in_a_bucket_build_the_local_archive_and_no_credential_is_written(
    bucket, demo_inputs, demo_reference, tmp_path, monkeypatch
):
    # only the standard variables: GDAL's own endpoint settings are derived from AWS_ENDPOINT_URL
    for name in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    out = tmp_path / "archive"
    result = _run(
        [
            "build",
            str(_config(tmp_path, demo_inputs)),
            "--s2",
            f"s3://{BUCKET}/inputs/S2/",
            "--s1",
            f"s3://{BUCKET}/inputs/S1",
            "--clc",
            f"s3://{BUCKET}/inputs/corine/CLC2018_demo_BE_LU.gpkg",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "4 product(s), 9 S1 scene(s)" in result.output
    assert archive_digest(out) == archive_digest(demo_reference)
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == []

    # no credential, token or endpoint in any file the build wrote (resume stamps included) nor printed
    endpoint = bucket.url.split("://", 1)[1].encode()
    secrets = [KEY_ID.encode(), SECRET.encode(), TOKEN.encode(), endpoint]
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not [s for s in secrets if s in data], path
    assert not [s for s in secrets if s.decode() in result.output]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["s1_product_types"] == {"GRD sigma0": manifest["counts"]["patches"]}


def test_a_bucket_that_does_not_exist_is_one_line(bucket, demo_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    result = _run(
        [
            "build",
            str(_config(tmp_path, demo_inputs)),
            "--s2",
            "s3://no-such-bucket/S2/",
            "--clc",
            str(demo_inputs / "corine" / "CLC2018_demo_BE_LU.gpkg"),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "s3://no-such-bucket/S2" in errors[0], result.output
    assert SECRET not in result.output and bucket.url.split("://")[1] not in result.output
    assert not (tmp_path / "out").exists()


# -- COGs behind a STAC API -------------------------------------------------------------------------


def test_search_then_stac_items_over_http_build_the_local_archive_through_retries_and_resume(
    served, cloud, demo_inputs, demo_reference, tmp_path
):
    bbox, interval = _search_window(cloud)
    items_json = tmp_path / "items.json"
    result = _run(
        [
            "search",
            "--stac",
            f"{served.url}/stac",
            "--collections",
            "sentinel-2-l2a,sentinel-1-grd",
            "--bbox",
            bbox,
            "--datetime",
            interval,
            "--out",
            str(items_json),
        ]
    )
    assert result.exit_code == 0, result.output
    found = [f["id"] for f in json.loads(items_json.read_text())["features"]]
    assert sorted(found) == sorted(cloud.s2_ids + cloud.s1_ids)

    # the server fails some reads: 503 twice, 429 twice, one answer past the time-out
    config = _config(tmp_path, demo_inputs, remote_retries=3, remote_timeout_s=2)
    served.failures = None
    patterns = {
        r"S2A_31UGR_20170613_0_L2A/red\.tif": dict(times=2, status=503),
        r"S2B_32ULV_20170927_0_L2A/nir\.tif": dict(times=2, status=429, retry_after=1),
        r"S1A_IW_GRDH_1SDV_20170616T173105/vv\.tif": dict(times=1, status=0, delay_s=4.0),
    }
    plans = [Failures(pattern=p, min_offset=1, **kw) for p, kw in patterns.items()]
    served.failures = _AnyOf(plans)
    out = tmp_path / "archive"
    args = [
        "build",
        str(config),
        "--stac-items",
        str(items_json),
        "--clc",
        str(demo_inputs / "corine" / "CLC2018_demo_BE_LU.gpkg"),
        "--out",
        str(out),
        "-q",
    ]
    try:
        result = _run(args)
    finally:
        served.failures = None
    assert result.exit_code == 0, result.output
    assert [p.failed for p in plans] == [2, 2, 1]  # each retried, then read
    assert archive_digest(out) == archive_digest(demo_reference)

    # resume: remote inputs are fingerprinted by ETag / size / last-modified
    again = _run(args)
    assert "8 block(s): 0 to build, 8 already built" in again.output, again.output
    cog = cloud.root / "cogs/sentinel-2-l2a/S2B_31UGR_20171222_0_L2A/nir.tif"
    stat = cog.stat()
    os.utime(cog, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same bytes, new ETag
    changed = _run(args)
    assert "8 block(s): 2 to build, 6 already built" in changed.output, changed.output
    assert archive_digest(out) == archive_digest(demo_reference)


class _AnyOf:
    """Several :class:`Failures` plans at once (the server asks ``check`` of one object)."""

    def __init__(self, plans):
        self.plans = plans
        self.status = 503
        self.retry_after = None
        self.delay_s = 0.0

    def check(self, path, range_header):
        for plan in self.plans:
            verdict = plan.check(path, range_header)
            if verdict is not None:
                self.status, self.retry_after, self.delay_s = plan.status, plan.retry_after, plan.delay_s
                return verdict
        return None


def test_a_product_failing_after_retries_is_reported_then_rebuilt(served, cloud, demo_inputs, demo_reference, tmp_path):
    # two products and every S1 item; one product's red band fails on every read past its header
    keep = {"S2A_31UGR_20170613_0_L2A", "S2A_32ULV_20180415_0_L2A"}
    items = [i for i in cloud.items if i["id"] in keep or i["collection"] == "sentinel-1-grd"]
    items_file = cloud.write_items(items, "two-products.json")
    config = _config(tmp_path, demo_inputs, remote_retries=1)
    args = [
        "build",
        str(config),
        "--stac-items",
        f"{served.url}/{items_file.name}",
        "--clc",
        str(demo_inputs / "corine" / "CLC2018_demo_BE_LU.gpkg"),
        "--out",
        str(tmp_path / "archive"),
        "-q",
    ]
    served.failures = Failures(pattern=r"S2A_32ULV_20180415_0_L2A/red\.tif", times=None, min_offset=1)
    try:
        first = _run(args)
    finally:
        served.failures = None
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "archive" / "report.json").read_text())
    failed = [s for s in report["skipped"] if s["kind"] == "block"]
    assert sorted(s["item"] for s in failed) == [
        "S2A_MSIL2A_20180415T103021_N0400_R108_T32ULV_rows00-04",
        "S2A_MSIL2A_20180415T103021_N0400_R108_T32ULV_rows05-09",
    ]
    for entry in failed:
        assert entry["path"].endswith("S2A_32ULV_20180415_0_L2A/red.tif"), entry
        assert "failed after its retries" in entry["reason"] and "\n" not in entry["reason"], entry

    second = _run(args)
    assert "4 block(s): 2 to build, 2 already built" in second.output, second.output
    prefixes = ["S2A_MSIL2A_20170613T104021_N0205_R008_T31UGR", "S2A_MSIL2A_20180415T103021_N0400_R108_T32ULV"]
    assert shard_digest(tmp_path / "archive", prefixes) == shard_digest(demo_reference, prefixes)
    assert json.loads((tmp_path / "archive" / "report.json").read_text())["skipped"] == []


def test_stac_s2_with_local_s1_folders_and_an_rtc_item_in_linear_power(
    served, cloud, demo_inputs, demo_reference, tmp_path
):
    # S2 from the catalogue; S1 from two local folders and one RTC item (linear gamma0, converted to dB)
    product = "S2A_31UGR_20170613_0_L2A"
    rtc_name = "S1B_IW_GRDH_1SDV_20170613T172309"
    rtc = rtc_scene(cloud, rtc_name)
    items_file = cloud.write_items([cloud.item(product), rtc], "mixed.json")
    folders = ["S1A_IW_GRDH_1SDV_20170611T054215", "S1A_IW_GRDH_1SDV_20170616T173105"]
    config = _config(tmp_path, demo_inputs, stac_s1_values="linear")
    out = tmp_path / "archive"
    args = ["build", str(config), "--stac-items", f"{served.url}/{items_file.name}"]
    for folder in folders:
        args += ["--s1", str(demo_inputs / "S1" / folder)]
    args += ["--clc", str(demo_inputs / "corine" / "CLC2018_demo_BE_LU.gpkg"), "--out", str(out), "-q"]
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "mixes Sentinel-1 product types" in result.output

    patches = pq.read_table(out / "patches.parquet", columns=["patch_id", "s1_name", "s1_product"]).to_pylist()
    reference = {
        r["patch_id"]: r for r in pq.read_table(demo_reference / "patches.parquet").to_pylist() if r["tile"] == "31UGR"
    }
    assert {r["patch_id"] for r in patches} <= set(reference)
    types = json.loads((out / "manifest.json").read_text())["provenance"]["s1_product_types"]
    on_rtc = sum(r["s1_product"] == rtc_name for r in patches)
    assert types == {"GRD sigma0": len(patches) - on_rtc, "RTC gamma0": on_rtc} and on_rtc > 0
    built, local = Archive(out), Archive(demo_reference)
    for row in patches:
        ref = reference[row["patch_id"]]
        assert row["s1_name"] == ref["s1_name"]
        mine = decode_value(row["s1_name"], built.get(row["s1_name"]))
        theirs = decode_value(ref["s1_name"], local.get(ref["s1_name"]))
        for pol in ("VV", "VH"):
            if row["s1_product"] == rtc_name:  # 10 log10(10^(x/10)) in float32
                np.testing.assert_allclose(mine[pol], theirs[pol], atol=2e-5)
            else:
                assert np.array_equal(mine[pol], theirs[pol])


# -- the offset cross-check on items ----------------------------------------------------------------


def _harmonised_blue(cloud, item_id: str, tmp: Path) -> str:
    """A COG of the item's blue band with the +1000 shift taken out, as Earth Search's "applied" items hold."""
    import rasterio
    from cloud_demo import to_cog

    src = cloud.root / f"cogs/sentinel-2-l2a/{item_id}/blue.tif"
    plain = tmp / "blue-plain.tif"
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read(1)
    shifted = np.where(data > 0, np.clip(data.astype(np.int32) - 1000, 1, None), 0).astype(np.uint16)
    profile.update(driver="GTiff")
    with rasterio.open(plain, "w", **profile) as ds:
        ds.write(shifted, 1)
    return str(to_cog(plain, tmp / "blue.tif"))


@pytest.mark.parametrize("mode", ["refuse", "flag"])
def test_an_item_whose_offset_flag_disagrees_with_its_pixels_is_refused_or_flagged(cloud, demo_inputs, tmp_path, mode):
    from reben_tools.builder.pipeline.discovery import discover
    from reben_tools.builder.stac import StacItem

    item = json.loads(json.dumps(cloud.item("S2B_31UGR_20171222_0_L2A")))  # baseline 05.00, flag false
    for asset in item["assets"].values():
        asset["href"] = str(cloud.root / asset["href"])
    item["assets"]["blue"]["href"] = _harmonised_blue(cloud, item["id"], tmp_path)
    config = cloud_config(demo_inputs, stac_offset_disagreement=mode)
    inputs = discover(config, items=[StacItem(item, None)])
    if mode == "refuse":
        assert inputs.products == []
        (entry,) = inputs.skipped
        assert entry["item"] == item["id"] and entry["kind"] == "s2_product"
        assert re.search(
            r"earthsearch:boa_offset_applied = false with baseline 05\.00 says the pixels carry", entry["reason"]
        )
        assert "refused" in entry["reason"] and "\n" not in entry["reason"]
    else:
        (product,) = inputs.products
        assert product.boa_add_offset == 0  # what the pixels show
        (flag,) = inputs.flagged
        assert flag["item"] == item["id"] and "built with offset 0" in flag["reason"]


def cloud_config(demo_inputs: Path, **overrides):
    from cloud_demo import demo_config

    return demo_config(demo_inputs, **{"s2": [], "s1": [], **overrides})


def test_items_that_agree_keep_the_offsets_of_the_local_build(cloud, demo_inputs):
    from reben_tools.builder.pipeline.discovery import discover
    from reben_tools.builder.stac import StacItem

    inputs = discover(cloud_config(demo_inputs), items=[StacItem(i, str(cloud.items_file)) for i in cloud.items])
    assert inputs.skipped == [] and inputs.flagged == []
    local = discover(cloud_config(demo_inputs, s2=[str(demo_inputs / "S2")]))
    assert {p.prefix: p.boa_add_offset for p in inputs.products} == {p.prefix: p.boa_add_offset for p in local.products}
    assert {p.path.name for p in inputs.products} == {p.path.name for p in local.products}
