"""Every command safe and self-explaining (issue 10): version, one progress flag, no archive
overwrites, `reben split` with the archive's own tile side and loud empty-split warnings."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main
from typer.testing import CliRunner

from reben_tools import __version__
from reben_tools.cli import app
from reben_tools.commands.outputs import ARCHIVE_WRITERS, guarded_output
from reben_tools.format.layout import FORMAT_NAME, MANIFEST_FILE, METADATA_FILE, PATCHES_FILE
from reben_tools.format.outputs import ArchiveOverwriteError, check_output_path, find_archive
from reben_tools.splits.audit import run_audit
from reben_tools.splits.patches import load_patches
from reben_tools.splits.strategies import empty_split_warnings, split_file

PRODUCT = "S2A_MSIL2A_20170613T104021_N0205_R008_T31UGR"
runner = CliRunner()


def _commands():
    return typer.main.get_command(app).commands


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"reben-tools {__version__}\n"


def test_every_command_with_progress_bars_takes_quiet_and_shows_no_other_progress_flag():
    """One convention: -q/--quiet; build's old --no-progress survives only as a hidden alias."""
    with_bars = 0
    for name, command in _commands().items():
        visible = {opt for p in command.params if not getattr(p, "hidden", False) for opt in p.opts}
        hidden = {opt for p in command.params if getattr(p, "hidden", False) for opt in p.opts}
        assert not any("progress" in opt for opt in visible), (name, visible)
        assert hidden <= {"--no-progress"}, (name, hidden)
        if "--quiet" in visible or hidden:
            assert {"--quiet", "-q"} <= visible, name
            with_bars += 1
    assert with_bars >= 10  # verify, merge, export-tiff, encode, build, demo, audit, train, evaluate, probe


def test_every_output_of_a_command_goes_through_the_archive_guard():
    """Any parameter named out* of a command not made to write an archive has the guard as callback."""
    checked = []
    for name, command in _commands().items():
        for param in command.params:
            if param.name.startswith("out") and name not in ARCHIVE_WRITERS:
                assert getattr(param.callback, "__wrapped__", param.callback) is guarded_output, (name, param.name)
                checked.append(name)
    assert {"split", "audit", "merge", "export-tiff", "train", "evaluate", "probe"} <= set(checked)


def _archive(tmp_path, n=10, side=12_600.0, products=(PRODUCT,)):
    """An archive directory: manifest.json, metadata.parquet and patches.parquet of a dense n x n grid."""
    from reben_tools.geo.split_rule import reben_split

    archive = tmp_path / "archive"
    (archive / "shards").mkdir(parents=True)
    (archive / MANIFEST_FILE).write_text(json.dumps({"format": FORMAT_NAME}))
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    xs, ys = xs.ravel(), ys.ravel()
    ids = [f"{p}_{x:02d}_{y:02d}" for p in products for x, y in zip(xs, ys, strict=True)]
    split = list(reben_split(np.tile(xs, len(products)), np.tile(ys, len(products)), side))
    pq.write_table(pa.table({"patch_id": ids, "split": split}), archive / METADATA_FILE)
    pq.write_table(
        pa.table({"patch_id": ids, "split": split, "tile_side_m": [side] * len(ids)}), archive / PATCHES_FILE
    )
    return archive


def test_guard_refuses_the_archive_and_its_own_files_and_allows_new_paths(tmp_path):
    archive = _archive(tmp_path)
    for path in (archive, archive / METADATA_FILE, archive / "report.json", archive / "shards" / "s0" / "data.mdb"):
        with pytest.raises(ArchiveOverwriteError, match="refusing"):
            check_output_path(path)
    assert find_archive(archive / "audit") is None
    check_output_path(archive / "audit")  # a new folder inside the archive directory
    check_output_path(tmp_path / "with_split.parquet")


def test_split_refuses_to_overwrite_the_archive_metadata_with_one_line(tmp_path):
    archive = _archive(tmp_path)
    before = (archive / METADATA_FILE).read_bytes()
    result = runner.invoke(app, ["split", str(archive / METADATA_FILE), "--out", str(archive / METADATA_FILE)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "refusing to overwrite" in result.output and "metadata.parquet" in result.output
    assert (archive / METADATA_FILE).read_bytes() == before
    with pytest.raises(ArchiveOverwriteError):
        split_file(archive / METADATA_FILE, archive / PATCHES_FILE)
    with pytest.raises(ArchiveOverwriteError):
        run_audit(archive, archive)
    for args in (
        ["audit", str(archive), "--out", str(archive)],
        ["merge", str(archive), str(archive)],
        ["export-tiff", str(archive), str(archive / "shards")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "refusing" in result.output, args


def test_split_of_metadata_beside_patches_gives_the_archives_own_split(tmp_path):
    """The README example: `reben split ARCHIVE/metadata.parquet --strategy reben` reproduces the archive's split."""
    archive = _archive(tmp_path)
    out = tmp_path / "with_split.parquet"
    result = runner.invoke(app, ["split", str(archive / METADATA_FILE), "--strategy", "reben", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tile side 12,600 m, from " + str(archive / PATCHES_FILE) in result.output
    assert (
        pq.read_table(out).column("split").to_pylist()
        == pq.read_table(archive / METADATA_FILE).column("split").to_pylist()
    )
    # 10 x 10 patches, side 12,600 m: centre distances to the nearer border along one axis are
    # 600, 1800, 3000, 4200, 5400, 6000, 4800, 3600, 2400, 1200 m; train below 1,845.6 m (3 of 10
    # indices), validation below 3,150 m (2 more): test 5 x 5 = 25, train 100 - 7 x 7 = 51, validation 24
    split = pq.read_table(out).column("split").to_pylist()
    assert (split.count("train"), split.count("validation"), split.count("test")) == (51, 24, 25)
    assert "WARNING" not in result.output


def test_tile_side_without_patches_parquet_comes_from_the_tile_grid(tmp_path):
    archive = _archive(tmp_path)
    alone = tmp_path / "alone.parquet"
    alone.write_bytes((archive / METADATA_FILE).read_bytes())
    patches = load_patches(alone)
    assert set(patches.tile_side_m) == {10 * 1200 + 600.0}
    assert patches.tile_side_source == "the patch grid of each MGRS tile"
    full = _archive(tmp_path / "full", n=91, side=109_800.0)
    assert set(load_patches(full / METADATA_FILE).tile_side_m) == {109_800.0}


def test_empty_validation_or_test_is_warned_loudly(tmp_path):
    archive = _archive(tmp_path)
    out = tmp_path / "full_tile.parquet"
    result = runner.invoke(app, ["split", str(archive / METADATA_FILE), "--out", str(out), "--tile-side-m", "109800"])
    assert result.exit_code == 0
    assert "WARNING: " in result.output and "NO validation patches (100 train)" in result.output
    assert "NO test patches (100 train)" in result.output
    assert empty_split_warnings({"train": 5, "validation": 1, "test": 1}) == []
