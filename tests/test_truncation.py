"""A truncated data.mdb is named, never met by SIGBUS (issue 10): size checks before every LMDB
open, in the main process and in DataLoader workers; `reben verify` reports and goes on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from torch.utils.data import DataLoader
from training_archive import build_learnable_archive

from reben_tools.format.envcheck import TruncatedEnvironmentError, check_data_file, lmdb_required_bytes
from reben_tools.format.layout import ArchiveError
from reben_tools.learn.data.batches import collate
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.release.archive_tools import merge_archive, verify_archive
from reben_tools.release.lmdb_verify import verify_lmdb

COUNTS = {"train": 8, "validation": 2, "test": 2}
PAGE = 4096
# (name, function of the file size) -> truncated size: empty, inside meta page 0, between the
# meta pages, exactly the two meta pages, half the file, one page short
CUTS = {
    "empty": lambda n: 0,
    "100B": lambda n: 100,
    "1.5pages": lambda n: PAGE + PAGE // 2,
    "2pages": lambda n: 2 * PAGE,
    "half": lambda n: n // 2,
    "one-page-short": lambda n: n - PAGE,
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_learnable_archive(tmp_path_factory.mktemp("trunc") / "archive", COUNTS, shards=2)["root"]


def _copy(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    shutil.copytree(pristine, root)
    return root


def _truncate(data_file: Path, cut: str) -> int:
    size = CUTS[cut](data_file.stat().st_size)
    os.truncate(data_file, size)
    return size


def test_required_bytes_agree_with_lmdb_itself(pristine):
    for shard in sorted((pristine / "shards").iterdir()):
        env = lmdb.open(str(shard), readonly=True, lock=False)
        try:
            expected = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        finally:
            env.close()
        assert lmdb_required_bytes(shard / "data.mdb") == expected
        assert check_data_file(shard) == (shard / "data.mdb").stat().st_size


@pytest.mark.parametrize("cut", list(CUTS))
def test_dataset_names_the_truncated_shard(pristine, tmp_path, cut):
    root = _copy(pristine, tmp_path)
    data_file = root / "shards" / "shard-001" / "data.mdb"
    size = _truncate(data_file, cut)
    with pytest.raises(TruncatedEnvironmentError) as info:
        ReBENDataset(root)
    assert str(data_file) in str(info.value) and f"({size} bytes;" in str(info.value)
    assert info.value.size == size


@pytest.mark.parametrize("cut", ["2pages", "half", "one-page-short"])
def test_truncated_after_construction_raises_on_read_in_the_main_process(pristine, tmp_path, cut):
    root = _copy(pristine, tmp_path)
    ds = ReBENDataset(root, bands="S2")
    assert ds[0]["image"].shape == (12, 120, 120)
    ds.close()  # environments are reopened (and checked) on the next read
    _truncate(root / "shards" / "shard-001" / "data.mdb", cut)
    with pytest.raises(TruncatedEnvironmentError, match="shard-001"):
        ds[1]
    ds.close()


@pytest.mark.parametrize("cut", ["100B", "half", "one-page-short"])
def test_dataloader_workers_raise_instead_of_dying_by_signal(pristine, tmp_path, cut):
    root = _copy(pristine, tmp_path)
    ds = ReBENDataset(root, bands="S2")
    _truncate(root / "shards" / "shard-000" / "data.mdb", cut)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, multiprocessing_context="fork")
    with pytest.raises(Exception, match="truncated LMDB data file") as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert "truncated LMDB data file" in message and "shard-000" in message
    assert "killed by signal" not in message


def test_verify_reports_the_truncated_shard_and_checks_the_others(pristine, tmp_path):
    root = _copy(pristine, tmp_path)
    _truncate(root / "shards" / "shard-000" / "data.mdb", "half")
    report = verify_archive(root)
    assert report.shards == 2
    truncated = [f for f in report.faults if f.shard == "shard-000" and "truncated" in f.reason]
    assert len(truncated) == 1
    assert not [f for f in report.faults if f.shard == "shard-001"]
    # the intact shard was read: 12 patches, shards alternate starting at 1 -> 6 per shard, 3 values each
    assert report.values == 6 * 3


def test_verify_and_merge_commands_exit_cleanly(pristine, tmp_path):
    root = _copy(pristine, tmp_path)
    _truncate(root / "shards" / "shard-001" / "data.mdb", "one-page-short")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for args in (["verify", str(root), "-q"], ["merge", str(root), str(tmp_path / "merged"), "-q"]):
        run = subprocess.run([sys.executable, "-m", "reben_tools.cli", *args], capture_output=True, text=True, env=env)
        assert run.returncode == 1, (args, run.returncode, run.stderr[-500:])
        assert "truncated LMDB data file" in run.stderr and "shard-001" in run.stderr
    with pytest.raises(ArchiveError, match="shard-001"):
        merge_archive(root, tmp_path / "merged2")


def _plain(pristine: Path, tmp_path: Path) -> Path:
    merged = tmp_path / "BigEarthNet-V2-LMDB"
    merge_archive(pristine, merged)
    return merged


@pytest.mark.parametrize("cut", ["empty", "1.5pages", "half", "one-page-short"])
def test_plain_lmdb_is_checked_against_its_meta_pages(pristine, tmp_path, cut):
    plain = _plain(pristine, tmp_path)
    metadata = [plain / "metadata.parquet"]
    assert len(ReBENDataset(plain, metadata=metadata, bands="S2")) == 12
    assert verify_lmdb(plain, metadata).ok
    size = _truncate(plain / "data.mdb", cut)
    with pytest.raises(TruncatedEnvironmentError, match="BigEarthNet-V2-LMDB"):
        ReBENDataset(plain, metadata=metadata)
    report = verify_lmdb(plain, metadata)
    assert [f.reason.split(";")[0] for f in report.faults] == [
        f"{plain / 'data.mdb'}: truncated LMDB data file ({size} bytes"
    ]


def test_truncation_error_pickles_with_its_facts(tmp_path):
    import pickle

    error = TruncatedEnvironmentError(tmp_path / "data.mdb", 10, 8192, "x")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.size, copy.required, copy.path) == (str(error), 10, 8192, tmp_path / "data.mdb")
