"""The GeoTIFF release encoder: keys, exact value bytes, metadata, determinism, bad inputs."""

import hashlib
import json
import shutil
from pathlib import Path

import geopandas as gpd
import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from pyproj import Transformer
from reliability_helpers import lmdb_items as plain_lmdb_items
from safetensors.numpy import save as safetensors_save
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.metadata import METADATA_SCHEMA
from reben_tools.release.encode import encode_release
from reben_tools.release.encode_plan import EncodeError
from reben_tools.release.geotiff_release import ReleaseError, discover_patches, read_band, reading_environment
from reben_tools.release.synthetic_release import SYNTHETIC_TILES, write_synthetic_release

REPO = Path(__file__).resolve().parents[1]
V1_EXAMPLES = REPO / "tests" / "data" / "ben_v1_examples"
SCHEMAS = REPO / "schemas"
S2_BAND_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def schema(name):
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def lmdb_items(env_dir):
    """Every (key, value) of an LMDB directory; keys must be UTF-8."""
    return plain_lmdb_items(env_dir, errors="strict")


def archive_items(archive_dir):
    items = {}
    for shard in sorted((Path(archive_dir) / "shards").iterdir()):
        items.update(lmdb_items(shard))
    return items


def read_tif(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def reference_value(folder, name, bands, tensor_names=None):
    """safetensors bytes of the GeoTIFFs ``<folder>/<name>_<band>.tif``, read independently."""
    tensor_names = tensor_names or bands
    return safetensors_save({t: read_tif(folder / f"{name}_{b}.tif") for t, b in zip(tensor_names, bands, strict=True)})


def product(name):
    """Release product folder: S1 mission..acquisition start, or the S2 id without _x_y."""
    return "_".join(name.split("_")[:5]) if name.startswith("S1") else name.rsplit("_", 2)[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_synthetic_release(tmp_path_factory.mktemp("release"), n_patches=22, seed=7)


@pytest.fixture(scope="module")
def encoded(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded") / "archive"
    summary = encode_release(
        release.s2_dir,
        out,
        s1_dir=release.s1_dir,
        reference_maps_dir=release.reference_maps_dir,
        metadata_files=release.metadata_files,
        workers=2,
        patches_per_shard=5,
        progress=False,
    )
    return out, summary


def test_real_v1_patches_encode_to_the_reference_bytes(tmp_path):
    # Real BigEarthNet patches, flat folders, v1 names: keys are the file-name prefixes and
    # each value is safetensors of the rasterio-read arrays, as the reference tool writes.
    s2_dir = V1_EXAMPLES / "BigEarthNet-S2-Example"
    s1_dir = V1_EXAMPLES / "BigEarthNet-S1-Example"
    summary = encode_release(s2_dir, tmp_path / "a", s1_dir=s1_dir, workers=1, progress=False)
    assert summary.patches == 6 and summary.skipped == []
    items = archive_items(tmp_path / "a")
    s2_names = sorted(p.name for p in s2_dir.iterdir())
    s1_names = sorted(p.name for p in s1_dir.iterdir())
    assert sorted(items) == sorted(s1_names + s2_names)
    for name in s2_names:
        assert len(items[name]) == 160_832
        assert items[name] == reference_value(s2_dir / name, name, S2_BAND_NAMES)
    for name in s1_names:
        assert len(items[name]) == 115_344
        assert items[name] == reference_value(s1_dir / name, name, ["VV", "VH"])
    # S1 partners were paired through the v1 side-cars: same x_y and tile as the S2 patch.
    rows = pq.read_table(tmp_path / "a" / "patches.parquet").to_pylist()
    for row in rows:
        assert row["s1_name"].endswith("_" + "_".join(row["patch_id"].rsplit("_", 2)[1:]))
    by_id = {r["patch_id"]: r for r in rows}
    assert (by_id["S2A_MSIL2A_20170613T101031_87_48"]["ulx"], by_id["S2A_MSIL2A_20170613T101031_87_48"]["uly"]) == (
        404400.0,
        5342400.0,
    )
    assert by_id["S2A_MSIL2A_20170613T101031_87_48"]["crs"] == "EPSG:32633"


def test_keys_shards_and_values_are_exact(release, encoded):
    out, summary = encoded
    ids = sorted(release.patch_ids)
    assert summary.patches == 22 and summary.skipped == []
    expected_keys = set(ids) | {release.s1_names[p] for p in ids} | {f"{p}_reference_map" for p in ids}
    items = archive_items(out)
    assert set(items) == expected_keys
    # Shard k holds the k-th slice of 5 sorted patch ids, with their S1 and reference-map values.
    shard_dirs = sorted((out / "shards").iterdir())
    assert [d.name for d in shard_dirs] == [f"shard-{k:05d}" for k in range(5)]
    for k, shard in enumerate(shard_dirs):
        chunk = ids[5 * k : 5 * k + 5]
        want = set(chunk) | {release.s1_names[p] for p in chunk} | {f"{p}_reference_map" for p in chunk}
        assert set(lmdb_items(shard)) == want
    for pid in ids:
        folder = release.s2_dir / product(pid) / pid
        assert items[pid] == reference_value(folder, pid, S2_BAND_NAMES)
        s1 = release.s1_names[pid]
        assert items[s1] == reference_value(release.s1_dir / product(s1) / s1, s1, ["VV", "VH"])
        map_folder = release.reference_maps_dir / product(pid) / pid
        assert items[f"{pid}_reference_map"] == reference_value(map_folder, pid, ["reference_map"], ["Data"])


def test_metadata_manifest_and_report_follow_their_schemas(release, encoded):
    out, _ = encoded
    source = [r for f in release.metadata_files for r in pq.read_table(f).to_pylist()]
    for name, flagged in (
        ("metadata.parquet", False),
        ("metadata_for_patches_with_snow_cloud_or_shadow.parquet", True),
    ):
        table = pq.read_table(out / name)
        assert table.schema.equals(METADATA_SCHEMA)
        rows = table.to_pylist()
        expected = sorted(
            (r for r in source if (r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"]) == flagged),
            key=lambda r: r["patch_id"],
        )
        assert rows == expected
        for row in rows:
            jsonschema.validate(row, schema("metadata"), cls=jsonschema.Draft202012Validator)
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, schema("manifest"), cls=jsonschema.Draft202012Validator)
    assert manifest["totals"]["entries"] == 66 and manifest["counts"]["patches"] == 22
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema("report"), cls=jsonschema.Draft202012Validator)
    assert report["skipped"] == []


def test_metadata_schema_rejects_malformed_rows():
    row = {
        "patch_id": "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57",
        "labels": ["Arable land"],
        "split": "train",
        "country": "Austria",
        "s1_name": "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57",
        "s2v1_name": "S2A_MSIL2A_20170613T101031_26_57",
        "contains_seasonal_snow": False,
        "contains_cloud_or_shadow": False,
    }
    jsonschema.validate(row, schema("metadata"), cls=jsonschema.Draft202012Validator)
    for bad in (
        {"split": "val"},
        {"labels": ["Forest"]},
        {"s1_name": "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_05"},
        {"patch_id": "S2A_MSIL2A_20170613T101031_26_57"},
        {"extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**row, **bad}, schema("metadata"), cls=jsonschema.Draft202012Validator)


def test_patches_parquet_is_geoparquet_georeferenced_from_the_tiffs(release, encoded):
    out, _ = encoded
    frame = gpd.read_parquet(out / "patches.parquet")
    assert frame.crs.to_epsg() == 4326
    assert list(frame["patch_id"]) == sorted(release.patch_ids)
    tiles = {t.tile: t for t in SYNTHETIC_TILES}
    for row in frame.itertuples():
        tile = tiles[row.tile]
        ulx, uly = tile.ulx + 1200 * row.x, tile.uly - 1200 * row.y
        assert (row.crs, row.ulx, row.uly, row.lrx, row.lry) == (f"EPSG:{tile.epsg}", ulx, uly, ulx + 1200, uly - 1200)
        to_wgs84 = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
        corners = [
            to_wgs84.transform(x, y)
            for x, y in ((ulx, uly), (ulx + 1200, uly), (ulx + 1200, uly - 1200), (ulx, uly - 1200))
        ]
        for lon, lat in corners:
            assert min(abs(lon - px) + abs(lat - py) for px, py in row.geometry.exterior.coords) < 1e-9
        assert row.shard == f"shard-{sorted(release.patch_ids).index(row.patch_id) // 5:05d}"


def test_train_statistics_match_numpy_on_the_tiffs(release, encoded):
    out, _ = encoded
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [r for f in release.metadata_files for r in pq.read_table(f).to_pylist() if r["split"] == "train"]
    assert rows, "the synthetic release should hold train patches"
    for band in ("B01", "B05", "B08", "VV"):
        stack = []
        for row in rows:
            name = row["s1_name"] if band == "VV" else row["patch_id"]
            top = release.s1_dir if band == "VV" else release.s2_dir
            pixels = read_tif(top / product(name) / name / f"{name}_{band}.tif").astype(np.float64)
            factor = 120 // pixels.shape[0]
            stack.append(np.repeat(np.repeat(pixels, factor, 0), factor, 1))  # nearest upsampling to 120x120
        values = np.stack(stack)
        got = manifest["statistics"]["bands"][band]
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert got["std"] == pytest.approx(values.std(), rel=1e-7)


def _tree_digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def test_worker_count_does_not_change_a_single_byte(release, tmp_path):
    kwargs = dict(
        s1_dir=release.s1_dir,
        reference_maps_dir=release.reference_maps_dir,
        metadata_files=release.metadata_files,
        patches_per_shard=4,
        progress=False,
    )
    encode_release(release.s2_dir, tmp_path / "w1", workers=1, **kwargs)
    encode_release(release.s2_dir, tmp_path / "w2", workers=2, **kwargs)
    one, two = _tree_digests(tmp_path / "w1"), _tree_digests(tmp_path / "w2")
    assert len(one) == 5 + 6 * 4  # 6 shards (data.mdb, keys, rows, shard.json) + manifest, report, 3 parquet
    assert one == two


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bad_inputs_are_reported_and_skipped(tmp_path):
    source = write_synthetic_release(tmp_path / "release", n_patches=8, seed=3)
    root = source.root
    ids = sorted(source.patch_ids)

    def band_file(pid, band):
        return root / "BigEarthNet-S2" / product(pid) / pid / f"{pid}_{band}.tif"

    missing, wrong_shape, unreadable, no_s1, wrong_dtype, duplicate, no_crs = ids[:7]
    band_file(missing, "B03").unlink()
    with rasterio.open(
        band_file(wrong_shape, "B05"), "w", driver="GTiff", width=61, height=60, count=1, dtype="uint16"
    ) as dataset:
        dataset.write(np.ones((1, 60, 61), np.uint16))
    band_file(unreadable, "B11").write_bytes(b"II*\x00 this is not a TIFF")
    s1 = source.s1_names[no_s1]
    shutil.rmtree(root / "BigEarthNet-S1" / product(s1) / s1)
    with rasterio.open(
        band_file(wrong_dtype, "B04"), "w", driver="GTiff", width=120, height=120, count=1, dtype="float32"
    ) as dataset:
        dataset.write(np.ones((1, 120, 120), np.float32))
    with rasterio.open(
        band_file(no_crs, "B02"), "w", driver="GTiff", width=120, height=120, count=1, dtype="uint16"
    ) as dataset:
        dataset.write(np.ones((1, 120, 120), np.uint16))
    (root / "BigEarthNet-S2" / "copy").mkdir()
    shutil.copy(band_file(duplicate, "B02"), root / "BigEarthNet-S2" / "copy" / f"{duplicate}_B02.tif")

    out = tmp_path / "archive"
    summary = encode_release(
        root / "BigEarthNet-S2",
        out,
        s1_dir=root / "BigEarthNet-S1",
        reference_maps_dir=root / "Reference_Maps",
        metadata_files=source.metadata_files,
        workers=2,
        patches_per_shard=2,
        progress=False,
        require_pairs=True,
    )
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema("report"), cls=jsonschema.Draft202012Validator)
    skipped = {s["item"]: s for s in report["skipped"]}
    assert sorted(skipped) == sorted(ids[:7])
    assert skipped[missing]["path"] == str(band_file(missing, "B03")) and "missing band" in skipped[missing]["reason"]
    assert skipped[wrong_shape]["path"] == str(band_file(wrong_shape, "B05"))
    assert "shape 60x61, expected 60x60" in skipped[wrong_shape]["reason"]
    assert skipped[unreadable]["path"] == str(band_file(unreadable, "B11"))
    assert "unreadable TIFF" in skipped[unreadable]["reason"]
    assert s1 in skipped[no_s1]["reason"] and skipped[no_s1]["path"].endswith(s1)
    assert skipped[wrong_dtype]["path"] == str(band_file(wrong_dtype, "B04"))
    assert "dtype float32, expected uint16" in skipped[wrong_dtype]["reason"]
    assert "found 2 times" in skipped[duplicate]["reason"]
    assert skipped[no_crs]["path"] == str(band_file(no_crs, "B02")) and "no CRS" in skipped[no_crs]["reason"]
    assert summary.patches == 1
    good = ids[7]
    assert set(archive_items(out)) == {good, source.s1_names[good], f"{good}_reference_map"}
    kept = (
        pq.read_table(out / "metadata.parquet").column("patch_id").to_pylist()
        + pq.read_table(out / "metadata_for_patches_with_snow_cloud_or_shadow.parquet").column("patch_id").to_pylist()
    )
    assert kept == [good]


def test_flat_tiff_release_without_metadata_writes_every_patch(tmp_path):
    source = write_synthetic_release(tmp_path / "release", n_patches=6, seed=5, nested=False, suffix=".tiff")
    assert all(p.suffix == ".tiff" for p in source.s2_dir.rglob("*_B02*"))
    out = tmp_path / "archive"
    summary = encode_release(
        source.s2_dir,
        out,
        s1_dir=source.s1_dir,
        reference_maps_dir=source.reference_maps_dir,
        workers=1,
        progress=False,
    )
    assert summary.patches == 6
    ids = sorted(source.patch_ids)
    assert set(archive_items(out)) == set(ids) | set(source.s1_names.values()) | {f"{p}_reference_map" for p in ids}
    assert not (out / "metadata.parquet").exists()
    rows = {r["patch_id"]: r for r in pq.read_table(out / "patches.parquet").to_pylist()}
    metadata = {r["patch_id"]: r for f in source.metadata_files for r in pq.read_table(f).to_pylist()}
    for pid in ids:
        assert rows[pid]["s1_name"] == source.s1_names[pid]  # paired by tile, x, y and time
        assert rows[pid]["labels"] == metadata[pid]["labels"]  # derived from the reference map
        assert rows[pid]["split"] is None
    assert json.loads((out / "manifest.json").read_text())["statistics"]["bands"] == {}


def test_s2_only_release_and_patches_missing_from_the_release(release, tmp_path):
    extra = pq.read_table(release.metadata_files[0]).to_pylist()[0]
    extra = {**extra, "patch_id": extra["patch_id"][:-5] + "90_90"}
    import pyarrow as pa

    extra_file = tmp_path / "extra.parquet"
    pq.write_table(pa.Table.from_pylist([extra], schema=METADATA_SCHEMA), extra_file)
    out = tmp_path / "archive"
    summary = encode_release(
        release.s2_dir, out, metadata_files=[*release.metadata_files, extra_file], workers=1, progress=False
    )
    assert summary.patches == 22
    assert [s["item"] for s in summary.skipped] == [extra["patch_id"]]
    assert "not found" in summary.skipped[0]["reason"]
    assert set(archive_items(out)) == set(release.patch_ids)


def test_an_existing_archive_is_never_overwritten(encoded, release):
    out, _ = encoded
    before = _tree_digests(out)
    with pytest.raises(EncodeError, match="already holds an archive"):
        encode_release(release.s2_dir, out, workers=1, progress=False)
    assert _tree_digests(out) == before


def test_discovery_and_band_reading(release, tmp_path):
    patches = discover_patches(release.s2_dir, "S2")
    assert sorted(patches) == sorted(release.patch_ids)
    assert all(sorted(p.files) == sorted(S2_BAND_NAMES) for p in patches.values())
    assert sorted(discover_patches(release.s1_dir, "S1")) == sorted(release.s1_names.values())
    # JSON side-cars and non-band TIFFs are ignored; S2 discovery does not pick up S1 files.
    assert discover_patches(V1_EXAMPLES, "S2").keys() == {
        p.name for p in (V1_EXAMPLES / "BigEarthNet-S2-Example").iterdir()
    }
    some = next(iter(patches.values()))
    with reading_environment():
        array, georef = read_band(some.files["B05"], (60, 60), "uint16", georeferenced=True)
        assert array.shape == (60, 60) and array.dtype == np.uint16
        assert np.array_equal(array, read_tif(some.files["B05"]))
        assert georef.transform.a == 20.0 and georef.crs.startswith("EPSG:326")
        with pytest.raises(ReleaseError, match="shape 60x60, expected 120x120"):
            read_band(some.files["B05"], (120, 120), "uint16")
        with pytest.raises(ReleaseError, match="does-not-exist"):
            read_band(tmp_path / "does-not-exist.tif", (60, 60), "uint16")


def test_cli_encode(release, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "encode",
            "--s2-dir",
            str(release.s2_dir),
            "--s1-dir",
            str(release.s1_dir),
            "--reference-maps-dir",
            str(release.reference_maps_dir),
            "--metadata",
            str(release.metadata_files[0]),
            "--metadata",
            str(release.metadata_files[1]),
            "--out",
            str(out),
            "--workers",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "22 patch(es)" in result.output
    assert json.loads((out / "manifest.json").read_text())["counts"]["patches"] == 22
    result = CliRunner().invoke(app, ["encode", "--s2-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nowhere" in result.output


def test_a_multithreaded_caller_gets_forkserver_workers_and_the_same_bytes(release, tmp_path):
    import threading

    from reben_tools.release.encode_workers import pool_start_method

    kwargs = dict(
        s1_dir=release.s1_dir,
        reference_maps_dir=release.reference_maps_dir,
        metadata_files=release.metadata_files,
        patches_per_shard=8,
        progress=False,
    )
    encode_release(release.s2_dir, tmp_path / "w1", workers=1, **kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert pool_start_method() == "forkserver"
        encode_release(release.s2_dir, tmp_path / "w2", workers=2, **kwargs)
    finally:
        stop.set()
        thread.join()
    assert _tree_digests(tmp_path / "w1") == _tree_digests(tmp_path / "w2")
