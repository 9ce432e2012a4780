"""`reben encode` encodes what is there, like rico-hdl (issue 11): S1-only and reference-maps-only
folders, partial releases; pairing reported; --require-pairs; dataset and verify on the result."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from test_encode import S2_BAND_NAMES, archive_items, product, reference_value
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.release.archive_tools import verify_archive
from reben_tools.release.encode import encode_release
from reben_tools.release.synthetic_release import write_synthetic_release

N = 10


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_synthetic_release(tmp_path_factory.mktemp("partial-release"), n_patches=N, seed=11)


@pytest.fixture(scope="module")
def partial(release, tmp_path_factory):
    """A copy of the release with parts missing, as a partial download leaves it:
    patches 0-1 lack their S2 folder, 2-4 their S1 partner, 5 its reference map."""
    root = tmp_path_factory.mktemp("partial") / "release"
    shutil.copytree(release.root, root)
    ids = list(release.patch_ids)
    for pid in ids[0:2]:
        shutil.rmtree(root / "BigEarthNet-S2" / product(pid) / pid)
    for pid in ids[2:5]:
        s1 = release.s1_names[pid]
        shutil.rmtree(root / "BigEarthNet-S1" / product(s1) / s1)
    shutil.rmtree(root / "Reference_Maps" / product(ids[5]) / ids[5])
    return root, ids


def _expected_values(release, root, s2_ids, s1_ids, map_ids) -> dict[str, bytes]:
    """Reference bytes of every value present, read independently of the encoder (rico-hdl's rule:
    safetensors of the rasterio-read arrays under the file-name prefix)."""
    out = {}
    for pid in s2_ids:
        out[pid] = reference_value(root / "BigEarthNet-S2" / product(pid) / pid, pid, S2_BAND_NAMES)
    for pid in s1_ids:
        s1 = release.s1_names[pid]
        out[s1] = reference_value(root / "BigEarthNet-S1" / product(s1) / s1, s1, ["VV", "VH"])
    for pid in map_ids:
        out[f"{pid}_reference_map"] = reference_value(
            root / "Reference_Maps" / product(pid) / pid, pid, ["reference_map"], ["Data"]
        )
    return out


def test_s1_only_folder_writes_every_s1_value(release, tmp_path):
    out = tmp_path / "s1"
    summary = encode_release(None, out, s1_dir=release.s1_dir, workers=1, patches_per_shard=4, progress=False)
    assert (summary.patches, summary.values, summary.skipped) == (0, N, [])
    assert archive_items(out) == _expected_values(release, release.root, [], release.patch_ids, [])
    assert not (out / "patches.parquet").exists()
    assert verify_archive(out).ok
    assert summary.counts["s1_without_s2"] == N and summary.counts["s1_unpaired"] == N


def test_reference_maps_only_folder_writes_every_map_with_its_footprint(release, tmp_path):
    out = tmp_path / "maps"
    summary = encode_release(None, out, reference_maps_dir=release.reference_maps_dir, workers=1, progress=False)
    assert (summary.patches, summary.values, summary.skipped) == (N, N, [])
    assert archive_items(out) == _expected_values(release, release.root, [], [], release.patch_ids)
    rows = pq.read_table(out / "patches.parquet").to_pylist()
    assert [r["has_s2"] for r in rows] == [False] * N and [r["has_reference_map"] for r in rows] == [True] * N
    # the maps share the S2 patches' 10 m grid: same corner as the full encode reads from B02
    full = tmp_path / "full"
    encode_release(release.s2_dir, full, workers=1, progress=False)
    corners = {
        r["patch_id"]: (r["crs"], r["ulx"], r["uly"]) for r in pq.read_table(full / "patches.parquet").to_pylist()
    }
    assert {r["patch_id"]: (r["crs"], r["ulx"], r["uly"]) for r in rows} == corners
    assert verify_archive(out).ok


def test_partial_release_writes_every_value_present_and_reports_pairing(release, partial, tmp_path):
    root, ids = partial
    out = tmp_path / "partial"
    summary = encode_release(
        root / "BigEarthNet-S2",
        out,
        s1_dir=root / "BigEarthNet-S1",
        reference_maps_dir=root / "Reference_Maps",
        workers=2,
        patches_per_shard=3,
        progress=False,
    )
    s2_ids, s1_ids = ids[2:], ids[:2] + ids[5:]
    map_ids = [p for p in ids if p != ids[5]]
    assert archive_items(out) == _expected_values(release, root, s2_ids, s1_ids, map_ids)
    assert summary.skipped == []
    counts = json.loads((out / "report.json").read_text())["counts"]
    assert {
        k: counts[k]
        for k in (
            "s2_with_s1",
            "s2_without_s1",
            "s1_without_s2",
            "s2_without_reference_map",
            "reference_maps_without_s2",
            "s1_unpaired",
        )
    } == {
        "s2_with_s1": 5,
        "s2_without_s1": 3,
        "s1_without_s2": 2,
        "s2_without_reference_map": 1,
        "reference_maps_without_s2": 2,
        "s1_unpaired": 0,
    }
    rows = {r["patch_id"]: r for r in pq.read_table(out / "patches.parquet").to_pylist()}
    assert sorted(rows) == ids
    assert [rows[p]["has_s2"] for p in ids] == [False] * 2 + [True] * 8
    assert [rows[p]["has_s1"] for p in ids] == [True] * 2 + [False] * 3 + [True] * 5
    assert verify_archive(out).ok


def test_require_pairs_keeps_only_complete_patches(release, partial, tmp_path):
    root, ids = partial
    out = tmp_path / "strict"
    summary = encode_release(
        root / "BigEarthNet-S2",
        out,
        s1_dir=root / "BigEarthNet-S1",
        reference_maps_dir=root / "Reference_Maps",
        workers=1,
        progress=False,
        require_pairs=True,
    )
    complete = ids[6:]
    assert summary.patches == len(complete)
    assert archive_items(out) == _expected_values(release, root, complete, complete, complete)
    assert sorted(s["item"] for s in summary.skipped) == sorted(ids[2:6])  # 0-1: no S2 folder, not planned


def test_datasets_over_a_partial_archive(release, partial, tmp_path):
    root, ids = partial
    out = tmp_path / "with-metadata"
    encode_release(
        root / "BigEarthNet-S2",
        out,
        s1_dir=root / "BigEarthNet-S1",
        reference_maps_dir=root / "Reference_Maps",
        metadata_files=release.metadata_files,
        workers=1,
        patches_per_shard=4,
        progress=False,
    )
    listed = (
        pq.read_table(out / "metadata.parquet").column("patch_id").to_pylist()
        + pq.read_table(out / "metadata_for_patches_with_snow_cloud_or_shadow.parquet").column("patch_id").to_pylist()
    )
    assert sorted(listed) == ids[2:]  # the metadata lists the patches whose S2 value was written
    with ReBENDataset(out, bands="S2", include_snow_cloud=True) as ds:
        assert len(ds) == N - 2 and ds[0]["image"].shape == (12, 120, 120)
    with pytest.raises(ValueError, match=r"3 value\(s\)") as info:
        ReBENDataset(out, bands="ALL", include_snow_cloud=True)
    message = str(info.value)
    assert "3 value(s)" in message
    for pid in ids[2:5]:
        assert f"{release.s1_names[pid]} (S1 partner value of {pid})" in message


def test_cli_encodes_an_s1_only_folder_and_prints_the_pairing(release, tmp_path):
    result = CliRunner().invoke(
        app, ["encode", "--s1-dir", str(release.s1_dir), "--out", str(tmp_path / "a"), "-q", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert f"{N} patch(es) ({N} S1 without S2), {N} value(s) ({N} S1) in 1 shard(s)" in result.output
    result = CliRunner().invoke(app, ["encode", "--out", str(tmp_path / "b"), "-q"])
    assert result.exit_code == 2 and "nothing to encode" in result.output
