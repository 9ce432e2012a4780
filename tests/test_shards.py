"""Atomic, deterministic LMDB shards, the reBEN metadata files and the Archive reader."""

import hashlib

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reben_tools.format.codec import encode_reference_map
from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE, ArchiveError
from reben_tools.format.metadata import METADATA_SCHEMA, read_metadata, write_metadata
from reben_tools.format.reader import Archive
from reben_tools.format.shards import ContentDigest, read_shard_info, remove_stale_temporaries, write_shard


def items(n, offset=0):
    return {f"key_{i:03d}": encode_reference_map(np.full((120, 120), i + offset, np.uint16)) for i in range(n)}


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_shard_bytes_do_not_depend_on_insertion_order(tmp_path):
    data = items(20)
    a = write_shard(tmp_path / "a", "s", data)
    b = write_shard(tmp_path / "b", "s", list(reversed(list(data.items()))))
    assert a == b
    assert md5(tmp_path / "a/s/data.mdb") == md5(tmp_path / "b/s/data.mdb")
    assert a.entries == 20 and a.value_bytes == 20 * 28_880


def test_shard_is_plain_lmdb_with_sorted_keys_and_info(tmp_path):
    data = items(5)
    info = write_shard(tmp_path, "shard-0", data, rows=pa.table({"patch_id": ["p"]}))
    env = lmdb.open(str(tmp_path / "shard-0"), readonly=True, lock=False)
    with env.begin() as txn:
        pairs = [(k.decode(), v) for k, v in txn.cursor()]
    env.close()
    assert [k for k, _ in pairs] == sorted(data)
    assert all(v == data[k] for k, v in pairs)
    digest = ContentDigest()
    for k, v in pairs:
        digest.update(k.encode(), v)
    assert info.sha256 == digest.hexdigest()
    assert read_shard_info(tmp_path / "shard-0") == info
    assert pq.read_table(tmp_path / "shard-0" / "rows.parquet").column("patch_id").to_pylist() == ["p"]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-0"]  # no temporaries left


def test_conflicting_duplicate_key_leaves_nothing(tmp_path):
    value = items(1)["key_000"]
    with pytest.raises(ArchiveError, match="key 'k' given twice"):
        write_shard(tmp_path, "s", [("k", value), ("k", value[:-1] + b"\x01")])
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_removed(tmp_path):
    (tmp_path / ".tmp-s-dead").mkdir()
    write_shard(tmp_path, "s", items(1))
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".tmp-s-dead"]
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def _row(pid, split="train", snow=False, cloud=False):
    return {
        "patch_id": pid,
        "labels": ["Arable land", "Mixed forest"],
        "split": split,
        "country": "Austria",
        "s1_name": "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57",
        "s2v1_name": None,
        "contains_seasonal_snow": snow,
        "contains_cloud_or_shadow": cloud,
        "extra": 1,
    }


def test_metadata_files_split_by_flags_sorted_with_exact_schema(tmp_path):
    rows = [_row("b"), _row("a", "test"), _row("c", snow=True), _row("d", cloud=True)]
    assert write_metadata(tmp_path, rows) == (2, 2)
    clean = pq.read_table(tmp_path / METADATA_FILE)
    flagged = pq.read_table(tmp_path / FLAGGED_METADATA_FILE)
    assert clean.schema.remove_metadata() == METADATA_SCHEMA
    assert clean.column("patch_id").to_pylist() == ["a", "b"]
    assert flagged.column("patch_id").to_pylist() == ["c", "d"]
    assert read_metadata([tmp_path / METADATA_FILE, tmp_path / FLAGGED_METADATA_FILE]).num_rows == 4


@pytest.mark.parametrize(
    "rows, message",
    [
        ([_row("a"), _row("a")], r"repeats patch id\(s\) \['a'\]"),
        ([_row("a", split="training")], "unknown split value"),
        ([{"patch_id": "a"}], "lack column"),
    ],
)
def test_bad_metadata_rejected_and_nothing_written(tmp_path, rows, message):
    with pytest.raises(ArchiveError, match=message):
        write_metadata(tmp_path, rows)
    assert list(tmp_path.iterdir()) == []


def test_archive_reads_plain_lmdb_directory(tmp_path):
    data = items(3)
    write_shard(tmp_path, "lmdb", data)
    archive = Archive(tmp_path / "lmdb")
    assert archive.get("key_002") == data["key_002"]
    assert sorted(archive.keys()) == sorted(data)
    with pytest.raises(KeyError, match="key 'nope' not found"):
        archive.get("nope")
    with pytest.raises(ArchiveError, match="neither a reben-tools archive"):
        Archive(tmp_path)
