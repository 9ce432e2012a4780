"""Label-fraction subsets (issue 11): the draw rule, `reben subset`, the dataset's and `reben train`'s --train-fraction."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.labels import ALPHABETICAL_ORDER
from reben_tools.format.metadata import METADATA_SCHEMA
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.splits.subsets import SubsetError, fraction_indices, labels_matrix, subset_table

COUNTS = {"train": 40, "validation": 8, "test": 8}


def key(seed: int, pid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest(), "big")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("subset") / "ARCHIVE", counts=COUNTS, shards=1)


def random_labels(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    prevalence = np.r_[[0.002, 0.004], np.linspace(0.02, 0.4, 17)]
    y = rng.random((n, 19)) < prevalence
    y[~y.any(1), 18] = True
    return [f"P{i:05d}" for i in range(n)], y


def dataset_ids(root, **kwargs) -> list[str]:
    dataset = ReBENDataset(root, bands="S1", **kwargs)
    try:
        return dataset.patch_ids
    finally:
        dataset.archive.close()


# --------------------------------------------------------------------------- the draw rule


def test_hand_worked_draw():
    # 10 rows, classes A (rows 0-7), B (rows 8, 9), C (row 3 only; row 3 also has A)
    ids = [f"S2A_X_{i:02d}" for i in range(10)]
    y = np.zeros((10, 3), bool)
    y[0:8, 0] = True
    y[8:10, 1] = True
    y[3, 2] = True
    k = {i: key(0, ids[i]) for i in range(10)}
    # coverage, rarest first: C -> row 3; B -> the smaller key of rows 8, 9; A is covered by row 3.
    b = min((8, 9), key=k.get)
    # fraction 0.2 -> n = 2: the two coverage rows are the subset
    assert fraction_indices(ids, y, 0.2, seed=0, names=["A", "B", "C"]).tolist() == sorted([3, b])
    # fraction 0.5 -> n = 5. Wants after coverage: subset A 0.5*8-1 = 3, B 0.5*2-1 = 0; rest A 4, B 1;
    # room: subset 3, rest 5. B has the fewest unplaced rows (1): the other B row goes to the rest
    # (0 < 1). Then A's 7 rows in key order: rest (3<4), subset (3=3, rooms 3=3), rest (2<3),
    # subset (2=2, rooms 2=2), rest (1<2), subset (1=1, rooms 1=1), rest (subset full).
    a = sorted((0, 1, 2, 4, 5, 6, 7), key=k.get)
    assert fraction_indices(ids, y, 0.5, seed=0, names=["A", "B", "C"]).tolist() == sorted([3, b, a[1], a[3], a[5]])


def test_size_coverage_determinism_and_order_independence():
    ids, y = random_labels(2000)
    rows = fraction_indices(ids, y, 0.1, seed=0)
    assert len(rows) == 200
    assert (y[rows].sum(0) > 0).tolist() == (y.sum(0) > 0).tolist()  # every class present keeps a positive
    assert fraction_indices(ids, y, 0.1, seed=0).tolist() == rows.tolist()
    perm = np.random.default_rng(5).permutation(len(ids))
    permuted = fraction_indices([ids[i] for i in perm], y[perm], 0.1, seed=0)
    assert sorted(ids[perm[i]] for i in permuted) == sorted(ids[i] for i in rows)
    assert fraction_indices(ids, y, 0.1, seed=1).tolist() != rows.tolist()
    # stratified: every class's share is within 0.5 percentage points of the full split's, except the
    # most common one, placed last when the parts are nearly full (a uniform draw of 200 has a
    # standard deviation of 3.5 points at its prevalence)
    gap = np.abs(y[rows].mean(0) - y.mean(0))
    assert gap[:-1].max() < 0.005 and gap[-1] < 0.03
    assert fraction_indices(ids, y, 1.0).tolist() == list(range(2000))
    # 1% of 2000 = 20 rows; the two rare classes (4 and 8 positives) are covered
    small = fraction_indices(ids, y, 0.01, seed=0)
    assert len(small) == 20 and y[small, 0].any() and y[small, 1].any()


def test_coverage_can_exceed_the_target_in_tiny_splits():
    ids = [f"P{i}" for i in range(19)]
    y = np.eye(19, dtype=bool)  # every class has exactly one positive
    assert fraction_indices(ids, y, 0.1).tolist() == list(range(19))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction(fraction):
    with pytest.raises(SubsetError, match="fraction must be in"):
        fraction_indices(["a"], np.ones((1, 19)), fraction)


# --------------------------------------------------------------------------- reben subset


def test_subset_command_keeps_schema_and_other_splits(archive, tmp_path):
    out = tmp_path / "subset.parquet"
    report = tmp_path / "labels.json"
    result = CliRunner().invoke(
        app,
        [
            "subset",
            str(archive["root"]),
            "--fraction",
            "0.25",
            "--seed",
            "3",
            "--out",
            str(out),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.equals(METADATA_SCHEMA)
    full = pq.read_table(archive["root"] / "metadata.parquet")
    train = full.filter(pa.compute.equal(full["split"], "train"))
    expected = fraction_indices(train.column("patch_id").to_pylist(), labels_matrix(train), 0.25, seed=3)
    expected_ids = sorted(train.column("patch_id").to_pylist()[i] for i in expected)
    splits = table.column("split").to_pylist()
    ids = table.column("patch_id").to_pylist()
    assert sorted(p for p, s in zip(ids, splits, strict=True) if s == "train") == expected_ids
    assert len(expected_ids) == 10  # 0.25 * 40
    for split in ("validation", "test"):
        assert sorted(p for p, s in zip(ids, splits, strict=True) if s == split) == sorted(archive["patch_ids"][split])
    dist = json.loads(report.read_text())
    assert dist["patches"] == {"full": 40, "subset": 10}
    sub_labels = [archive["labels"][p] for p in expected_ids]
    for name in ALPHABETICAL_ORDER:
        assert dist["classes"][name]["subset"] == sum(name in ls for ls in sub_labels)
        assert dist["classes"][name]["full"] == sum(name in archive["labels"][p] for p in archive["patch_ids"]["train"])
    assert dist["classes_lost"] == []
    assert "| class | full train (40) | subset (10) |" in result.output
    # the dataset reads the subset file as metadata, and train_fraction draws the same rows
    assert dataset_ids(archive["root"], split="train", metadata=out) == expected_ids
    assert dataset_ids(archive["root"], split="train", train_fraction=0.25, subset_seed=3) == expected_ids
    assert len(dataset_ids(archive["root"], split="test", train_fraction=0.25)) == 8


def test_subset_command_errors(tmp_path):
    bad = tmp_path / "m.parquet"
    pq.write_table(pa.table({"patch_id": ["a"]}), bad)
    result = CliRunner().invoke(app, ["subset", str(bad), "--fraction", "0.1", "--out", str(tmp_path / "o.parquet")])
    assert result.exit_code == 1 and str(bad) in result.output and "missing column" in result.output
    result = CliRunner().invoke(
        app, ["subset", str(tmp_path / "nope"), "--fraction", "0.1", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "no such file" in result.output
    rows = pa.Table.from_pylist(
        [
            {
                "patch_id": "a",
                "labels": ["Pastures"],
                "split": "test",
                "country": "AT",
                "s1_name": "s",
                "s2v1_name": "v",
                "contains_seasonal_snow": False,
                "contains_cloud_or_shadow": False,
            }
        ],
        schema=METADATA_SCHEMA,
    )
    only_test = tmp_path / "t.parquet"
    pq.write_table(rows, only_test)
    result = CliRunner().invoke(
        app, ["subset", str(only_test), "--fraction", "0.1", "--out", str(tmp_path / "o.parquet")]
    )
    assert result.exit_code == 1 and "no 'train' rows" in result.output


def test_subset_table_rejects_unknown_labels():
    table = pa.table({"patch_id": ["a"], "labels": [["Lava"]], "split": ["train"]})
    with pytest.raises(SubsetError, match="'a' has label 'Lava'"):
        subset_table(table, 0.5, source="x.parquet")


# --------------------------------------------------------------------------- reben train --train-fraction


def test_train_with_train_fraction(archive, tmp_path):
    from reben_tools.learn.runtime.config import TrainConfig
    from reben_tools.learn.training.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(
            archive=str(archive["root"]),
            bands="S1",
            model="resnet_micro",
            out=str(tmp_path / "r"),
            epochs=1,
            batch_size=5,
            workers=0,
            device="cpu",
            progress=False,
            evaluate_test=False,
            train_fraction=0.25,
            model_kwargs=dict(stem_width=4, widths=(4, 4, 4, 4)),
        )
        metrics = train(config)
    finally:
        torch.set_num_threads(threads)
    assert metrics["steps"] == 2  # 10 of 40 train patches, batch 5
    from reben_tools.learn.runtime.checkpoints import CheckpointError

    config.train_fraction = 0.5
    with pytest.raises(CheckpointError, match=r"--train-fraction 0.5 \(the run has 0.25\)"):
        train(config, resume=True, given={"train_fraction"})
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["train_fraction"] == 0.25 and stored["subset_seed"] == 0
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(archive["root"]),
            "--out",
            str(tmp_path / "x"),
            "--bands",
            "S1",
            "--model",
            "resnet_micro",
            "--train-fraction",
            "1.5",
        ],
    )
    assert result.exit_code == 1 and "--train-fraction must be a number in (0, 1] (got 1.5)" in result.output
