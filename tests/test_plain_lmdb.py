"""Every command on the reBEN LMDB users already hold (issue 21).

Two LMDBs, built once for the module from a small learnable archive (train/validation/test,
three patches flagged for snow or cloud):

* ``without_maps``: what ConfigILM users hold -- ``BigEarthNet-V2-LMDB/`` with S1 and S2 values
  only (no ``*_reference_map`` keys, no metadata inside) and reBEN's two metadata files beside it;
* ``with_maps``: ``reben merge`` of the archive: S1, S2 and reference maps, the metadata files
  copied inside the LMDB directory.

Each command runs on both; the metadata is found by itself (announced in one line) or given with
``--metadata``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format import codec
from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE
from reben_tools.format.metadata import read_metadata, write_metadata
from reben_tools.format.reader import iter_lmdb
from reben_tools.format.shards import write_lmdb
from reben_tools.format.sources import SourceError, open_archive_source
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.release.archive_tools import merge_archive

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTS = {"train": 14, "validation": 6, "test": 6}
FLAGGED = 3
CPU = ["--device", "cpu", "--workers", "0", "-q"]
KINDS = ("without_maps", "with_maps")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def one_error_line(result, code: int = 1) -> str:
    """The command failed with ``code`` and printed exactly one ``error:`` line (returned)."""
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    facts = build_learnable_archive(tmp_path_factory.mktemp("plain") / "archive", counts=COUNTS, shards=2)
    root = facts["root"]
    table = read_metadata([root / METADATA_FILE, root / FLAGGED_METADATA_FILE])
    rows = table.to_pylist()
    for i, row in enumerate([r for r in rows if r["split"] == "train"][:FLAGGED]):  # reBEN's snow/cloud file
        row["contains_seasonal_snow" if i == 0 else "contains_cloud_or_shadow"] = True
    assert write_metadata(root, pa.Table.from_pylist(rows, schema=table.schema)) == (len(rows) - FLAGGED, FLAGGED)
    return facts


@pytest.fixture(scope="module")
def with_maps(archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("with_maps") / "BigEarthNet-V2-LMDB"
    merge_archive(archive["root"], out)
    return out


@pytest.fixture(scope="module")
def without_maps(with_maps, tmp_path_factory) -> Path:
    """ConfigILM's layout: the LMDB of S1+S2 values, reBEN's metadata files beside it."""
    folder = tmp_path_factory.mktemp("without_maps")
    items = [(k, v) for k, v in iter_lmdb(with_maps) if not k.endswith("_reference_map")]
    write_lmdb(folder / "BigEarthNet-V2-LMDB", items)
    for name in (METADATA_FILE, FLAGGED_METADATA_FILE):
        shutil.copyfile(with_maps / name, folder / name)
    return folder / "BigEarthNet-V2-LMDB"


@pytest.fixture(params=KINDS)
def lmdb_dir(request) -> Path:
    return request.getfixturevalue(request.param)


def metadata_args(lmdb: Path) -> list[str]:
    folder = lmdb if (lmdb / METADATA_FILE).is_file() else lmdb.parent
    return ["--metadata", str(folder / METADATA_FILE), "--metadata", str(folder / FLAGGED_METADATA_FILE)]


@pytest.fixture(scope="module")
def trained(archive, with_maps, without_maps, tmp_path_factory) -> dict:
    """One short `reben train` run per LMDB (metadata found by itself), shared by the train/evaluate/probe tests."""
    runs = {}
    for kind, plain in (("without_maps", without_maps), ("with_maps", with_maps)):
        out = tmp_path_factory.mktemp("train") / kind
        result = invoke(
            "train", "--archive", plain, "--bands", "ALL", "--model", "resnet_micro", "--epochs", "2",
            "--batch-size", "8", "--max-steps", "2", "--out", out, *CPU,
        )  # fmt: skip
        runs[kind] = (out, ok(result))
    return runs


@pytest.fixture(scope="module")
def pretrained(with_maps, without_maps, tmp_path_factory) -> dict:
    runs = {}
    for kind, plain in (("without_maps", without_maps), ("with_maps", with_maps)):
        out = tmp_path_factory.mktemp("pretrain") / kind
        result = invoke(
            "pretrain", "--archive", plain, *metadata_args(plain), "--model", "croma_micro", "--batch-size", "4",
            "--max-steps", "2", "--warmup-steps", "1", "--out", out, *CPU,
        )  # fmt: skip
        runs[kind] = (out, ok(result))
    return runs


# ---- naming the archive ------------------------------------------------------------------------


def test_three_ways_to_name_an_archive(archive, with_maps, without_maps, tmp_path):
    own = open_archive_source(archive["root"])
    assert (own.kind, own.origin, own.announcement) == ("archive", "archive", None)
    beside = open_archive_source(without_maps)  # the release layout: metadata next to the LMDB folder
    assert (beside.kind, beside.origin) == ("lmdb", "beside")
    assert beside.metadata == (without_maps.parent / METADATA_FILE, without_maps.parent / FLAGGED_METADATA_FILE)
    assert beside.announcement == (
        f"{without_maps}: plain reBEN LMDB; metadata found beside it: "
        f"{without_maps.parent / METADATA_FILE}, {without_maps.parent / FLAGGED_METADATA_FILE}"
    )
    inside = open_archive_source(with_maps)  # `reben merge` puts them inside
    assert inside.metadata[0] == with_maps / METADATA_FILE
    given = open_archive_source(without_maps, [without_maps.parent / METADATA_FILE])
    assert (given.origin, given.announcement) == ("given", None)
    alone = tmp_path / "alone"
    shutil.copytree(without_maps, alone)
    with pytest.raises(SourceError, match="needs its metadata: give --metadata"):
        open_archive_source(alone)
    error = one_error_line(invoke("show", alone, "x", "--out", tmp_path / "x.png"), code=2)
    assert str(alone) in error and "--metadata metadata.parquet" in error
    error = one_error_line(invoke("verify", tmp_path, "-q"), code=2)
    assert "neither a reben-tools archive (manifest.json) nor an LMDB directory (data.mdb)" in error


def test_records_find_the_same_source_and_refuse_a_changed_metadata_file(without_maps, tmp_path):
    from reben_tools.format.sources import source_from_record

    folder = tmp_path / "copy"
    shutil.copytree(without_maps.parent, folder)
    source = open_archive_source(folder / without_maps.name)
    record = source.record()
    assert [m["path"] for m in record["metadata"]] == [str(p.resolve()) for p in source.metadata]
    again = source_from_record(record)
    assert again.identity == source.identity and again.path == source.path
    table = pq.read_table(folder / METADATA_FILE)
    pq.write_table(table.slice(1), folder / METADATA_FILE)
    with pytest.raises(SourceError, match=r"metadata.parquet: changed since the run recorded it"):
        source_from_record(record)


# ---- verify ------------------------------------------------------------------------------------


def test_verify_says_none_or_all_reference_maps_and_exits_0(lmdb_dir, archive):
    output = ok(invoke("verify", lmdb_dir, "-q"))
    n = sum(COUNTS.values())
    line = next(line for line in output.splitlines() if "reference maps:" in line)
    if (lmdb_dir / METADATA_FILE).exists():  # the merge of the archive
        assert line == f"{lmdb_dir}: reference maps: all {n}"
    else:
        assert line.startswith(f"{lmdb_dir}: reference maps: none ({n} patches, S1/S2 values only")
    assert f"{lmdb_dir}: OK (1 shard(s)" in output
    assert ok(invoke("verify", lmdb_dir, *metadata_args(lmdb_dir), "-q")).count("reference maps:") == 1


def test_verify_flags_a_map_removed_from_the_lmdb_with_maps(with_maps, archive, tmp_path):
    copy = tmp_path / "BigEarthNet-V2-LMDB"
    shutil.copytree(with_maps, copy)
    gone = archive["patch_ids"]["test"][0] + "_reference_map"
    env = lmdb.open(str(copy), lock=False)
    with env.begin(write=True) as txn:
        assert txn.delete(gone.encode())
    env.close()
    result = invoke("verify", copy, "-q")
    assert result.exit_code == 1, result.output
    faults = [line for line in result.output.splitlines() if line.startswith("FAULT")]
    n = sum(COUNTS.values())
    assert faults == [f"FAULT shard {copy.name}: reference maps: {n - 1} of {n} present, 1 missing: {gone}"]


# ---- training, evaluation, probing -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_train_records_the_source_and_resume_and_evaluate_find_it(kind, trained, with_maps, without_maps, tmp_path):
    lmdb = {"with_maps": with_maps, "without_maps": without_maps}[kind]
    out, output = trained[kind]
    assert f"{lmdb}: plain LMDB without manifest statistics; normalising with reBEN's published 120_nearest" in output
    config = json.loads((out / "config.json").read_text())
    record = config["source"]
    assert record["kind"] == "lmdb" and record["path"] == str(lmdb.resolve())
    assert [Path(m["path"]).name for m in record["metadata"]] == [METADATA_FILE, FLAGGED_METADATA_FILE]
    assert all(len(m["sha256"]) == 64 for m in record["metadata"])
    summary = json.loads(output[output.index("{") :])
    assert summary["status"] == "stopped_at_max_steps"
    run = tmp_path / "run"
    shutil.copytree(out, run)
    resumed = ok(invoke("train", "--resume", "--out", run, "--max-steps", "3", *CPU))
    assert json.loads(resumed[resumed.index("{") :])["steps"] == 3
    evaluated = ok(invoke("evaluate", "--checkpoint", run / "checkpoints" / "last.pt", "--out", tmp_path / "e", *CPU))
    assert f"reading the run's archive {lmdb.resolve()}" in evaluated
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["samples"] == COUNTS["test"]
    probed = invoke(
        "probe", "--archive", lmdb, "--checkpoint", run / "checkpoints" / "last.pt", "--probes", "linear",
        "--out", tmp_path / "p", *CPU,
    )  # fmt: skip
    ok(probed)
    alone = ok(
        invoke(
            "probe",
            "--checkpoint",
            run / "checkpoints" / "last.pt",
            "--probes",
            "linear",
            "--out",
            tmp_path / "q",
            *CPU,
        )
    )  # no --archive: the run's record names it, as for evaluate
    assert f"reading the run's archive {lmdb.resolve()}" in alone
    given, found = (json.loads((tmp_path / d / "probe.json").read_text())["runs"][0] for d in ("p", "q"))
    scores = [{k: v for k, v in r["probes"]["linear"].items() if k != "fit_seconds"} for r in (found, given)]
    assert scores[0] == scores[1]
    assert scores[0]["samples"] == COUNTS["test"] and scores[0]["average_precision_macro"] > 0


def test_cutmix_lp_refuses_in_one_line_without_maps_and_runs_with_them(without_maps, with_maps, tmp_path):
    common = ["--bands", "S2", "--model", "resnet_micro", "--batch-size", "8", "--max-steps", "1", "--mix", "cutmix-lp"]
    error = one_error_line(invoke("train", "--archive", without_maps, *common, "--out", tmp_path / "a", *CPU))
    first = read_metadata([without_maps.parent / METADATA_FILE]).column("patch_id")[0].as_py()
    assert error == (
        f"error: {without_maps}: --mix cutmix-lp needs reference maps, and this LMDB holds none "
        f"({first}_reference_map is absent: S1/S2 values only); use --mix cutmix, or an LMDB with the maps"
    )
    ok(invoke("train", "--archive", with_maps, *common, "--no-test", "--out", tmp_path / "b", *CPU))


def test_mask_targets_refuse_in_one_line_without_maps(without_maps, with_maps):
    with pytest.raises(ValueError, match=r"return_mask needs reference maps, and this LMDB holds none") as info:
        ReBENDataset(without_maps, return_mask=True)
    assert str(without_maps) in str(info.value) and "\n" not in str(info.value)
    with ReBENDataset(with_maps, return_mask=True) as ds:
        assert ds[0]["mask"].shape == (120, 120)


def test_pretrain_embed_and_retrieve(lmdb_dir, pretrained, tmp_path):
    kind = "with_maps" if (lmdb_dir / METADATA_FILE).exists() else "without_maps"
    run, _ = pretrained[kind]
    assert json.loads((run / "config.json").read_text())["source"]["kind"] == "lmdb"
    resumed = ok(invoke("pretrain", "--resume", "--out", run, "--max-steps", "3", *CPU))
    assert json.loads(resumed[resumed.index("{") :])["steps"] == 3
    emb = tmp_path / "emb.parquet"
    ok(invoke("embed", "--archive", lmdb_dir, "--encoder", run, "--out", emb, *CPU))
    assert pq.read_metadata(emb).num_rows == sum(COUNTS.values()) - FLAGGED
    retrieved = ok(
        invoke("retrieve", "--archive", lmdb_dir, "--encoder", run, "--out", tmp_path / "r", "-q", "--workers", "0")
    )
    assert json.loads(retrieved[retrieved.index("{") :])["pairs"] == COUNTS["test"]
    assert (tmp_path / "r" / "embeddings.parquet").is_file() and (tmp_path / "r" / "retrieval.json").is_file()


# ---- show, subset, split, audit ------------------------------------------------------------------


def test_show_draws_the_map_panel_only_when_the_lmdb_holds_maps(lmdb_dir, archive, tmp_path):
    patch = archive["patch_ids"]["validation"][0]
    out = tmp_path / "patch.png"
    output = ok(invoke("show", lmdb_dir, patch, "--out", out))
    with_map = (lmdb_dir / METADATA_FILE).exists()
    last = output.splitlines()[-1]
    assert last == f"{out}: {patch}" + ("" if with_map else " (no reference map in the archive: drawn without)")
    import matplotlib.image as mpimg

    assert mpimg.imread(out).ndim == 3


def test_subset_split_and_audit(lmdb_dir, archive, tmp_path):
    n, flagged = sum(COUNTS.values()), FLAGGED
    sub = ok(invoke("subset", lmdb_dir, "--fraction", "0.5", "--out", tmp_path / "s.parquet"))
    assert f"{lmdb_dir}: {n - flagged} patches of {METADATA_FILE}, {FLAGGED_METADATA_FILE}; {flagged} flagged" in sub
    rows = pq.read_table(tmp_path / "s.parquet")
    assert rows.column("split").to_pylist().count("test") == COUNTS["test"]
    split = ok(invoke("split", lmdb_dir, *metadata_args(lmdb_dir), "--out", tmp_path / "split.parquet"))
    assert (
        f"{lmdb_dir}: splitting all {n} patches of {METADATA_FILE}, {FLAGGED_METADATA_FILE} (including {flagged}"
        in split
    )
    assert pq.read_table(tmp_path / "split.parquet").num_rows == n
    audit = ok(invoke("audit", lmdb_dir, "--out", tmp_path / "audit", "--permutations", "2", "--no-figures", "-q"))
    assert f"auditing all {n} patches" in audit and (tmp_path / "audit" / "report.json").is_file()


def test_split_of_an_archive_folder_says_which_rows_and_why(archive, tmp_path):
    root = archive["root"]
    n = sum(COUNTS.values())
    output = ok(invoke("split", root, "--out", tmp_path / "all.parquet"))
    assert (
        f"{root}: splitting all {n} patches of patches.parquet (including {FLAGGED} flagged for snow/cloud/shadow, "
        f"which reBEN splits too; give {root / METADATA_FILE} alone as INPUT to leave them out)"
    ) in output
    ok(invoke("split", root / METADATA_FILE, "--out", tmp_path / "clean.parquet"))
    assert pq.read_table(tmp_path / "clean.parquet").num_rows == n - FLAGGED
    sub = ok(invoke("subset", root, "--fraction", "1", "--out", tmp_path / "s.parquet"))
    assert f"{n - FLAGGED} patches of {METADATA_FILE}, {FLAGGED_METADATA_FILE}; {FLAGGED} flagged" in sub


# ---- merge and export-tiff ---------------------------------------------------------------------------


def test_merge_and_export_tiff(lmdb_dir, archive, tmp_path):
    merged = tmp_path / "merged"
    ok(invoke("merge", lmdb_dir, merged, "-q"))
    assert dict(iter_lmdb(merged)) == dict(iter_lmdb(lmdb_dir))
    assert open_archive_source(merged).metadata[0] == merged / METADATA_FILE
    out = tmp_path / "tiff"
    output = ok(invoke("export-tiff", lmdb_dir, out, "-q"))
    with_map = (lmdb_dir / METADATA_FILE).exists()
    assert ("no Reference_Maps/ written" in output) != with_map
    # georeferenced from the patch ids' MGRS tiles exactly as the archive's patches.parquet places them
    ok(invoke("export-tiff", archive["root"], tmp_path / "from-archive", "-q"))
    mine = sorted(p.relative_to(out) for p in out.rglob("*.tif"))
    theirs = sorted(p.relative_to(tmp_path / "from-archive") for p in (tmp_path / "from-archive").rglob("*.tif"))
    assert mine == (theirs if with_map else [p for p in theirs if p.parts[0] != "Reference_Maps"])
    for relative in mine[:: max(1, len(mine) // 12)]:
        with rasterio.open(out / relative) as a, rasterio.open(tmp_path / "from-archive" / relative) as b:
            assert a.crs == b.crs and a.transform == b.transform
            assert np.array_equal(a.read(), b.read())


# ---- statistics ----------------------------------------------------------------------------------------


def test_an_unknown_band_set_is_refused_in_one_line(without_maps, archive, tmp_path):
    folder = tmp_path / "odd"
    items = dict(iter_lmdb(without_maps))
    first = read_metadata([without_maps.parent / METADATA_FILE]).column("patch_id")[0].as_py()
    arrays = codec.decode_value(first, items[first])
    arrays["B10"] = arrays["B09"].copy()  # a band reBEN does not have (and has no statistics for)
    items[first] = codec.encode_tensors(arrays)
    write_lmdb(folder / "BigEarthNet-V2-LMDB", items.items())
    for name in (METADATA_FILE, FLAGGED_METADATA_FILE):
        shutil.copyfile(without_maps.parent / name, folder / name)
    lmdb = folder / "BigEarthNet-V2-LMDB"
    error = one_error_line(invoke("show", lmdb, first, "--out", tmp_path / "x.png"))
    assert error.startswith(f"error: {lmdb}: value '{first}' holds bands [") and "'B10'" in error
    assert "not reBEN's" in error and "120_nearest" in error
    error = one_error_line(
        invoke("train", "--archive", lmdb, "--bands", "S2", "--model", "resnet_micro", "--out", tmp_path / "t", *CPU)
    )
    assert "'B10'" in error
    with pytest.raises(ValueError, match="a plain LMDB has no manifest statistics; use normalisation='published'"):
        ReBENDataset(without_maps, normalisation="manifest")
