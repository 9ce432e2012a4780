"""The comparison protocol (issue 20): weighted AP, stratified splits, intervals, verdicts, its controls, `reben probe`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from figure_layout import assert_readable
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.learn.evaluation.compare import (
    metric_interval,
    paired_comparison,
    permutation_recall_at_1,
    repeated_splits,
    verdict,
    weighted_metric,
)
from reben_tools.learn.evaluation.controls import class_pixel_fractions, random_features, weak_control
from reben_tools.learn.evaluation.embeddings import write_embeddings
from reben_tools.learn.evaluation.metrics import average_precision
from reben_tools.learn.evaluation.probes import split_scores
from reben_tools.learn.evaluation.retrieval import retrieval_ranks

sys.path.insert(0, str(Path(__file__).parent))
from training_archive import build_learnable_archive

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _labels(n: int, k: int = 19, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.random((n, k)) < np.linspace(0.05, 0.4, k)
    y[~y.any(1), 0] = True
    return y


def test_weighted_metric_is_the_metric_of_repeated_rows():
    rng = np.random.default_rng(0)
    y = _labels(150)
    scores = y + rng.normal(size=y.shape)
    scores[:, 2] = np.round(scores[:, 2])  # ties
    for weights in (np.ones(150, int), rng.integers(0, 4, 150)):
        rows = np.repeat(np.arange(150), weights)
        _, macro, micro = average_precision(scores[rows], y[rows])
        assert weighted_metric(scores, y, "average_precision_macro", weights)[0] == pytest.approx(macro, abs=1e-12)
        assert weighted_metric(scores, y, "average_precision_micro", weights)[0] == pytest.approx(micro, abs=1e-12)
    values = rng.random(150)
    w = rng.integers(0, 3, (5, 150))
    assert np.allclose(weighted_metric(values, None, "mean", w), (w @ values) / w.sum(1))
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        weighted_metric(scores, y, "f1", np.ones(150))


def test_repeated_splits_are_stratified_disjoint_and_reproducible():
    y = _labels(400)
    ids = [f"p{i}" for i in range(400)]
    splits = repeated_splits(ids, y, 5, 0.5, seed=3)
    assert len(splits) == 5
    for fit, rest in splits:
        assert len(fit) == 200 and len(rest) == 200 and not set(fit) & set(rest)
        rare = y.mean(0) < 0.15  # iterative stratification balances the rare classes first
        assert np.abs(y[fit].mean(0) - y[rest].mean(0))[rare].max() <= 0.01
        assert y[rest].sum(0).min() > 0 and y[fit].sum(0).min() > 0
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(splits, repeated_splits(ids, y, 5, 0.5, seed=3), strict=True))
    assert not np.array_equal(splits[0][0], splits[1][0])
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        repeated_splits(ids, y, 0)


def test_verdicts():
    assert verdict(0.01, 0.03) == "beats"
    assert verdict(-0.03, -0.001) == "loses"
    assert verdict(-0.02, 0.01) == "within noise (±0.015)"


def _probe_splits(n=400, seed=0):
    y = _labels(n, seed=seed)
    ids = [f"p{i}" for i in range(n)]
    splits = repeated_splits(ids, y, 6, 0.5, 0)
    return y, splits, [r for _, r in splits], [len(f) for f, _ in splits]


def test_identical_and_equivalent_feature_sets_come_out_within_noise():
    y, splits, rows, fit = _probe_splits()
    a = split_scores(random_features(len(y), 16, 1), y, splits, "linear")
    same = paired_comparison(a, a, y, rows, kind="splits", fit_sizes=fit, n_boot=300)
    assert same["verdict"] == "within noise (±0.000)" and same["difference"]["mean"] == 0.0
    b = split_scores(random_features(len(y), 16, 2), y, splits, "linear")
    other = paired_comparison(a, b, y, rows, kind="splits", fit_sizes=fit, n_boot=300)
    assert other["verdict"].startswith("within noise")
    d = other["difference"]
    assert d["interval"][0] <= d["t_interval"][0] and d["interval"][1] >= d["t_interval"][1]  # hull of both
    assert d["se"] > np.std(d["per_unit"], ddof=1) / np.sqrt(6)  # corrected for shared patches


def test_a_known_gain_is_resolved_and_its_sign_kept():
    y, splits, rows, fit = _probe_splits()
    rng = np.random.default_rng(0)
    informative = y + 1.5 * rng.normal(size=y.shape)
    random = random_features(len(y), 19, 1)
    a = split_scores(informative, y, splits, "linear")
    b = split_scores(random, y, splits, "linear")
    assert paired_comparison(a, b, y, rows, kind="splits", fit_sizes=fit, n_boot=300)["verdict"] == "beats"
    assert paired_comparison(b, a, y, rows, kind="splits", fit_sizes=fit, n_boot=300)["verdict"] == "loses"
    single = metric_interval(a, y, rows, kind="splits", fit_sizes=fit, n_boot=300)
    assert single["interval"][0] < single["mean"] < single["interval"][1] and single["units"] == 6


def test_seeds_count_the_test_set_noise_too():
    """Training seeds scored on one test set: the interval includes the patches' own noise."""
    rng = np.random.default_rng(0)
    y = _labels(300)
    a = [y + 1.0 * rng.normal(size=y.shape) for _ in range(3)]
    b = [y + 1.0 * rng.normal(size=y.shape) for _ in range(3)]
    result = paired_comparison(a, b, y, None, kind="seeds", n_boot=400)
    d = result["difference"]
    assert result["verdict"].startswith("within noise") and result["units"] == 3
    assert d["se"] > np.std(d["per_unit"], ddof=1) / np.sqrt(3)
    better = [y + 0.5 * rng.normal(size=y.shape) for _ in range(3)]
    assert paired_comparison(better, b, y, None, kind="seeds", n_boot=400)["verdict"] == "beats"


def test_permutation_chance_of_retrieval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    chance = permutation_recall_at_1(retrieval_ranks, x, x + 0.01 * rng.normal(size=x.shape), 50)
    assert chance["mean"] < 0.1  # a permuted pairing carries no information
    assert (retrieval_ranks(x, x) <= 1).mean() == 1.0
    # a collapsed model: every gallery item ties, every partner ranks last, chance is 0 too
    flat = np.ones((60, 8))
    assert permutation_recall_at_1(retrieval_ranks, flat, flat, 10)["mean"] == 0.0


# --------------------------------------------------------------------------- the positive control on an archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("control") / "archive"
    build_learnable_archive(root, counts={"train": 32, "validation": 80, "test": 80}, seed=3)
    return root


def test_positive_control_is_resolved_on_an_archive(archive):
    fractions, ids, splits = class_pixel_fractions(archive)
    assert fractions.shape == (192, 19) and np.allclose(fractions.sum(1), 1.0)
    import pyarrow.parquet as pq

    from reben_tools.format.labels import ALPHABETICAL_ORDER

    meta = {r["patch_id"]: set(r["labels"]) for r in pq.read_table(archive / "metadata.parquet").to_pylist()}
    for pid, row in zip(ids, fractions > 0, strict=True):  # the labels are the classes with pixels
        assert meta[pid] == {ALPHABETICAL_ORDER[k] for k in np.flatnonzero(row)}
    pool = np.flatnonzero(np.isin(splits, ("validation", "test")))
    y = fractions[pool] > 0
    splits_ = repeated_splits([ids[i] for i in pool], y, 5, 0.5, 0)
    rows, fit = [r for _, r in splits_], [len(f) for f, _ in splits_]
    control = split_scores(fractions[pool], y, splits_, "linear")
    random = split_scores(random_features(len(fractions), 16, 1)[pool], y, splits_, "linear")
    result = paired_comparison(control, random, y, rows, kind="splits", fit_sizes=fit, n_boot=300)
    assert result["verdict"] == "beats" and result["a"]["mean"] > 0.95
    weak = split_scores(weak_control(fractions, 0, 16, 1)[pool], y, splits_, "linear")
    assert paired_comparison(weak, random, y, rows, kind="splits", fit_sizes=fit, n_boot=300)["verdict"] == "beats"


# --------------------------------------------------------------------------- reben probe


@pytest.fixture(scope="module")
def embedding_files(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 320
    y = _labels(n, 19, 1)
    ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i % 90:02d}_{i // 90:02d}" for i in range(n)]
    splits = np.array(["train", "validation", "test", "test"] * (n // 4))
    good = (y @ rng.normal(size=(19, 12)) + 0.8 * rng.normal(size=(n, 12))).astype(np.float32)
    noise = rng.normal(size=(n, 12)).astype(np.float32)
    root = tmp_path_factory.mktemp("emb")
    files = {}
    for name, x in (("good", good), ("noise", noise)):
        files[name] = root / f"{name}.parquet"
        write_embeddings(files[name], ids, splits, y, {"s2": x}, {"name": name})
    return files


def test_probe_carries_the_protocol_and_the_verdict(embedding_files, tmp_path):
    out = tmp_path / "p"
    args = ["probe", "--embeddings", str(embedding_files["good"]), "--out", str(out), "--probes", "linear"]
    result = CliRunner().invoke(
        app, [*args, "--baseline", str(embedding_files["noise"]), "--repeats", "4", "--no-map", "-q"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "probe.json").read_text())
    protocol = report["protocol"]
    assert protocol["pool"] == "test" and protocol["patches"] == 160 and protocol["repeats"] == 4
    assert protocol["fit_samples"] == [80] * 4 and protocol["eval_samples"] == [80] * 4
    interval = protocol["probes"]["linear"]["average_precision_macro"]
    assert interval["interval"][0] < interval["mean"] < interval["interval"][1]
    comparison = protocol["comparison"]["linear"]["average_precision_macro"]
    assert comparison["verdict"] == "beats"
    table = (out / "probe.md").read_text()
    assert "## Comparison protocol: 4 stratified splits of the 160 held-out patches (test)" in table
    lo, hi = comparison["difference"]["interval"]
    assert f"| linear | AP macro | {comparison['a']['mean']:.3f} | {comparison['b']['mean']:.3f} |" in table
    assert f"[{lo:.3f}, {hi:.3f}] | beats |" in table
    summary = json.loads(result.output)
    assert summary[f"against {embedding_files['noise']}"]["linear"]["AP macro"] == "beats"
    for name in ("probe.json", "probe.md", "probes.png", "per_class_f2.png"):
        assert (out / name).is_file() and str(out / name) in summary["files"]
    # the same file as its own baseline: within noise, exactly 0
    same = tmp_path / "same"
    result = CliRunner().invoke(
        app,
        ["probe", "--embeddings", str(embedding_files["good"]), "--out", str(same), "--probes", "linear",
         "--baseline", str(embedding_files["good"]), "--heldout", "validation,test", "--repeats", "3", "--no-map", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    protocol = json.loads((same / "probe.json").read_text())["protocol"]
    assert protocol["pool"] == "validation+test" and protocol["patches"] == 240
    assert protocol["comparison"]["linear"]["average_precision_macro"]["verdict"] == "within noise (±0.000)"


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--eval-share", "1"], 1, "error: --eval-share must be"),  # the shared number rules (commands/guard.py)
        (["--heldout", "holdout"], 2, "--heldout 'holdout': expected split names"),
    ],
)
def test_protocol_option_errors(embedding_files, tmp_path, extra, code, message):
    result = CliRunner().invoke(
        app, ["probe", "--embeddings", str(embedding_files["good"]), "--out", str(tmp_path), *extra]
    )
    assert result.exit_code == code and message in result.output


def test_probes_figure_uses_the_report_names(embedding_files, tmp_path):
    from reben_tools.learn.evaluation.probe_figure import probes_figure
    from reben_tools.learn.evaluation.probes import probe_embeddings

    results = probe_embeddings(
        embedding_files["good"], None, probes=("linear",), repeats=3, embedding_map=False, progress=False
    )
    results["probes"]["random_forest"] = results["probes"]["linear"]  # a second probe's bars, without fitting one
    figure = probes_figure(results)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "AP macro",
        "AP micro",
        "F2 macro",
        "F2 micro",
        "precision macro",
    ]
    assert all(t.get_fontsize() >= 10 for t in ax.get_xticklabels())
    assert ax.get_ylabel() == "score on the test split"
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["linear", "RF"]
    assert_readable(figure)
    plt.close(figure)


def test_protocol_on_too_few_held_out_patches_says_so():
    from reben_tools.learn.evaluation.probes import probe_protocol
    from reben_tools.learn.runtime.config import TrainingError

    y = np.zeros((1, 19), bool)
    y[0, 3] = True
    with pytest.raises(
        TrainingError, match=r"comparison protocol on the test patches: .* \(--repeats 0 turns it off\)"
    ):
        probe_protocol(np.zeros((1, 4)), y, ["p0"], repeats=2)
