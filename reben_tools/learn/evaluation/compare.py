"""One protocol for every "A beats B" claim: paired differences, a standard error, a bootstrap interval, a verdict.

A comparison is made over paired **units**: the repeated stratified splits of held-out patches
of a probe (``kind="splits"``, see :func:`repeated_splits`), or the seeds of training runs
(``kind="seeds"``, A and B of one seed start from the same seed). Each unit scores the same
evaluation patches (rows of one pool) with A and with B; the metric of each gives the unit's
difference ``d_u = metric(A_u) - metric(B_u)``. Reported:

* the mean difference ``d`` over the S units, and each unit's;
* a standard error. Splits: ``sd(d_u) * sqrt(1/S + n_eval/n_fit)``, the corrected resampled
  variance of Nadeau and Bengio (2003, "Inference for the generalization error"): the splits
  share patches, so ``sd/sqrt(S)`` would understate it. Seeds: ``sqrt(sd(d_u)^2 / S + v)``,
  where ``v`` is the variance of ``d`` over patch resamples with the seeds held (every seed is
  scored on the same test patches, so the seed-to-seed spread misses the test set's own noise);
* ``t_interval``: ``d +- t(S - 1) * se`` (normal quantile when S = 1);
* ``bootstrap_interval``: percentiles of a paired bootstrap. Each draw resamples the pool's
  patches with replacement (one count vector, applied to every unit's evaluation rows, A and B
  alike) and, for seeds, the seeds too; the metric is recomputed on the resampled rows (macro
  AP over the classes with a positive in the draw, as :func:`~.metrics.average_precision`);
* ``interval``: the hull of the two, and the **verdict**: ``beats`` when its lower end is above
  0, ``loses`` when its upper end is below 0, otherwise ``within noise (+-x)`` with ``x`` the
  interval's half-width (the size of a difference this comparison could not have resolved).

Metrics: ``average_precision_macro`` and ``average_precision_micro`` on (n, K) scores and 0/1
targets, and ``mean`` on (n,) per-patch values (e.g. retrieval hits at rank 1).

Owns: METRICS, repeated_splits, weighted_metric, paired_comparison, metric_interval, verdict,
comparison_line, permutation_recall_at_1.
Does not own: fitting probes (probes.py), ranks (retrieval.py), the fraction draw (splits.subsets).
May import: numpy, scipy (lazily); reben_tools.splits.subsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reben_tools.splits.subsets import fraction_indices

METRICS = ("average_precision_macro", "average_precision_micro", "mean")
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000
"""Bootstrap draws are evaluated in chunks of at most this many (draw, patch) weights."""


def repeated_splits(
    patch_ids: Sequence[str], labels: np.ndarray, repeats: int, eval_share: float = 0.5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` stratified splits of a pool of held-out patches into (fit rows, evaluation rows).

    Split r fits on ``fraction_indices(patch_ids, labels, 1 - eval_share, seed + r)`` (iterative
    stratification with class coverage, :mod:`reben_tools.splits.subsets`) and evaluates on the
    rest, so both parts keep every class's share; the draw depends on the patch ids, labels and
    seed only, so two feature sets of the same patches get the same splits.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not 0.0 < eval_share < 1.0:
        raise ValueError(f"eval_share must be in (0, 1), got {eval_share}")
    n = len(patch_ids)
    out = []
    for r in range(repeats):
        fit = np.sort(fraction_indices(patch_ids, labels, 1.0 - eval_share, seed + r))
        rest = np.setdiff1d(np.arange(n), fit)
        if fit.size == 0 or rest.size == 0:
            raise ValueError(f"{n} held-out patches are too few to split with eval_share {eval_share}")
        out.append((fit, rest))
    return out


# --------------------------------------------------------------------------- metrics under resampling


class _Scored:
    """One unit's scores of one arm, sorted once so that any row weights give the metric fast."""

    def __init__(self, scores: np.ndarray, targets: np.ndarray | None, metric: str) -> None:
        self.metric = metric
        if metric == "mean":
            self.values = np.asarray(scores, dtype=np.float64).ravel()
            self.n = len(self.values)
            return
        s = np.asarray(scores, dtype=np.float64)
        t = np.asarray(targets).astype(bool)
        if s.ndim != 2 or s.shape != t.shape:
            raise ValueError(f"scores {s.shape} and targets {t.shape} must both be (n, K)")
        self.n, self.k = s.shape
        if metric == "average_precision_micro":  # (sample, class) pairs, row-major
            s, t = s.reshape(-1, 1), t.reshape(-1, 1)
        self.columns = []
        for j in range(s.shape[1]):
            order = np.argsort(-s[:, j], kind="mergesort")
            sj = s[order, j]
            last_of_run = np.r_[np.flatnonzero(np.diff(sj)), sj.size - 1]
            self.columns.append((order, t[order, j].astype(np.float64), last_of_run))

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """Metric for each row of ``weights`` (D, n): D values (NaN where undefined)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape[1] != self.n:
            raise ValueError(f"weights for {w.shape[1]} rows, scores for {self.n}")
        if self.metric == "mean":
            total = w.sum(axis=1)
            return np.divide(w @ self.values, total, out=np.full(w.shape[0], np.nan), where=total > 0)
        if self.metric == "average_precision_micro":
            w = np.repeat(w, self.k, axis=1)
        aps = np.full((w.shape[0], len(self.columns)), np.nan)
        for j, (order, positive, last_of_run) in enumerate(self.columns):
            wj = w[:, order]
            tp = np.cumsum(wj * positive, axis=1)[:, last_of_run]
            predicted = np.cumsum(wj, axis=1)[:, last_of_run]
            precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
            gained = np.diff(tp, axis=1, prepend=0.0)
            total = tp[:, -1]
            aps[:, j] = np.divide(
                (gained * precision).sum(axis=1), total, out=np.full(len(total), np.nan), where=total > 0
            )
        defined = ~np.isnan(aps)
        count = defined.sum(axis=1)
        return np.divide(np.nansum(aps, axis=1), count, out=np.full(len(count), np.nan), where=count > 0)


def weighted_metric(scores: np.ndarray, targets: np.ndarray | None, metric: str, weights: np.ndarray) -> np.ndarray:
    """``metric`` of ``scores`` under each row of ``weights`` (D, n) of row counts; (D,).

    Integer weights give exactly the metric of the rows repeated that many times, so
    ``weights = 1`` gives :func:`~.metrics.average_precision`'s macro / micro AP.
    """
    _check_metric(metric)
    return _Scored(scores, targets, metric)(np.atleast_2d(weights))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(METRICS)}")


# --------------------------------------------------------------------------- the comparison


def _t_quantile(level: float, df: int) -> float:
    from scipy import stats

    q = 0.5 + level / 2
    return float(stats.norm.ppf(q) if df < 1 else stats.t.ppf(q, df))


def verdict(low: float, high: float) -> str:
    """``beats`` (interval above 0), ``loses`` (below 0) or ``within noise (±x)``, x the half-width."""
    if low > 0:
        return "beats"
    if high < 0:
        return "loses"
    return f"within noise (±{(high - low) / 2:.3f})"


def _units(arms: Sequence[Sequence[np.ndarray]], targets, rows, metric) -> tuple[list[list[_Scored]], list]:
    s = len(arms[0])
    if s == 0 or any(len(a) != s for a in arms):
        raise ValueError("every arm needs one score array per unit, the same number of units")
    rows = [None] * s if rows is None else [None if r is None else np.asarray(r) for r in rows]
    if len(rows) != s:
        raise ValueError(f"{len(rows)} row sets for {s} units")
    if metric != "mean" and targets is None:
        raise ValueError(f"{metric} needs targets")
    scored = []
    for u in range(s):
        t = None if targets is None else (np.asarray(targets) if rows[u] is None else np.asarray(targets)[rows[u]])
        scored.append([_Scored(arm[u], t, metric) for arm in arms])
    return scored, rows


def _estimate(
    arms: Sequence[Sequence[np.ndarray]],
    targets,
    rows,
    metric: str,
    kind: str,
    fit_sizes,
    n_boot: int,
    seed: int,
    level: float,
) -> tuple[list[np.ndarray], dict]:
    """Per-arm per-unit values and the estimates of the statistic (A - B with two arms, A with one)."""
    _check_metric(metric)
    if kind not in ("splits", "seeds"):
        raise ValueError(f"kind must be 'splits' or 'seeds', got {kind!r}")
    scored, rows = _units(arms, targets, rows, metric)
    s = len(scored)
    values = [np.array([unit[i](np.ones((1, unit[i].n)))[0] for unit in scored]) for i in range(len(arms))]
    stat = values[0] - values[1] if len(arms) == 2 else values[0]
    mean = float(np.mean(stat))
    rng = np.random.default_rng(seed)
    draws = _bootstrap(scored, rows, n_boot, rng, resample_units=(kind == "seeds"))
    sd = float(np.std(stat, ddof=1)) if s > 1 else 0.0
    if kind == "splits" and s > 1:
        if fit_sizes is None or len(fit_sizes) != s:
            raise ValueError("kind='splits' needs fit_sizes, one per split")
        ratio = float(np.mean([unit[0].n for unit in scored]) / np.mean(fit_sizes))
        se = sd * float(np.sqrt(1.0 / s + ratio))
        method = f"Nadeau-Bengio corrected: sd * sqrt(1/{s} + {ratio:.3g})"
    elif kind == "seeds":
        held = _bootstrap(scored, rows, n_boot, rng, resample_units=False)
        se = float(np.sqrt(sd**2 / s + np.nanvar(held, ddof=1)))
        method = f"sqrt(sd^2/{s} + patch-resampling variance)"
    else:
        se = float(np.nanstd(draws, ddof=1))
        method = "bootstrap sd (one split)"
    q = _t_quantile(level, s - 1)
    t_interval = [mean - q * se, mean + q * se]
    tail = 100 * (1 - level) / 2
    boot = [float(np.nanpercentile(draws, tail)), float(np.nanpercentile(draws, 100 - tail))]
    low, high = min(t_interval[0], boot[0]), max(t_interval[1], boot[1])
    return values, {
        "mean": mean,
        "per_unit": [float(v) for v in stat],
        "se": se,
        "se_method": method,
        "t_interval": t_interval,
        "bootstrap_interval": boot,
        "bootstrap_draws": int(n_boot),
        "interval": [low, high],
        "half_width": (high - low) / 2,
    }


def _bootstrap(scored: list[list[_Scored]], rows: list, n_boot: int, rng, resample_units: bool) -> np.ndarray:
    """The statistic (A - B, or A) averaged over units, for ``n_boot`` resamples of the pool (and units).

    One count vector over the pool per draw, restricted to each unit's rows: a patch drawn twice
    counts twice in every unit that evaluates it, for both arms (paired).
    """
    s = len(scored)
    pool = scored[0][0].n if rows[0] is None else int(max(int(r.max()) for r in rows) + 1)
    out = np.empty(n_boot)
    chunk = max(1, _CHUNK_ELEMENTS // max(pool, 1))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        counts = rng.multinomial(pool, np.full(pool, 1.0 / pool), size=m).astype(np.float64)
        stat = np.empty((m, s))
        for u, arms in enumerate(scored):
            w = counts if rows[u] is None else counts[:, rows[u]]
            stat[:, u] = arms[0](w) - arms[1](w) if len(arms) == 2 else arms[0](w)
        if resample_units and s > 1:
            stat = np.take_along_axis(stat, rng.integers(0, s, size=(m, s)), axis=1)
        with np.errstate(invalid="ignore"):
            out[start : start + m] = np.nanmean(stat, axis=1)
    return out


def paired_comparison(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    targets: np.ndarray | None = None,
    rows: Sequence[np.ndarray] | None = None,
    metric: str = "average_precision_macro",
    kind: str = "splits",
    fit_sizes: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Compare arm A with arm B over paired units (module docstring).

    Args:
        a, b: per unit, the scores of the unit's evaluation rows: (n_u, K) for the AP metrics,
            (n_u,) per-patch values for ``mean``.
        targets: (N, K) 0/1 labels of the pool (AP metrics); row ``rows[u][i]`` labels score i
            of unit u.
        rows: per unit, the pool rows it evaluates (None: every unit evaluates the whole pool,
            in order; the seeds of training runs on one test split).
        kind: ``splits`` (needs ``fit_sizes``, the fit rows per split) or ``seeds``.
        n_boot: bootstrap draws.

    Returns:
        JSON-ready ``{"metric", "kind", "units", "level", "a", "b", "difference": {"mean",
        "per_unit", "se", "se_method", "t_interval", "bootstrap_interval", "interval",
        "half_width"}, "verdict"}``; ``a`` / ``b`` hold each arm's mean and per-unit values.
    """
    values, difference = _estimate([a, b], targets, rows, metric, kind, fit_sizes, n_boot, seed, level)
    low, high = difference["interval"]
    return {
        "metric": metric,
        "kind": kind,
        "units": len(values[0]),
        "level": level,
        "a": {"mean": float(values[0].mean()), "per_unit": values[0].tolist()},
        "b": {"mean": float(values[1].mean()), "per_unit": values[1].tolist()},
        "difference": difference,
        "verdict": verdict(low, high),
    }


def metric_interval(
    scores: Sequence[np.ndarray],
    targets: np.ndarray | None = None,
    rows: Sequence[np.ndarray] | None = None,
    metric: str = "average_precision_macro",
    kind: str = "splits",
    fit_sizes: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """The same estimates for one arm's metric (not a difference): ``{"metric", "kind", "units",
    "level", "mean", "per_unit", "se", "se_method", "t_interval", "bootstrap_interval", "interval"}``."""
    values, estimate = _estimate([scores], targets, rows, metric, kind, fit_sizes, n_boot, seed, level)
    estimate.pop("half_width")
    return {"metric": metric, "kind": kind, "units": len(values[0]), "level": level, **estimate}


def comparison_line(name_a: str, name_b: str, result: dict, digits: int = 3) -> str:
    """One sentence: ``A vs B, metric: a vs b, difference d [lo, hi] (95%): verdict``."""
    d = result["difference"]
    lo, hi = d["interval"]
    f = f"{{:.{digits}f}}"
    return (
        f"{name_a} vs {name_b}, {result['metric']} over {result['units']} {result['kind']}: "
        f"{f.format(result['a']['mean'])} vs {f.format(result['b']['mean'])}, difference "
        f"{f.format(d['mean'])} [{f.format(lo)}, {f.format(hi)}] ({100 * result['level']:g}%): {result['verdict']}"
    )


def permutation_recall_at_1(ranks_fn, queries: np.ndarray, gallery: np.ndarray, permutations: int = 200, seed: int = 0):
    """Chance recall@1 of cross-modal retrieval from permutations of the query-gallery pairing.

    ``ranks_fn(queries, gallery)`` gives each query's partner rank (ties counted against the query,
    :func:`~.retrieval.retrieval_ranks`). Each permutation pairs query i with gallery row
    ``perm[i]`` and scores recall@1: what this model scores when the pairing carries no
    information. Returns ``{"mean", "p95", "permutations"}``.
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(permutations):
        perm = rng.permutation(len(gallery))
        values.append(float((ranks_fn(queries, gallery[perm]) <= 1).mean()))
    return {"mean": float(np.mean(values)), "p95": float(np.percentile(values, 95)), "permutations": permutations}
