"""Multi-label metrics against scikit-learn and against figures worked out by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    fbeta_score,
    hamming_loss,
    precision_score,
    recall_score,
)

from reben_tools.format.labels import ALPHABETICAL_ORDER, ORIGINAL_ORDER
from reben_tools.learn.evaluation.metrics import (
    average_precision,
    binary_average_precision,
    multilabel_metrics,
    plot_per_class,
    threshold_metrics,
)


def fixed_predictions(n: int = 300, k: int = 19, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Correlated logits and targets; scores rounded to one decimal so ties occur."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, k)) < rng.uniform(0.05, 0.5, size=k)).astype(np.float32)
    targets[0] = 1  # every class has at least one positive
    logits = np.round(2.0 * (targets - 0.5) + rng.normal(0, 1.3, size=(n, k)), 1)
    return logits, targets


def probs(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def test_average_precision_matches_sklearn_per_class_macro_micro_with_ties():
    logits, targets = fixed_predictions()
    per_class, macro, micro = average_precision(logits, targets)
    np.testing.assert_allclose(per_class, average_precision_score(targets, logits, average=None), rtol=1e-12)
    assert macro == pytest.approx(average_precision_score(targets, logits, average="macro"), rel=1e-12)
    assert micro == pytest.approx(average_precision_score(targets, logits, average="micro"), rel=1e-12)


def test_average_precision_by_hand():
    # ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = 1/2*1 + 1/2*2/3
    assert binary_average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(
        0.5 + 1 / 3
    )
    # a tie between a positive and a negative at the top counts as one threshold: P = 1/2
    assert binary_average_precision(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0])) == pytest.approx(0.5)


def test_class_without_positives_is_nan_and_left_out_of_macro():
    logits, targets = fixed_predictions(n=120, k=5)
    targets[:, 2] = 0
    per_class, macro, _ = average_precision(logits, targets)
    assert np.isnan(per_class[2])
    keep = [0, 1, 3, 4]
    expected = average_precision_score(targets[:, keep], logits[:, keep], average="macro")
    assert macro == pytest.approx(expected, rel=1e-12)
    metrics = multilabel_metrics(logits, targets, class_order=[f"c{i}" for i in range(5)])
    assert metrics["classes_without_positives"] == ["c2"]
    assert metrics["per_class"]["c2"]["average_precision"] is None
    json.dumps(metrics, allow_nan=False)  # strict JSON


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_threshold_metrics_match_sklearn(threshold):
    logits, targets = fixed_predictions()
    decisions = (probs(logits) >= threshold).astype(int)
    m = multilabel_metrics(logits, targets, threshold=threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for avg in ("macro", "micro"):
            kw = dict(average=avg, zero_division=0)
            assert m[f"f1_{avg}"] == pytest.approx(f1_score(targets, decisions, **kw), rel=1e-12)
            assert m[f"f2_{avg}"] == pytest.approx(fbeta_score(targets, decisions, beta=2, **kw), rel=1e-12)
            assert m[f"precision_{avg}"] == pytest.approx(precision_score(targets, decisions, **kw), rel=1e-12)
            assert m[f"recall_{avg}"] == pytest.approx(recall_score(targets, decisions, **kw), rel=1e-12)
        per_class_f1 = f1_score(targets, decisions, average=None, zero_division=0)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(targets, decisions), rel=1e-12)
    got = [m["per_class"][name]["f1"] for name in ALPHABETICAL_ORDER]
    np.testing.assert_allclose(got, per_class_f1, rtol=1e-12)
    assert [m["per_class"][n]["support"] for n in ALPHABETICAL_ORDER] == targets.sum(0).astype(int).tolist()


def test_zero_division_is_zero_like_sklearn():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    decisions = np.array([[0, 0], [0, 0], [0, 0]])  # nothing predicted: precision 0/0
    m = threshold_metrics(decisions, targets)
    assert m["precision_macro"] == 0.0 and m["recall_macro"] == 0.0 and m["f1_micro"] == 0.0
    assert m["hamming_loss"] == pytest.approx(2 / 6)


def test_torch_inputs_and_probability_scores_give_the_same_figures():
    logits, targets = fixed_predictions(n=80)
    from_numpy = multilabel_metrics(logits, targets)
    from_torch = multilabel_metrics(torch.from_numpy(logits).to(torch.bfloat16).float(), torch.from_numpy(targets))
    from_probs = multilabel_metrics(probs(logits), targets, logits=False)
    for key in ("average_precision_macro", "f1_micro", "hamming_loss"):
        assert from_torch[key] == pytest.approx(from_numpy[key], abs=2e-2)
        assert from_probs[key] == pytest.approx(from_numpy[key], rel=1e-9)


def test_class_order_names_the_per_class_figures():
    logits, targets = fixed_predictions(n=50)
    m = multilabel_metrics(logits, targets, class_order="original")
    assert list(m["per_class"]) == list(ORIGINAL_ORDER)
    with pytest.raises(ValueError, match="3 class names for 19"):
        multilabel_metrics(logits, targets, class_order=["a", "b", "c"])
    with pytest.raises(ValueError, match="must both be"):
        multilabel_metrics(logits[:, :5], targets)


def test_per_class_bar_chart_is_a_png(tmp_path):
    logits, targets = fixed_predictions(n=50)
    plot_per_class(multilabel_metrics(logits, targets), tmp_path / "per_class.png")
    assert (tmp_path / "per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
