"""verify, merge and export-tiff over real encoded archives."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from reliability_helpers import lmdb_items as plain_lmdb_items
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.codec import encode_reference_map
from reben_tools.format.layout import SHARD_KEYS_FILE, ArchiveError
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.shards import write_lmdb, write_shard
from reben_tools.release.archive_tools import export_geotiffs, merge_archive, verify_archive
from reben_tools.release.encode import encode_release
from reben_tools.release.synthetic_release import write_synthetic_release

V1_EXAMPLES = Path(__file__).resolve().parent / "data" / "ben_v1_examples"


def lmdb_items(env_dir):
    """Every (key, value) of an LMDB directory; keys must be UTF-8."""
    return plain_lmdb_items(env_dir, errors="strict")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_synthetic_release(tmp_path_factory.mktemp("release"), n_patches=9, seed=11)


@pytest.fixture(scope="module")
def pristine(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "archive"
    encode_release(
        release.s2_dir,
        out,
        s1_dir=release.s1_dir,
        reference_maps_dir=release.reference_maps_dir,
        metadata_files=release.metadata_files,
        workers=1,
        patches_per_shard=4,
        progress=False,
    )
    return out


@pytest.fixture
def archive_copy(pristine, tmp_path):
    out = tmp_path / "archive"
    shutil.copytree(pristine, out)
    return out


def flip_byte_inside(data_mdb, value, offset_in_value):
    """Flip one byte of ``value`` where it lies in ``data.mdb`` (values > 1 page are contiguous)."""
    raw = bytearray(data_mdb.read_bytes())
    start = raw.find(value)
    assert start >= 0 and raw.find(value, start + 1) < 0
    raw[start + offset_in_value] ^= 0x01
    data_mdb.write_bytes(bytes(raw))


def test_verify_accepts_a_fresh_archive(pristine):
    report = verify_archive(pristine)
    assert report.ok, [str(f) for f in report.faults]
    assert report.shards == 3 and report.values == 27
    result = CliRunner().invoke(app, ["verify", str(pristine), "-q"])
    assert result.exit_code == 0 and "OK" in result.output


def test_verify_names_shard_and_key_of_a_flipped_pixel_byte(archive_copy, release):
    victim = sorted(release.patch_ids)[5]  # shard-00001 holds sorted ids 4..7
    shard_dir = archive_copy / "shards" / "shard-00001"
    value = lmdb_items(shard_dir)[victim]
    flip_byte_inside(shard_dir / "data.mdb", value, 100_000)  # deep in the pixel data: still decodes
    report = verify_archive(archive_copy)
    assert not report.ok
    located = [f for f in report.faults if f.key is not None]
    assert [(f.shard, f.key) for f in located] == [("shard-00001", victim)]
    assert "corrupt value" in located[0].reason
    assert any(f.key is None and "sha256" in f.reason and f.shard == "shard-00001" for f in report.faults)
    result = CliRunner().invoke(app, ["verify", str(archive_copy), "-q"])
    assert result.exit_code == 1
    assert f"shard shard-00001 key {victim}" in result.output


def test_verify_names_the_key_of_a_broken_header_without_keys_file(archive_copy, release):
    victim = release.s1_names[sorted(release.patch_ids)[0]]
    shard_dir = archive_copy / "shards" / "shard-00000"
    value = lmdb_items(shard_dir)[victim]
    (shard_dir / SHARD_KEYS_FILE).unlink()  # an archive without per-key checksums
    flip_byte_inside(shard_dir / "data.mdb", value, 8)  # the '{' opening the JSON header
    report = verify_archive(archive_copy)
    keyed = [f for f in report.faults if f.key is not None]
    assert [(f.shard, f.key) for f in keyed] == [("shard-00000", victim)]
    assert "header is not valid JSON" in keyed[0].reason


def test_verify_reports_missing_shard_and_manifest_mismatch(archive_copy):
    shutil.rmtree(archive_copy / "shards" / "shard-00002")
    manifest = json.loads((archive_copy / "manifest.json").read_text())
    manifest["shards"][0]["entries"] += 1
    (archive_copy / "manifest.json").write_text(json.dumps(manifest))
    faults = verify_archive(archive_copy).faults
    assert any(f.shard == "shard-00002" and "data.mdb is missing" in f.reason for f in faults)
    assert any(f.shard == "shard-00000" and "manifest says 13" in f.reason for f in faults)


def test_merge_writes_one_sorted_environment(pristine, tmp_path):
    out = tmp_path / "merged"
    summary = merge_archive(pristine, out)
    union = {}
    for shard in sorted((pristine / "shards").iterdir()):
        union.update(lmdb_items(shard))
    merged = lmdb_items(out)
    assert merged == union and summary.entries == 27 == len(merged)
    assert list(merged) == sorted(merged)
    # Byte-identical to writing the union of items directly as one sorted environment.
    write_lmdb(tmp_path / "direct", union)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out / "data.mdb") == digest(tmp_path / "direct" / "data.mdb")
    assert (out / "metadata.parquet").read_bytes() == (pristine / "metadata.parquet").read_bytes()
    result = CliRunner().invoke(app, ["merge", str(pristine), str(out), "-q"])
    assert result.exit_code == 1 and "not an empty directory" in result.output


def _hand_made_archive(root, shards):
    infos = [write_shard(root / "shards", name, items) for name, items in shards.items()]
    write_manifest(root, build_manifest(infos, {}, {}, [], {}, "test"))


def test_merge_writes_duplicates_once_and_refuses_conflicts(tmp_path):
    a = encode_reference_map(np.full((120, 120), 311, np.uint16))
    b = encode_reference_map(np.full((120, 120), 312, np.uint16))
    _hand_made_archive(tmp_path / "same", {"s0": {"k1": a, "k2": b}, "s1": {"k2": b, "k3": a}})
    summary = merge_archive(tmp_path / "same", tmp_path / "same-merged")
    assert summary.duplicates == 1
    assert lmdb_items(tmp_path / "same-merged") == {"k1": a, "k2": b, "k3": a}
    _hand_made_archive(tmp_path / "conflict", {"s0": {"k2": b}, "s1": {"k2": a}})
    with pytest.raises(ArchiveError, match="'k2' has different values in shards s0 and s1"):
        merge_archive(tmp_path / "conflict", tmp_path / "conflict-merged")
    assert not (tmp_path / "conflict-merged").exists()


def _tiffs(root):
    return {str(p.relative_to(root)): p for p in sorted(Path(root).rglob("*.tif"))}


def test_export_tiff_round_trips_the_release(pristine, release, tmp_path):
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export-tiff", str(pristine), str(out), "-q"])
    assert result.exit_code == 0, result.output
    original, exported = _tiffs(release.root), _tiffs(out)
    assert sorted(exported) == sorted(original) and len(exported) == 9 * 15
    for relative, path in exported.items():
        with rasterio.open(original[relative]) as a, rasterio.open(path) as b:
            assert np.array_equal(a.read(), b.read()), relative
            assert a.dtypes == b.dtypes and a.crs == b.crs and a.transform == b.transform, relative
            if relative.startswith("Reference_Maps"):
                assert b.compression is not None and b.compression.name.lower() == "deflate" and b.nodata == 0
            else:
                assert b.compression is None and b.nodata is None


def test_export_tiff_of_real_v1_patches_keeps_their_georeferencing(tmp_path):
    s2_dir, s1_dir = V1_EXAMPLES / "BigEarthNet-S2-Example", V1_EXAMPLES / "BigEarthNet-S1-Example"
    encode_release(s2_dir, tmp_path / "archive", s1_dir=s1_dir, workers=1, progress=False)
    summary = export_geotiffs(tmp_path / "archive", tmp_path / "export", nested=False)
    assert summary.errors == [] and summary.patches == 6 and summary.files == 6 * 14
    for kind_dir, source_dir in (("BigEarthNet-S2", s2_dir), ("BigEarthNet-S1", s1_dir)):
        for source in sorted(source_dir.rglob("*.tif")):
            exported = tmp_path / "export" / kind_dir / source.parent.name / source.name
            with rasterio.open(source) as a, rasterio.open(exported) as b:
                assert np.array_equal(a.read(), b.read())
                assert a.crs == b.crs and a.transform == b.transform, source.name


def test_export_reports_an_undecodable_value_and_goes_on(archive_copy, release, tmp_path):
    victim = sorted(release.patch_ids)[0]
    shard_dir = archive_copy / "shards" / "shard-00000"
    flip_byte_inside(shard_dir / "data.mdb", lmdb_items(shard_dir)[victim], 8)
    summary = export_geotiffs(archive_copy, tmp_path / "export")
    assert len(summary.errors) == 1 and victim in summary.errors[0]
    assert summary.files == 9 * 15 - 12
