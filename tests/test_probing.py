"""The evaluation protocol on embedding files (issue 12): schema checks, probes, the study's table, retrieval."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from figure_layout import assert_readable
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import fbeta_score, hamming_loss, precision_score
from sklearn.multiclass import OneVsRestClassifier
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.labels import ALPHABETICAL_ORDER
from reben_tools.learn.evaluation.embeddings import EmbeddingsError, read_embeddings, write_embeddings
from reben_tools.learn.evaluation.probe_report import per_class_f2_figure
from reben_tools.learn.evaluation.retrieval import rank_summary, retrieval_ranks
from reben_tools.splits.subsets import fraction_indices

DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(n: int = 240, dim: int = DIM, seed: int = 0, noise: float = 0.5):
    """Patch ids, splits (1/2 train, 1/4 validation, 1/4 test), (n, 19) labels, s1/s2 sharing a label signal."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, 19)) < np.linspace(0.05, 0.5, 19)
    y[~y.any(1), 18] = True
    w = rng.normal(size=(19, dim))
    s1 = y @ w + noise * rng.normal(size=(n, dim))
    s2 = y @ w + noise * rng.normal(size=(n, dim))
    ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i % 90:02d}_{i // 90:02d}" for i in range(n)]
    splits = np.array(["train", "train", "validation", "test"] * (n // 4))
    return ids, splits, y, s1.astype(np.float32), s2.astype(np.float32)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    ids, splits, y, s1, s2 = synthetic()
    path = tmp_path_factory.mktemp("emb") / "embeddings.parquet"
    write_embeddings(
        path, ids, splits, y, {"s1": s1, "s2": s2, "joint": (s1 + s2) / 2}, {"name": "synthetic", "dim": DIM}
    )
    return {"path": path, "ids": ids, "splits": splits, "y": y, "s1": s1, "s2": s2}


# --------------------------------------------------------------------------- the file and its checks


def test_round_trip(embeddings, tmp_path):
    emb = read_embeddings(embeddings["path"])
    assert emb.patch_ids == embeddings["ids"] and emb.modalities == ["s1", "s2", "joint"]
    assert emb.encoder == {"name": "synthetic", "dim": DIM}
    assert np.array_equal(emb.vectors["s1"], embeddings["s1"]) and emb.dim("joint") == DIM
    assert np.array_equal(emb.labels != 0, embeddings["y"])
    assert emb.resolve_modality("auto") == "joint"
    # a modality not embedded (None) is absent; null rows are kept as invalid
    s2 = embeddings["s2"].copy()
    s2[:3] = np.nan
    path = tmp_path / "partial.parquet"
    write_embeddings(path, embeddings["ids"], embeddings["splits"], embeddings["y"], {"s1": None, "s2": s2})
    emb = read_embeddings(path)
    assert emb.modalities == ["s2"] and emb.valid["s2"].sum() == 237 and emb.resolve_modality() == "s2"
    assert pq.read_table(path).column("s2").null_count == 3
    with pytest.raises(EmbeddingsError, match=r"partial.parquet: no 's1' embeddings \(the file has \['s2'\]\)"):
        emb.resolve_modality("s1")
    # reading one column only
    only = read_embeddings(embeddings["path"], modalities=["s2"])
    assert list(only.vectors) == ["s2"] and np.array_equal(only.vectors["s2"], embeddings["s2"])
    with pytest.raises(EmbeddingsError, match=r"partial.parquet: no \['s1'\] column \(the file has \['s2'\]\)"):
        read_embeddings(path, modalities=["s1"])


def _table(n: int = 4, **columns) -> pa.Table:
    base = {
        "patch_id": [f"p{i}" for i in range(n)],
        "split": ["train", "test"] * (n // 2),
        "labels": [["Pastures"]] * n,
        "s2": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 3, np.float32)), 3),
    }
    base.update(columns)
    return pa.table({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    "columns, metadata, message",
    [
        (
            {},
            {b"reben_tools.encoder": b'{"dim": 768}'},
            "column 's2' has embeddings of dimension 3, recorded in reben_tools.encoder 768",
        ),
        (
            {"s2": pa.array([[0.0, 1.0, 2.0], [0.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], pa.list_(pa.float32()))},
            None,
            "column 's2' row 1 (patch 'p1') has dimension 2, the first row has 3",
        ),
        (
            {"s2": pa.array(["a", "b", "c", "d"])},
            None,
            "column 's2' has type string; expected fixed_size_list<float32>[D]",
        ),
        ({"s2": None}, None, "no embedding column; expected at least one of ['s1', 's2', 'joint']"),
        ({"labels": None}, None, "missing column(s) ['labels']"),
        (
            {"labels": [["Pastures"], ["Lava"], [], []]},
            None,
            "patch 'p1' has label 'Lava', not one of the 19 reBEN classes",
        ),
        ({"split": ["train", "test", "val", "test"]}, None, "column 'split' has unknown value(s) ['val']"),
        ({"patch_id": ["p0", "p1", "p1", "p3"]}, None, "patch_id 'p1' appears more than once"),
        (
            {"s2": pa.FixedSizeListArray.from_arrays(pa.array(np.r_[np.zeros(9), np.nan, 0, 0].astype(np.float32)), 3)},
            None,
            "column 's2' has 1 row(s) with NaN/inf or null values, first patch 'p3'",
        ),
        (
            {"s2": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12, np.float32)), 3, mask=pa.array([True] * 4))},
            None,
            "every embedding column (['s2']) is null in every row",
        ),
        ({}, {b"reben_tools.encoder": b"{not json"}, "metadata reben_tools.encoder is not JSON"),
    ],
)
def test_schema_errors_name_the_file_and_the_part(tmp_path, columns, metadata, message):
    path = tmp_path / "bad.parquet"
    table = _table(**columns)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path)
    with pytest.raises(EmbeddingsError) as info:
        read_embeddings(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_expected_dimension_and_unreadable_file(embeddings, tmp_path):
    with pytest.raises(EmbeddingsError, match=f"column 's1' has embeddings of dimension {DIM}, expected 768"):
        read_embeddings(embeddings["path"], expected_dim=768)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(EmbeddingsError, match=r"junk\.parquet: cannot read parquet"):
        read_embeddings(junk)
    result = CliRunner().invoke(app, ["probe", "--embeddings", str(junk), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "junk.parquet: cannot read parquet" in result.output


# --------------------------------------------------------------------------- probes


def test_probe_embeddings_protocol(embeddings, tmp_path):
    out = tmp_path / "probe"
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(embeddings["path"]),
            "--out",
            str(out),
            "--train-fraction",
            "0.1,1.0",
            "--map-points",
            "50",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "probe.json").read_text())
    ids, splits, y = embeddings["ids"], embeddings["splits"], embeddings["y"]
    train = np.flatnonzero(splits == "train")
    test = np.flatnonzero(splits == "test")
    assert results["modality"] == "joint" and results["features"] == DIM and results["test_samples"] == 60
    assert [r["train_fraction"] for r in results["runs"]] == [0.1, 1.0]
    sub = fraction_indices([ids[i] for i in train], y[train], 0.1, seed=0)
    assert results["runs"][0]["train_samples"] == len(sub) == 12
    assert results["runs"][1]["train_samples"] == 120
    # the linear probe's figures against scikit-learn on an independent fit of the same probe
    x = (embeddings["s1"] + embeddings["s2"]) / 2
    x = x.astype(np.float64)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    fitted = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=1.0)).fit((x[train] - mean) / std, y[train])
    decisions = fitted.predict_proba((x[test] - mean) / std) >= 0.5
    linear = results["runs"][1]["probes"]["linear"]
    for average in ("macro", "micro"):
        assert linear[f"f2_{average}"] == pytest.approx(
            fbeta_score(y[test], decisions, beta=2, average=average, zero_division=0), abs=1e-9
        )
        assert linear[f"precision_{average}"] == pytest.approx(
            precision_score(y[test], decisions, average=average, zero_division=0), abs=1e-9
        )
    assert linear["hamming_loss"] == pytest.approx(hamming_loss(y[test], decisions), abs=1e-12)
    per_class = fbeta_score(y[test], decisions, beta=2, average=None, zero_division=0)
    assert [linear["per_class"][n]["f2"] for n in ALPHABETICAL_ORDER] == pytest.approx(per_class, abs=1e-9)
    assert linear["average_precision_macro"] > 0.9  # the features carry the labels
    # the study's table: rows RF / linear / MLP, its six columns, in percent
    table = (out / "probe.md").read_text()
    assert "| probe | F2 macro | F2 micro | Hamming loss | precision macro | precision micro | AP |" in table
    block = table.split("## Train fraction 100% (120 train patches)")[1].strip().splitlines()
    assert [line.split("|")[1].strip() for line in block[2:5]] == ["RF", "linear", "MLP"]
    cells = [c.strip() for c in block[3].split("|")[2:8]]
    assert cells == [
        f"{100 * linear['f2_macro']:.1f}",
        f"{100 * linear['f2_micro']:.1f}",
        f"{linear['hamming_loss']:.3f}",
        f"{100 * linear['precision_macro']:.1f}",
        f"{100 * linear['precision_micro']:.1f}",
        f"{100 * linear['average_precision_macro']:.1f}",
    ]
    assert "## Train fraction 10% (12 train patches)" in table
    for name in ("per_class_f2.png", "embedding_map.png"):
        assert (out / name).stat().st_size > 10_000
    figure = per_class_f2_figure(results)
    shown = [" ".join(tick.get_text().split()) for tick in figure.axes[0].get_yticklabels()]
    assert [s.rsplit(" (", 1)[0] for s in shown] == list(ALPHABETICAL_ORDER)  # full names, never cut
    assert_readable(figure)
    plt.close(figure)
    emap = results["embedding_map"]
    assert (
        emap["method"] in ("umap", "tsne") and emap["points"] == 50 and set(emap["classes"]) == set(ALPHABETICAL_ORDER)
    )
    # the same file, s1 only, no map
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(embeddings["path"]),
            "--out",
            str(tmp_path / "s1"),
            "--modality",
            "s1",
            "--probes",
            "linear",
            "--no-map",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s1" / "probe.json").read_text())["modality"] == "s1"
    assert not (tmp_path / "s1" / "embedding_map.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-fraction", "0"], "--train-fraction '0': expected numbers in (0, 1]"),
        (["--train-fraction", "a"], "--train-fraction 'a': expected numbers in (0, 1]"),
        (["--archive", "x"], "give exactly one of --archive"),
        (["--modality", "radar"], "unknown modality 'radar'"),
    ],
)
def test_probe_option_errors(embeddings, tmp_path, args, message):
    result = CliRunner().invoke(app, ["probe", "--embeddings", str(embeddings["path"]), "--out", str(tmp_path), *args])
    assert result.exit_code in (1, 2) and message in result.output


# --------------------------------------------------------------------------- retrieval


def test_ranks_worked_by_hand():
    # gallery g0 = (1, 0), g1 = (0, 1), g2 = (-1, 0)
    # q0 = (1, 0): cosines (1, 0, -1), partner g0 -> rank 1
    # q1 = (1, 1): cosines (.71, .71, -.71), partner g1 ties with g0 -> rank 2 (ties count against)
    # q2 = (0, 1): cosines (0, 1, 0), partner g2 scores 0: g0 (0), g1 (1) and g2 itself -> rank 3
    ranks = retrieval_ranks(np.array([[1, 0], [1, 1], [0, 1]]), np.array([[1, 0], [0, 1], [-1, 0]]))
    assert ranks.tolist() == [1, 2, 3]
    summary = rank_summary(ranks)
    assert summary["recall@1"] == pytest.approx(1 / 3) and summary["recall@5"] == 1.0 and summary["median_rank"] == 2.0
    # constant embeddings rank every partner last
    assert retrieval_ranks(np.ones((5, 3)), np.ones((5, 3))).tolist() == [5] * 5


def test_retrieve_command(embeddings, tmp_path):
    result = CliRunner().invoke(app, ["retrieve", "--embeddings", str(embeddings["path"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "retrieval.json").read_text())
    test = embeddings["splits"] == "test"
    expected = retrieval_ranks(embeddings["s1"][test], embeddings["s2"][test])
    assert report["pairs"] == 60 and report["s1_to_s2"] == rank_summary(expected)
    assert report["chance"] == {
        "recall@1": 1 / 60,
        "recall@5": 5 / 60,
        "recall@10": 10 / 60,
        "median_rank": 30.5,
        "mean_rank": 30.5,
    }
    assert report["s1_to_s2"]["recall@10"] > 3 * report["chance"]["recall@10"]
    assert report["s2_to_s1"]["median_rank"] < report["chance"]["median_rank"]
    assert (tmp_path / "retrieval.png").stat().st_size > 10_000


def test_retrieve_needs_both_modalities(embeddings, tmp_path):
    path = tmp_path / "s2only.parquet"
    write_embeddings(path, embeddings["ids"], embeddings["splits"], embeddings["y"], {"s2": embeddings["s2"]})
    result = CliRunner().invoke(app, ["retrieve", "--embeddings", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert f"{path}: no 's1' embeddings; retrieval needs both s1 and s2" in result.output
    wide = tmp_path / "wide.parquet"
    write_embeddings(
        wide,
        embeddings["ids"],
        embeddings["splits"],
        embeddings["y"],
        {"s1": embeddings["s1"], "s2": np.hstack([embeddings["s2"], embeddings["s2"]])},
    )
    result = CliRunner().invoke(app, ["retrieve", "--embeddings", str(wide), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "'s1' embeddings have dimension 16 and 's2' 32" in result.output


def test_probe_embeddings_in_memory(embeddings, tmp_path):
    """The entry point of an encoder run on the fly: an Embeddings object instead of a file."""
    from reben_tools.learn.evaluation.probes import probe_embeddings

    emb = read_embeddings(embeddings["path"])
    results = probe_embeddings(
        emb, tmp_path, modality="s2", fractions=(1.0,), probes=("linear",), embedding_map=False, progress=False
    )
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(embeddings["path"]),
            "--out",
            str(tmp_path / "f"),
            "--modality",
            "s2",
            "--probes",
            "linear",
            "--no-map",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    from_file = json.loads((tmp_path / "f" / "probe.json").read_text())
    assert results["runs"][0]["probes"]["linear"]["f2_macro"] == from_file["runs"][0]["probes"]["linear"]["f2_macro"]
    assert results["source"]["embeddings"] == str(embeddings["path"])
