"""Multi-label classification metrics: the figures reBEN users report.

Inputs are ``scores`` (N, K) -- logits or probabilities, any monotonic score works for
average precision -- and ``targets`` (N, K) of 0/1. Decisions for the threshold metrics
are ``probability >= threshold`` (0.5 by default); pass ``logits=True`` when the scores are
logits so the threshold is applied after a sigmoid.

Definitions (identical to scikit-learn's, checked in ``tests/test_metrics.py``):

- average precision of a class: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds in decreasing order (no interpolation);
  macro = mean over classes, micro = the same over all (sample, class) pairs flattened;
- precision, recall, F1, F2 (F-beta with beta 2): per class from true/false positives and false
  negatives; macro = mean of the per-class values, micro = from the counts summed over classes;
  a ratio with a zero denominator is 0 (scikit-learn's ``zero_division=0``);
- Hamming loss: share of (sample, class) decisions that are wrong.

Classes with no positive target have no defined average precision (scikit-learn reports 0
with a warning): here their AP is NaN, they are left out of the macro AP and listed under
``classes_without_positives``. reBEN's own scripts (torchmetrics 1.4) instead count such a class
as AP 0 in the macro mean; that figure is reported too, as ``average_precision_macro_all_classes``
(equal to ``average_precision_macro`` when every class has a positive), so numbers on small
splits and subsets can be compared with reBEN's. Their precision / recall / F-scores follow the zero-division
rule above and do count in the macro means, as in scikit-learn.

Owns: sigmoid, (binary_)average_precision, threshold_metrics, multilabel_metrics, HEADLINE_METRICS, plot_per_class.
Does not own: producing scores (evaluation.py, probes.py), run files (rundir.py).
May import: numpy, matplotlib (lazily); reben_tools.format.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reben_tools.format.labels import class_names

DEFAULT_THRESHOLD = 0.5


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, on any device, any float dtype
        a = a.detach().float().cpu().numpy()
    return np.asarray(a)


def _check(scores: np.ndarray, targets: np.ndarray) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, K)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def binary_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one binary problem (1-D arrays); NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel().astype(bool)
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    # the last index of each run of equal scores is one threshold
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(t)[last_of_run]
    predicted = last_of_run + 1
    precision = tp / predicted
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(scores, targets) -> tuple[np.ndarray, float, float]:
    """Per-class AP (K,) with NaN for classes without positives, macro AP, micro AP."""
    s, t = _as_numpy(scores).astype(np.float64), _as_numpy(targets)
    _check(s, t)
    per_class = np.array([binary_average_precision(s[:, k], t[:, k]) for k in range(s.shape[1])])
    defined = ~np.isnan(per_class)
    macro = float(per_class[defined].mean()) if defined.any() else float("nan")
    micro = binary_average_precision(s.ravel(), t.ravel())
    return per_class, macro, micro


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _fbeta(tp, fp, fn, beta: float) -> np.ndarray:
    b2 = beta * beta
    return _safe_div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)


def threshold_metrics(decisions, targets) -> dict:
    """Precision, recall, F1, F2 (per class, macro, micro) and Hamming loss of 0/1 decisions."""
    d, t = _as_numpy(decisions).astype(bool), _as_numpy(targets).astype(bool)
    if d.shape != t.shape or d.ndim != 2:
        raise ValueError(f"decisions {d.shape} and targets {t.shape} must both be (N, K)")
    tp = (d & t).sum(axis=0)
    fp = (d & ~t).sum(axis=0)
    fn = (~d & t).sum(axis=0)
    out = {
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "f1": _fbeta(tp, fp, fn, 1.0),
        "f2": _fbeta(tp, fp, fn, 2.0),
    }
    result: dict = {}
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    micro = {
        "precision": float(_safe_div(TP, TP + FP)),
        "recall": float(_safe_div(TP, TP + FN)),
        "f1": float(_fbeta(TP, FP, FN, 1.0)),
        "f2": float(_fbeta(TP, FP, FN, 2.0)),
    }
    for name, per_class in out.items():
        result[f"{name}_macro"] = float(per_class.mean())
        result[f"{name}_micro"] = micro[name]
        result[f"{name}_per_class"] = per_class
    result["hamming_loss"] = float((d != t).mean()) if d.size else float("nan")
    result["support"] = t.sum(axis=0)
    return result


def multilabel_metrics(
    scores,
    targets,
    logits: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    class_order: str | Sequence[str] = "alphabetical",
) -> dict:
    """Every reported figure as a JSON-ready dict.

    Args:
        scores: (N, K) logits (``logits=True``) or probabilities; numpy array or torch tensor.
        targets: (N, K) 0/1.
        threshold: probability threshold for the decision-based metrics.
        class_order: ``"alphabetical"``, ``"original"`` or a list of K class names (keys of
            the per-class figures).

    Returns:
        ``{"samples", "average_precision_macro", "average_precision_micro", "f1_macro", ...,
        "hamming_loss", "classes_without_positives", "per_class": {name: {...}}}``; NaN is
        written as ``None`` so the dict serialises to strict JSON.
    """
    s, t = _as_numpy(scores).astype(np.float64), _as_numpy(targets)
    _check(s, t)
    probabilities = sigmoid(s) if logits else s
    names = list(class_names(class_order)) if isinstance(class_order, str) else list(class_order)
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} class names for {s.shape[1]} score columns")
    ap, ap_macro, ap_micro = average_precision(s, t)  # on raw scores: a sigmoid could saturate into ties
    thr = threshold_metrics(probabilities >= threshold, t)
    out: dict = {
        "samples": int(s.shape[0]),
        "threshold": threshold,
        "average_precision_macro": ap_macro,
        "average_precision_micro": ap_micro,
        "average_precision_macro_all_classes": float(np.nan_to_num(ap, nan=0.0).mean()) if ap.size else ap_macro,
    }
    for key in ("f1", "f2", "precision", "recall"):
        out[f"{key}_macro"] = thr[f"{key}_macro"]
        out[f"{key}_micro"] = thr[f"{key}_micro"]
    out["hamming_loss"] = thr["hamming_loss"]
    out["classes_without_positives"] = [names[k] for k in range(len(names)) if np.isnan(ap[k])]
    out["per_class"] = {
        names[k]: {
            "average_precision": float(ap[k]),
            "f1": float(thr["f1_per_class"][k]),
            "f2": float(thr["f2_per_class"][k]),
            "precision": float(thr["precision_per_class"][k]),
            "recall": float(thr["recall_per_class"][k]),
            "support": int(thr["support"][k]),
        }
        for k in range(len(names))
    }
    return _nan_to_none(out)


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


HEADLINE_METRICS = (
    "average_precision_macro",
    "average_precision_micro",
    "f1_macro",
    "f1_micro",
    "f2_macro",
    "f2_micro",
    "precision_macro",
    "precision_micro",
    "recall_macro",
    "recall_micro",
    "hamming_loss",
)


def plot_per_class(metrics: dict, path, title: str = "") -> None:
    """Horizontal bar chart of per-class average precision and F1 (PNG at ``path``)."""
    import matplotlib.pyplot as plt

    fig = per_class_figure(metrics, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_figure(metrics: dict, title: str = ""):
    """The :func:`plot_per_class` Figure: whole class names (long ones wrapped onto two lines),
    ``(no positives)`` after classes without a positive sample, the legend below the axes."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics["per_class"])
    ap = [metrics["per_class"][n]["average_precision"] for n in names]
    f1 = [metrics["per_class"][n]["f1"] for n in names]
    ap = [np.nan if v is None else v for v in ap]
    shown = [textwrap.fill(n + (" (no positives)" if np.isnan(a) else ""), 42) for n, a in zip(names, ap, strict=True)]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 0.42 * sum(1 + 0.6 * t.count("\n") for t in shown) + 2.0), layout="constrained")
    ax.barh(y - 0.2, ap, height=0.4, label="average precision")
    ax.barh(y + 0.2, f1, height=0.4, label="F1 @ 0.5")
    ax.set_yticks(y, shown, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    macro = metrics.get("average_precision_macro")
    if not title:
        title = "per-class figures" + (f" (macro AP {macro:.3f})" if macro is not None else "")
    ax.set_title(title)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    return fig
