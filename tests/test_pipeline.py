"""End-to-end tests of the scene-to-archive Dask pipeline on generated inputs.

Answers are worked out from the fixture's construction (tests/pipeline_fixtures.py),
never by calling the code under test: expected reference maps by point-in-polygon
tests on pixel centres, S1 values from the known linear field and pyproj, splits by
hand from the SPEC's distances, SCL fractions from pixel counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pipeline_fixtures as fx
import pyarrow.parquet as pq
import pytest
from pyproj import Transformer

from reben_tools.builder.pipeline.config import BuildError, PipelineConfig
from reben_tools.builder.pipeline.run import build_archive
from reben_tools.format import codec
from reben_tools.format.layout import (
    FLAGGED_METADATA_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    PATCHES_FILE,
    REPORT_FILE,
)
from reben_tools.format.manifest import read_manifest
from reben_tools.format.metadata import METADATA_SCHEMA
from reben_tools.format.reader import Archive, iter_lmdb

P1_KEPT = {(0, 0), (2, 0), (0, 1), (1, 1), (0, 2), (1, 2)}
P2_KEPT = {(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2), (1, 2)}
SCENE1 = "S1A_IW_GRDH_1SDV_20170613T221031"
SCENE2 = "S1B_IW_GRDH_1SDV_20170615T101031"
CODE_CLASS = {211: "Arable land", 312: "Coniferous forest", 311: "Broad-leaved forest"}


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> fx.Region:
    return fx.make_region(tmp_path_factory.mktemp("region"))


@pytest.fixture(scope="module")
def config_path(region, tmp_path_factory) -> Path:
    return fx.write_config(tmp_path_factory.mktemp("config") / "test.toml", region)


@pytest.fixture(scope="module")
def built(config_path, tmp_path_factory) -> Path:
    """The reference build: LocalCluster with 2 workers."""
    out = tmp_path_factory.mktemp("build2") / "archive"
    build_archive(PipelineConfig.from_file(config_path), out=out, workers=2, progress=False, echo=_quiet)
    return out


@pytest.fixture(scope="module")
def patches(built):
    import geopandas as gpd

    return gpd.read_parquet(built / PATCHES_FILE).set_index("patch_id")


def _pid(prefix: str, x: int, y: int) -> str:
    return f"{prefix}_{x:02d}_{y:02d}"


def _archive_files(root: Path) -> dict[str, bytes]:
    """Every file of an archive that must be byte-identical between equivalent builds."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "summary_map.png":
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def test_patch_names_and_grid_positions(patches):
    expected = {_pid(fx.P1_PREFIX, x, y) for x, y in P1_KEPT} | {_pid(fx.P2_PREFIX, x, y) for x, y in P2_KEPT}
    assert set(patches.index) == expected
    row = patches.loc["S2A_MSIL2A_20170613T101031_N0500_R022_T33UUP_01_02"]
    assert (row.x, row.y, row.tile, row.crs) == (1, 2, "33UUP", "EPSG:32633")
    assert (row.ulx, row.uly) == (300000.0 + 1200, 5400000.0 - 2400)
    assert row.s1_name == "S1B_IW_GRDH_1SDV_20170615T101031_33UUP_1_2"
    assert row.s2v1_name == "S2A_MSIL2A_20170613T101031_1_2"
    assert row.shard == "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUP_rows02-02"
    for _, r in patches.iterrows():
        assert r.ulx == 300000.0 + 1200 * r.x and r.uly == 5400000.0 - 1200 * r.y
        lon0, lat0, lon1, lat1 = r.geometry.bounds
        t = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
        clon, clat = t.transform(r.ulx + 600, r.uly - 600)
        assert lon0 < clon < lon1 and lat0 < clat < lat1


def test_drop_reasons_and_counts(built):
    report = json.loads((built / REPORT_FILE).read_text())
    summary = report["summary"]
    assert summary["candidate_patches"] == 18  # 2 products x 3 x 3 complete patches
    assert summary["dropped"] == {"no_data": 1, "unlabeled_25pct": 2, "no_s1_partner": 2}
    assert summary["kept"] == 13
    issues = {i["code"]: i["reason"] for i in report["clc_issues"]}
    assert set(issues) == {"777", "311"}
    assert "unknown CLC code" in issues["777"] and "repaired" in issues["311"]


def test_reference_maps_exact(built, patches):
    with Archive(built) as arc:
        for pid, r in patches.iterrows():
            ref = codec.check_value(pid, arc.get(pid + "_reference_map"), "reference_map")["Data"]
            np.testing.assert_array_equal(ref, fx.expected_reference_map(int(r.x), int(r.y)), err_msg=pid)


def test_labels_and_unlabeled_rule(patches):
    for pid, r in patches.iterrows():
        codes = set(np.unique(fx.expected_reference_map(int(r.x), int(r.y))).tolist())
        assert list(r["labels"]) == sorted(CODE_CLASS[c] for c in codes if c in CODE_CLASS), pid
    one_one = patches.loc[_pid(fx.P1_PREFIX, 1, 1)]
    assert one_one.unlabeled_fraction == pytest.approx(29 / 120)  # 24.2% < 25%: kept
    assert list(one_one["labels"]) == ["Arable land", "Coniferous forest"]
    assert _pid(fx.P1_PREFIX, 2, 1) not in patches.index  # exactly 25%: dropped
    assert _pid(fx.P2_PREFIX, 2, 1) not in patches.index


def test_s1_values_follow_known_warp(built, patches):
    to3035 = Transformer.from_crs("EPSG:32633", "EPSG:3035", always_xy=True)
    with Archive(built) as arc:
        for pid, r in patches.iterrows():
            value = codec.check_value(r.s1_name, arc.get(r.s1_name), "S1")
            cols = r.ulx + 10 * np.arange(120) + 5
            rows = r.uly - 10 * np.arange(120) - 5
            xs, ys = to3035.transform(*np.meshgrid(cols, rows))
            np.testing.assert_allclose(value["VV"], fx.s1_value(fx.VV_COEF, xs, ys), atol=2e-4, err_msg=pid)
            np.testing.assert_allclose(value["VH"], fx.s1_value(fx.VH_COEF, xs, ys), atol=2e-4, err_msg=pid)


def test_s1_pairing_closest_valid_within_gap(patches):
    for pid, r in patches.iterrows():
        scene = SCENE2 if r.y == 2 and r.x == 1 else SCENE1
        assert r.s1_name == f"{scene}_33UUP_{r.x}_{r.y}", pid
    assert patches.loc[_pid(fx.P1_PREFIX, 1, 2), "s1_gap_days"] == pytest.approx(2.0 - 0.0)
    assert patches.loc[_pid(fx.P2_PREFIX, 1, 2), "s1_gap_days"] == pytest.approx(1.0)
    assert patches.loc[_pid(fx.P1_PREFIX, 0, 0), "s1_gap_days"] == pytest.approx(0.5)


def test_repeated_s1_names_hold_identical_bytes(built, patches):
    by_name = patches.groupby("s1_name")["shard"].apply(sorted)
    shared = {name: shards for name, shards in by_name.items() if len(shards) == 2}
    assert len(shared) == 6  # both products pair (0,0),(2,0),(0,1),(1,1),(0,2),(1,2) with the same scene
    for name, shards in shared.items():
        values = [dict(iter_lmdb(built / "shards" / s))[name] for s in shards]
        assert values[0] == values[1]


def test_s2_values_are_raw_native_pixels(built, patches):
    arrays = fx.band_arrays(1, True)
    with Archive(built) as arc:
        value = codec.check_value("p", arc.get(_pid(fx.P1_PREFIX, 2, 0)), "S2")
    for band, res in fx.RES.items():
        if band == "SCL":
            continue
        n = 1200 // res
        np.testing.assert_array_equal(value[band], arrays[band][0:n, 2 * n : 3 * n], err_msg=band)
    assert patches.loc[_pid(fx.P1_PREFIX, 0, 0), "boa_add_offset"] == -1000  # from MTD_MSIL2A.xml
    assert pd.isna(patches.loc[_pid(fx.P2_PREFIX, 0, 0), "boa_add_offset"])  # no metadata file: unknown


def test_scl_fractions_and_flag_files(built, patches):
    assert patches.loc[_pid(fx.P1_PREFIX, 0, 0), "snow_fraction"] == pytest.approx(90 / 3600)
    assert patches.loc[_pid(fx.P1_PREFIX, 0, 0), "cloud_shadow_fraction"] == pytest.approx(30 / 3600)
    assert patches.loc[_pid(fx.P1_PREFIX, 2, 0), "cloud_shadow_fraction"] == pytest.approx(38 / 3600)
    clean = pq.read_table(built / METADATA_FILE)
    flagged = pq.read_table(built / FLAGGED_METADATA_FILE)
    assert clean.schema.equals(METADATA_SCHEMA) and flagged.schema.equals(METADATA_SCHEMA)
    rows = {r["patch_id"]: r for r in flagged.to_pylist()}
    assert set(rows) == {_pid(fx.P1_PREFIX, 0, 0), _pid(fx.P1_PREFIX, 2, 0)}
    assert rows[_pid(fx.P1_PREFIX, 0, 0)]["contains_seasonal_snow"] is True  # 2.5% > 1%
    assert rows[_pid(fx.P1_PREFIX, 0, 0)]["contains_cloud_or_shadow"] is False  # 0.83% <= 1%
    assert rows[_pid(fx.P1_PREFIX, 2, 0)]["contains_cloud_or_shadow"] is True  # 1.06% > 1%
    ids = clean.column("patch_id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 11


def test_split_and_country(patches):
    # tile side = the products' 4,200 m extent: train if d < 615.1 m, validation if d < 1,050 m.
    # Centres at 600, 1800, 3000 m: d = 600 on the outer ring (train); (1,1): d = 1800; (1,2): d = 1200.
    expected = {
        (0, 0): "train",
        (1, 0): "train",
        (2, 0): "train",
        (0, 1): "train",
        (1, 1): "test",
        (0, 2): "train",
        (1, 2): "test",
    }
    for pid, r in patches.iterrows():
        assert r.split == expected[(r.x, r.y)], pid
        assert r.tile_side_m == 4200.0
        # T33UUP's north-west corner lies in Bavaria: Austria is the nearest BigEarthNet country
        assert r.country == "Austria" and r.country_distance_m > 0


def test_manifest_statistics_from_train_patches(built, patches):
    manifest = read_manifest(built)
    train = patches[patches.split == "train"]
    arrays = {1: fx.band_arrays(1, True), 2: fx.band_arrays(2, False)}
    values = []
    for pid, r in train.iterrows():
        a = arrays[1 if pid.startswith("S2A") else 2]["B05"]
        values.append(a[r.y * 60 : (r.y + 1) * 60, r.x * 60 : (r.x + 1) * 60].astype(np.float64))
    stacked = np.stack(values)
    stats = manifest["statistics"]["bands"]["B05"]
    assert stats["mean"] == pytest.approx(stacked.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(stacked.std(), rel=1e-9)
    assert manifest["totals"]["entries"] == 3 * len(patches)
    assert manifest["totals"]["shards"] == 4


def test_one_and_two_workers_give_identical_bytes(config_path, built, tmp_path):
    out = tmp_path / "archive1"
    build_archive(PipelineConfig.from_file(config_path), out=out, workers=1, progress=False, echo=_quiet)
    assert _archive_files(out) == _archive_files(built)


def _reben(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reben_tools.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_resume_after_killed_run(config_path, built, tmp_path):
    out = tmp_path / "killed"
    args = ("build", str(config_path), "--out", str(out), "--workers", "1", "--no-progress")
    proc = _reben(*args, start_new_session=True)
    shards = out / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and any(not p.name.startswith(".") for p in shards.iterdir()):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster processes, mid-build
    proc.wait()
    finished_before = sorted(p.name for p in shards.iterdir() if not p.name.startswith("."))
    assert 1 <= len(finished_before) < 4, "the build was not killed midway"
    (shards / ".tmp-leftover-0000").mkdir()  # what a writer killed mid-shard leaves behind
    rerun = _reben(*args)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"{4 - len(finished_before)} to build, {len(finished_before)} already built" in output
    assert "removed 1 unfinished shard" in output
    assert not list(shards.glob(".tmp-*"))
    assert _archive_files(out) == _archive_files(built)


def test_external_scheduler_processes_in_other_folders_with_a_relative_out(config_path, built, tmp_path):
    """Scheduler, worker and client each started in its own folder; ``--out`` relative to the client's.

    Before output paths were made absolute, the worker wrote its shards under its own
    folder and the client silently dropped them (a partial archive with exit 0).
    """
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    folders = {name: tmp_path / name for name in ("sched", "work", "client")}
    for folder in folders.values():
        folder.mkdir()
    scheduler = subprocess.Popen(
        [
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=folders["sched"],
    )
    worker = None
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen(
            ["dask", "worker", address, "--nthreads", "2", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=folders["work"],
        )
        repo = str(Path(__file__).resolve().parents[1])
        proc = _reben(
            "build",
            str(config_path),
            "--out",
            "external",
            "--scheduler",
            address,
            "--no-progress",
            cwd=folders["client"],
            env={**os.environ, "PYTHONPATH": repo},
        )
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        assert not (folders["work"] / "external").exists()
        assert _archive_files(folders["client"] / "external") == _archive_files(built)
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_bad_inputs_are_reported_and_skipped(region, tmp_path):
    import rasterio

    s2 = tmp_path / "s2"
    s2.mkdir()
    good = shutil.copytree(region.product1, s2 / region.product1.name)
    # a truncated JPEG2000 band: the header opens, decoding fails -> its blocks are skipped
    trunc = shutil.copytree(region.product1, s2 / "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUQ_20240101T000000.SAFE")
    b03 = next(trunc.rglob("*_B03_10m.jp2"))
    with open(b03, "r+b") as f:
        f.truncate(b03.stat().st_size // 2)
    # garbage instead of a band
    garbage = shutil.copytree(region.product1, s2 / "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUR_20240101T000000.SAFE")
    b04 = next(garbage.rglob("*_B04_10m.jp2"))
    b04.write_bytes(b"this is not a JPEG2000 file")
    # a missing band
    missing = shutil.copytree(region.product1, s2 / "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUS_20240101T000000.SAFE")
    next(missing.rglob("*_B8A_20m.jp2")).unlink()
    # rasters that disagree in extent
    shifted = shutil.copytree(region.product2, s2 / "S2B_MSIL2A_20170614T101031_N0208_R022_T33UUT_20170614T120000")
    b11 = next(shifted.glob("*_B11.tif"))
    with rasterio.open(b11) as ds:
        profile, data = ds.profile, ds.read(1)
    profile["transform"] = profile["transform"] @ rasterio.Affine.translation(3, 0)
    with rasterio.open(b11, "w", **profile) as ds:
        ds.write(data, 1)
    # a folder named unlike Sentinel-2
    shutil.copytree(region.product2, s2 / "my_scene_copy")
    # an S1 scene that overlaps nothing
    s1 = tmp_path / "s1"
    shutil.copytree(region.s1_dir, s1)
    far = s1 / "S1A_IW_GRDH_1SDV_20170613T051031"
    far.mkdir()
    for pol in ("VV", "VH"):
        with rasterio.open(
            far / f"far_{pol}.tif",
            "w",
            driver="GTiff",
            width=10,
            height=10,
            count=1,
            dtype="float32",
            crs="EPSG:3035",
            transform=rasterio.Affine(20, 0, 2_000_000, 0, -20, 1_000_000),
        ) as ds:
            ds.write(np.zeros((10, 10), np.float32), 1)
    config = PipelineConfig(s2=[str(s2)], s1=[str(s1)], clc=str(region.clc), rows_per_block=2, memory_limit="1GiB")
    out = tmp_path / "archive"
    result = build_archive(config, out=out, workers=2, progress=False, echo=_quiet)
    report = json.loads((out / REPORT_FILE).read_text())
    reasons = {(s["item"], s["kind"]): s for s in report["skipped"]}
    assert reasons[(garbage.name, "s2_product")]["path"] == str(b04)
    assert "missing band B8A" in reasons[(missing.name, "s2_product")]["reason"]
    assert reasons[(shifted.name, "s2_product")]["path"] == str(b11)
    assert "extent" in reasons[(shifted.name, "s2_product")]["reason"]
    assert "not a Sentinel-2 L2A product name" in reasons[("my_scene_copy", "s2_product")]["reason"]
    assert reasons[(far.name, "s1_scene")]["reason"] == "overlaps no Sentinel-2 product"
    blocks = [s for s in report["skipped"] if s["kind"] == "block"]
    assert blocks and all(s["path"] == str(b03) for s in blocks)
    # the copy named T33UUQ lies 100,020 m south of that tile's corner: on the tile's grid
    # it starts 780 m into patch row 84, so it holds two complete rows (84, 85): one block
    assert {s["item"] for s in blocks} == {"S2A_MSIL2A_20170613T101031_N0500_R022_T33UUQ_rows00-01"}
    # the good product is complete
    assert result.kept + result.flagged == len(P1_KEPT)
    ids = pq.read_table(out / PATCHES_FILE, columns=["patch_id"]).column("patch_id").to_pylist()
    assert sorted(ids) == sorted(_pid(fx.P1_PREFIX, x, y) for x, y in P1_KEPT)
    assert good.is_dir()


def test_nothing_buildable_exits_non_zero(region, tmp_path):
    s2 = tmp_path / "s2"
    shutil.copytree(region.product2, s2 / "not_a_product")
    proc = _reben(
        "build",
        "--s2",
        str(s2),
        "--s1",
        str(region.s1_dir),
        "--clc",
        str(region.clc),
        "--out",
        str(tmp_path / "archive"),
        "--no-progress",
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert output.strip().splitlines()[-1] == (
        f"error: {s2}: holds no Sentinel-2 product (a .SAFE folder or a folder of GeoTIFFs named like an S2 L2A "
        "product); not named like one: not_a_product"
    )
    assert not (tmp_path / "archive").exists()  # a run that built nothing leaves no output behind


def test_report_lists_every_dropped_patch_with_its_reason(built):
    report = json.loads((built / REPORT_FILE).read_text())
    expected = [
        {"patch_id": _pid(fx.P1_PREFIX, 1, 0), "reason": "no_data"},
        {"patch_id": _pid(fx.P1_PREFIX, 2, 1), "reason": "unlabeled_25pct"},
        {"patch_id": _pid(fx.P1_PREFIX, 2, 2), "reason": "no_s1_partner"},
        {"patch_id": _pid(fx.P2_PREFIX, 2, 1), "reason": "unlabeled_25pct"},
        {"patch_id": _pid(fx.P2_PREFIX, 2, 2), "reason": "no_s1_partner"},
    ]
    assert [{"patch_id": d["patch_id"], "reason": d["reason"]} for d in report["dropped"]] == sorted(
        expected, key=lambda d: d["patch_id"]
    )
    assert all(
        d["shard"].endswith("_rows00-01" if d["patch_id"][-2:] in ("00", "01") else "_rows02-02")
        for d in report["dropped"]
    )


def test_missing_clc_is_a_clear_error(region, tmp_path):
    config = PipelineConfig(s2=[str(region.s2_dir)], clc=str(tmp_path / "nope.gpkg"))
    with pytest.raises(BuildError, match=r"nope\.gpkg"):
        build_archive(config, out=tmp_path / "a", progress=False, echo=_quiet)


def test_chains_keep_consecutive_blocks_together(region, tmp_path):
    from reben_tools.builder.corine import open_clc
    from reben_tools.builder.pipeline.discovery import discover
    from reben_tools.builder.pipeline.execution import chains_for
    from reben_tools.builder.pipeline.planning import plan_tasks

    config = PipelineConfig(s2=[str(region.s2_dir)], s1=[str(region.s1_dir)], clc=str(region.clc), rows_per_block=1)
    inputs = discover(config)
    tasks = plan_tasks(config, inputs, open_clc(region.clc), tmp_path)
    assert len(tasks) == 6  # 2 products x 3 rows

    def shape(chains):
        return [[(t.product.prefix[:3], t.block.row_start) for t in chain] for chain in chains]

    assert shape(chains_for(tasks, 2)) == [[("S2A", 0), ("S2A", 1), ("S2A", 2)], [("S2B", 0), ("S2B", 1), ("S2B", 2)]]
    one_product = [t for t in tasks if t.product.prefix.startswith("S2A")]
    assert shape(chains_for(one_product, 2)) == [[("S2A", 0), ("S2A", 1)], [("S2A", 2)]]
    assert shape(chains_for(one_product, 8)) == [[("S2A", 0)], [("S2A", 1)], [("S2A", 2)]]


def test_manifest_and_report_follow_their_schemas(built):
    import jsonschema

    schemas = Path(__file__).resolve().parents[1] / "schemas"
    manifest = json.loads((built / MANIFEST_FILE).read_text())
    jsonschema.validate(manifest, json.loads((schemas / "manifest.schema.json").read_text()))
    jsonschema.validate(
        json.loads((built / REPORT_FILE).read_text()), json.loads((schemas / "report.schema.json").read_text())
    )
    assert manifest["counts"]["split_train"] == 9 and manifest["counts"]["dropped_no_data"] == 1


def test_s1_no_data_written_as_untagged_zero_is_no_data(region, built, tmp_path):
    """Scene 2 rewritten the way SNAP and Earth Engine export it: NaN -> 0, no nodata tag.

    The archive must equal the reference build's: the zeros are no-data, so no patch
    pairs with a scene that does not cover it and no S1 value holds a 0.
    """
    import rasterio

    s1 = shutil.copytree(region.s1_dir, tmp_path / "s1")
    for path in sorted((s1 / fx.S1_SCENES[2][0]).glob("*.tif")):
        with rasterio.open(path) as ds:
            profile, data = ds.profile, ds.read(1)
        assert profile["nodata"] is None and np.isnan(data).any()
        data[np.isnan(data)] = 0.0
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data, 1)
    config = PipelineConfig.from_file(config_path_for(region, tmp_path, s1))
    out = tmp_path / "archive"
    build_archive(config, out=out, workers=1, progress=False, echo=_quiet)
    expected = pq.read_table(built / PATCHES_FILE, columns=["patch_id", "s1_name"]).to_pylist()
    assert pq.read_table(out / PATCHES_FILE, columns=["patch_id", "s1_name"]).to_pylist() == expected
    with Archive(out) as archive, Archive(built) as reference:
        for row in expected:
            assert bytes(archive.get(row["s1_name"])) == bytes(reference.get(row["s1_name"]))


def config_path_for(region: fx.Region, tmp_path: Path, s1: Path) -> Path:
    return fx.write_config(tmp_path / "zero.toml", fx.Region(**{**region.__dict__, "s1_dir": s1}))


def _crop_product(source: Path, target: Path, west_m: int, north_m: int) -> Path:
    """A copy of a GeoTIFF-folder product with ``west_m`` / ``north_m`` metres cut off."""
    import rasterio
    from rasterio.windows import Window

    target.mkdir(parents=True)
    for path in sorted(source.glob("*.tif")):
        with rasterio.open(path) as ds:
            res = int(ds.transform.a)
            window = Window(west_m // res, north_m // res, ds.width - west_m // res, ds.height - north_m // res)
            profile = {
                **ds.profile,
                "width": int(window.width),
                "height": int(window.height),
                "transform": ds.window_transform(window),
            }
            data = ds.read(1, window=window)
        with rasterio.open(target / path.name, "w", **profile) as out:
            out.write(data, 1)
    return target


def test_a_cropped_product_keeps_its_tile_grid_ids_and_values(region, built, patches, tmp_path):
    """Product 2 cut 600 m on the west and north: its patches are the tile's (1, 1) onwards."""
    crop = _crop_product(region.product2, tmp_path / "s2" / fx.P2_NAME, 600, 600)
    config = PipelineConfig(
        s2=[str(crop)], s1=[str(region.s1_dir)], clc=str(region.clc), rows_per_block=2, memory_limit="1GiB"
    )
    out = tmp_path / "archive"
    build_archive(config, out=out, workers=1, progress=False, echo=_quiet)
    import geopandas as gpd

    cropped = gpd.read_parquet(out / PATCHES_FILE).set_index("patch_id")
    # complete patches of the crop: tile indices 1..2 in x and y; P2 keeps (1, 1) and (1, 2) of them
    expected = [_pid(fx.P2_PREFIX, x, y) for x, y in sorted(P2_KEPT) if x >= 1 and y >= 1]
    assert sorted(cropped.index) == sorted(expected) == [_pid(fx.P2_PREFIX, 1, 1), _pid(fx.P2_PREFIX, 1, 2)]
    for pid in expected:
        for column in ("x", "y", "ulx", "uly", "split", "tile_side_m", "s1_name"):
            assert cropped.loc[pid, column] == patches.loc[pid, column], (pid, column)
        assert list(cropped.loc[pid, "labels"]) == list(patches.loc[pid, "labels"])
    with Archive(out) as archive, Archive(built) as reference:
        for pid in expected:
            assert bytes(archive.get(pid)) == bytes(reference.get(pid))


def test_a_product_off_the_tile_pixel_grid_is_refused(region, tmp_path):
    from reben_tools.builder.scenes import SceneError, open_s2_product

    shifted = _crop_product(region.product2, tmp_path / fx.P2_NAME, 0, 0)
    import rasterio

    for path in shifted.glob("*.tif"):  # move every band 10 m east: on the 10 m grid, off the 20 and 60 m grids
        with rasterio.open(path, "r+") as ds:
            ds.transform = ds.transform * rasterio.Affine.translation(10 / ds.transform.a, 0)
    with pytest.raises(SceneError) as err:
        open_s2_product(shifted)
    assert err.value.reason == (
        "upper-left corner (300010.0, 5400000.0) is not on tile 33UUP's 60 m pixel grid "
        "from its corner (300000.0, 5400000.0): offset 10.0 m east, 0.0 m south"
    )
