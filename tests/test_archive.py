"""Archive format pieces the encoder relies on: per-key checksums, the reader over a
multi-shard encoded archive, and the GeoTIFFs written in the release layout."""

import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine

from reben_tools.format.codec import encode_reference_map
from reben_tools.format.layout import SHARD_KEYS_FILE
from reben_tools.format.reader import Archive, iter_lmdb
from reben_tools.format.shards import write_shard
from reben_tools.release.encode import encode_release
from reben_tools.release.geotiff_write import patch_folder, product_of, write_patch
from reben_tools.release.synthetic_release import write_synthetic_release


def test_write_shard_records_size_and_crc32_of_every_key(tmp_path):
    values = {f"k{i}": encode_reference_map(np.full((120, 120), 100 + i, np.uint16)) for i in (3, 1, 2)}
    write_shard(tmp_path, "s", values)
    table = pq.read_table(tmp_path / "s" / SHARD_KEYS_FILE)
    assert table.column("key").to_pylist() == ["k1", "k2", "k3"]
    assert table.column("value_bytes").to_pylist() == [len(values[k]) for k in ("k1", "k2", "k3")]
    assert table.column("crc32").to_pylist() == [zlib.crc32(values[k]) for k in ("k1", "k2", "k3")]


def test_archive_reader_finds_every_kind_of_key_across_shards(tmp_path):
    release = write_synthetic_release(tmp_path / "release", n_patches=5, seed=2)
    out = tmp_path / "archive"
    encode_release(
        release.s2_dir,
        out,
        s1_dir=release.s1_dir,
        reference_maps_dir=release.reference_maps_dir,
        metadata_files=release.metadata_files,
        workers=1,
        patches_per_shard=2,
        progress=False,
    )
    direct = {}
    for shard in sorted((out / "shards").iterdir()):
        direct.update(dict(iter_lmdb(shard)))
    with Archive(out) as reader:
        assert len(reader.shard_paths) == 3
        for pid in release.patch_ids:
            for key in (pid, release.s1_names[pid], f"{pid}_reference_map"):
                assert reader.get(key) == direct[key]
        with pytest.raises(KeyError, match="nope"):
            reader.get("nope")
        assert sorted(reader.keys()) == sorted(direct)


def test_written_geotiffs_follow_the_release_conventions(tmp_path):
    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    s1 = "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57"
    assert product_of(pid) == "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    assert patch_folder(tmp_path, "S1", s1) == tmp_path / "BigEarthNet-S1" / "S1B_IW_GRDH_1SDV_20170612T165809" / s1
    ulx, uly = 300000 + 1200 * 26, 5400000 - 1200 * 57  # SPEC section 2: x 331200..332400, y 5330400..5331600
    bands = {
        "B02": np.full((120, 120), 7, np.uint16),
        "B05": np.full((60, 60), 8, np.uint16),
        "B01": np.full((20, 20), 9, np.uint16),
    }
    folder = write_patch(tmp_path, "S2", pid, bands, "EPSG:32633", ulx, uly)
    assert folder == tmp_path / "BigEarthNet-S2" / product_of(pid) / pid
    for band, resolution in (("B02", 10), ("B05", 20), ("B01", 60)):
        with rasterio.open(folder / f"{pid}_{band}.tif") as dataset:
            assert dataset.transform == Affine(resolution, 0, 331200, 0, -resolution, 5331600)
            assert dataset.bounds == (331200, 5330400, 332400, 5331600)
            assert dataset.crs.to_epsg() == 32633
            assert dataset.compression is None and dataset.nodata is None and not dataset.profile["tiled"]
    write_patch(
        tmp_path, "reference_map", pid, {"reference_map": np.full((120, 120), 311, np.uint16)}, "EPSG:32633", ulx, uly
    )
    path = tmp_path / "Reference_Maps" / product_of(pid) / pid / f"{pid}_reference_map.tif"
    with rasterio.open(path) as dataset:
        assert dataset.compression.name.lower() == "deflate" and dataset.nodata == 0
        assert dataset.dtypes == ("uint16",) and int(dataset.read(1)[0, 0]) == 311
