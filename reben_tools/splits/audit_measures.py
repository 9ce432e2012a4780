"""Measures of the split audit: distances to train, join counts, distributions, counts.

See :mod:`reben_tools.splits.audit` for what the audit reports and why.

Owns: :class:`SplitUnderAudit`, the distance thresholds and tolerances, nearest-split
distances (ground distance via Earth-centred coordinates and k-d trees), adjacency and join
counts, label/country distributions and Jensen-Shannon divergence, count summaries.
Does not own: choosing the splits and assembling the report (``splits.audit``), figures
(``splits.audit_figures``), patch tables (``splits.patches``).
May import: ``format.layout``, ``splits.patches``, numpy, scipy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reben_tools.format.layout import SPLITS
from reben_tools.splits.patches import PATCH_SIDE_M, PatchTable
from reben_tools.splits.strategies import split_counts

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

DEFAULT_THRESHOLDS_M = (1200.0, 5000.0, 10000.0, 25000.0)
DISTANCE_TOLERANCE = 1.01
"""Thresholds are applied as ``distance <= threshold * 1.01``: edge neighbours are 1,200 m apart on
the UTM grid, i.e. 1,198.8 to 1,200.5 m on the ground (UTM scale factor 0.9996 to 1.001)."""
ADJACENCY_M = PATCH_SIDE_M * DISTANCE_TOLERANCE
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
SPLIT_PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
QUERY_WORKERS = 2
"""Threads of the k-d tree queries (the target machine has 2 cores)."""


@dataclass
class SplitUnderAudit:
    """One split to audit.

    Attributes:
        name: how the report names it (a column name or a strategy name).
        source: ``"column"`` or ``"strategy"``.
        values: object[n] split names (``train``/``validation``/``test``) or None (excluded).
        intended_ratios: intended share of each split.
        strategy: strategy name and options when computed by a strategy.
    """

    name: str
    source: str
    values: np.ndarray
    intended_ratios: dict[str, float]
    strategy: dict[str, Any] | None = None
    codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        codes = np.full(len(self.values), -1, dtype=np.int8)
        for index, split in enumerate(SPLITS):
            codes[self.values == split] = index
        self.codes = codes


# --------------------------------------------------------------------------- measures


def nearest_distances(
    query: np.ndarray, reference: np.ndarray, tree: cKDTree | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (float64[m], metres) and index into ``reference`` of the nearest reference point."""
    from scipy.spatial import cKDTree

    tree = tree if tree is not None else cKDTree(reference)
    distance, index = tree.query(query, k=1, workers=QUERY_WORKERS)
    return np.asarray(distance, dtype=np.float64), np.asarray(index, dtype=np.int64)


def distance_summary(
    distance: np.ndarray,
    thresholds_m: Sequence[float],
    same_tile: np.ndarray | None = None,
    colocated_other_acquisition: np.ndarray | None = None,
) -> dict[str, Any]:
    """Quantiles, mean and share within each threshold of nearest distances (metres).

    ``same_tile``: bool per query, its nearest reference patch lies in the same tile;
    ``colocated_other_acquisition``: bool per query, a reference patch of another
    acquisition lies within half a patch (600 m), i.e. the same place imaged again.
    """
    if len(distance) == 0:
        return {"patches": 0, "quantiles_m": None, "mean_m": None, "share_within": None, "nearest_in": None}
    quantiles = np.quantile(distance, QUANTILES)
    summary = {
        "patches": len(distance),
        "quantiles_m": {f"{q:g}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
        "mean_m": float(distance.mean()),
        "share_within": {f"{t:g}": float(np.mean(distance <= t * DISTANCE_TOLERANCE)) for t in thresholds_m},
        "nearest_in": None,
    }
    if same_tile is not None and colocated_other_acquisition is not None:
        summary["nearest_in"] = {
            "same_tile": float(np.mean(same_tile)),
            "other_tile": float(np.mean(~same_tile)),
            "colocated_other_acquisition": float(np.mean(colocated_other_acquisition)),
        }
    return summary


COLOCATED_M = PATCH_SIDE_M / 2
"""Two patches whose centres are at most this far apart show (at least half of) the same place."""


def colocated_with_other_acquisition(
    query: np.ndarray,
    reference: np.ndarray,
    query_product: np.ndarray,
    reference_product: np.ndarray,
    tree: cKDTree | None = None,
) -> np.ndarray:
    """bool[m]: some reference patch of another acquisition lies within :data:`COLOCATED_M`
    (checked among the 8 nearest reference patches)."""
    from scipy.spatial import cKDTree

    tree = tree if tree is not None else cKDTree(reference)
    k = min(8, len(reference))
    distance, index = tree.query(query, k=k, distance_upper_bound=COLOCATED_M, workers=QUERY_WORKERS)
    distance = np.asarray(distance).reshape(len(query), k)
    index = np.asarray(index).reshape(len(query), k)
    found = np.isfinite(distance)
    other = np.zeros(found.shape, dtype=bool)
    other[found] = reference_product[index[found]] != np.repeat(query_product, k).reshape(found.shape)[found]
    return np.asarray(other.any(axis=1))


def nearest_split_distances(
    patches: PatchTable, codes: np.ndarray, thresholds_m: Sequence[float]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Nearest-distance summaries for validation->train, test->train, evaluation (validation and
    test)->train and test->validation, and the raw distances per query set (for figures)."""
    from scipy.spatial import cKDTree

    points = patches.geocentric
    summaries: dict[str, Any] = {}
    raw: dict[str, np.ndarray] = {}
    parts: dict[str, tuple[np.ndarray, ...]] = {}
    trees: dict[int, cKDTree] = {}
    for name, query_code, reference_code in (
        ("validation_to_train", 1, 0),
        ("test_to_train", 2, 0),
        ("test_to_validation", 2, 1),
    ):
        query = np.flatnonzero(codes == query_code)
        reference = np.flatnonzero(codes == reference_code)
        if len(query) == 0 or len(reference) == 0:
            parts[name] = (np.empty(0), np.empty(0, bool), np.empty(0, bool))
            continue
        if reference_code not in trees:
            trees[reference_code] = cKDTree(points[reference])
        tree = trees[reference_code]
        distance, index = nearest_distances(points[query], points[reference], tree)
        same_tile = patches.tile_codes[query] == patches.tile_codes[reference[index]]
        colocated = colocated_with_other_acquisition(
            points[query], points[reference], patches.product_codes[query], patches.product_codes[reference], tree
        )
        parts[name] = (distance, same_tile, colocated)
    parts["evaluation_to_train"] = tuple(
        np.concatenate([a, b]) for a, b in zip(parts["validation_to_train"], parts["test_to_train"], strict=True)
    )
    query_counts = {
        "validation_to_train": int(np.sum(codes == 1)),
        "test_to_train": int(np.sum(codes == 2)),
        "evaluation_to_train": int(np.sum((codes == 1) | (codes == 2))),
        "test_to_validation": int(np.sum(codes == 2)),
    }
    for name in ("validation_to_train", "test_to_train", "evaluation_to_train", "test_to_validation"):
        distance, same_tile, colocated = parts[name]
        if len(distance):
            summaries[name] = distance_summary(distance, thresholds_m, same_tile, colocated)
        else:
            summaries[name] = distance_summary(distance, thresholds_m)
            summaries[name]["patches"] = query_counts[name]
        raw[name] = distance
    return summaries, raw


def adjacency_pairs(patches: PatchTable, reach_m: float = ADJACENCY_M) -> np.ndarray:
    """int64[p, 2] index pairs (i < j) of patches whose centres are at most ``reach_m`` apart:
    edge neighbours in a grid and overlapping patches of other tiles or acquisitions."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(patches.geocentric).query_pairs(reach_m, output_type="ndarray")
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _pair_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64[3, 3] counts of unordered split-code pairs in the upper triangle (i <= j)."""
    counts = np.bincount(a * 3 + b, minlength=9).reshape(3, 3)
    return np.triu(counts + counts.T - np.diag(np.diag(counts)))


def join_counts(codes: np.ndarray, pairs: np.ndarray, permutations: int = 20, seed: int = 0) -> dict[str, Any]:
    """Join counts of adjacent pairs across splits vs a random permutation of the same labels.

    Only pairs whose patches both have a split count. The expectation under random
    permutation is exact: ``E[J_ab] = P * 2 n_a n_b / (N (N - 1))`` for ``P`` pairs and ``N``
    assigned patches; the spread comes from ``permutations`` seeded permutations.
    """
    codes = codes.astype(np.int64)
    a, b = codes[pairs[:, 0]], codes[pairs[:, 1]]
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    assigned = np.flatnonzero(codes >= 0)
    n_total = len(assigned)
    counts_per_split = np.bincount(codes[assigned], minlength=3).astype(np.float64)
    n_pairs = len(a)
    observed = _pair_counts(a, b)
    rng = np.random.default_rng(seed)
    assigned_pairs = pairs[keep]
    runs: list[np.ndarray] = []
    if n_pairs and permutations > 0:
        labels = codes[assigned]
        position = np.full(len(codes), -1, dtype=np.int64)
        position[assigned] = np.arange(n_total)
        left, right = position[assigned_pairs[:, 0]], position[assigned_pairs[:, 1]]
        for _ in range(permutations):
            shuffled = rng.permutation(labels)
            runs.append(_pair_counts(shuffled[left], shuffled[right]))
    simulated = np.array(runs, dtype=np.float64) if runs else np.zeros((0, 3, 3))

    def entry(obs: float, expected: float, sims: np.ndarray) -> dict[str, Any]:
        std = float(sims.std(ddof=1)) if len(sims) > 1 else None
        return {
            "observed": int(obs),
            "expected_random": float(expected),
            "random_mean": float(sims.mean()) if len(sims) else None,
            "random_std": std,
            "ratio_to_random": float(obs / expected) if expected > 0 else None,
            "z_score": float((obs - expected) / std) if std else None,
        }

    denominator = n_total * (n_total - 1)
    by_pair = {}
    total_obs, total_exp = 0, 0.0
    total_sims = np.zeros(len(simulated))
    for s, t in SPLIT_PAIRS:
        i, j = SPLITS.index(s), SPLITS.index(t)
        expected = n_pairs * 2 * counts_per_split[i] * counts_per_split[j] / denominator if denominator else 0.0
        sims = simulated[:, i, j]
        by_pair[f"{s}-{t}"] = entry(observed[i, j], expected, sims)
        total_obs += int(observed[i, j])
        total_exp += expected
        total_sims += sims
    return {
        "adjacent_pairs": n_pairs,
        "cross_split": entry(total_obs, total_exp, total_sims),
        "by_pair": by_pair,
        "share_of_pairs_crossing": float(total_obs / n_pairs) if n_pairs else None,
    }


def js_divergence(p: np.ndarray, q: np.ndarray) -> float | None:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two non-negative weight vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nonzero = x > 0
        return float(np.sum(x[nonzero] * np.log2(x[nonzero] / m[nonzero])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def label_distributions(matrix: np.ndarray, names: list[str], codes: np.ndarray) -> dict[str, Any]:
    """Per-split label prevalence (share of the split's patches carrying each label), label
    frequency divergence from train, and the largest prevalence gap to train."""
    prevalence, occurrences = {}, {}
    for index, split in enumerate(SPLITS):
        rows = matrix[codes == index]
        occurrences[split] = rows.sum(axis=0).astype(np.float64)
        prevalence[split] = (rows.mean(axis=0) if len(rows) else np.full(len(names), np.nan)).tolist()
    divergence = {s: js_divergence(occurrences[s], occurrences["train"]) for s in SPLITS[1:]}
    gap: dict[str, dict[str, object] | None] = {}
    for split in SPLITS[1:]:
        difference = np.abs(np.asarray(prevalence[split]) - np.asarray(prevalence["train"]))
        if np.all(np.isnan(difference)):
            gap[split] = None
        else:
            worst = int(np.nanargmax(difference))
            gap[split] = {"label": names[worst], "difference": float(difference[worst])}
    return {
        "names": names,
        "prevalence": prevalence,
        "js_divergence_from_train": divergence,
        "largest_prevalence_gap": gap,
    }


def country_distributions(index: np.ndarray, vocabulary: Sequence[str], codes: np.ndarray) -> dict[str, Any]:
    """Per-split country shares and their divergence from train (``index``: int[n] into ``vocabulary``)."""
    counts = {}
    for i, split in enumerate(SPLITS):
        counts[split] = np.bincount(index[codes == i], minlength=len(vocabulary)).astype(np.float64)
    shares = {
        s: {
            str(v): (float(c / counts[s].sum()) if counts[s].sum() else None)
            for v, c in zip(vocabulary, counts[s], strict=True)
        }
        for s in SPLITS
    }
    return {
        "names": [str(v) for v in vocabulary],
        "shares": shares,
        "js_divergence_from_train": {s: js_divergence(counts[s], counts["train"]) for s in SPLITS[1:]},
    }


def count_summary(values: np.ndarray, intended: Mapping[str, float]) -> dict[str, Any]:
    """Patches per split and their shares among the assigned (not excluded) patches, against
    the intended ratios."""
    counts = split_counts(values)
    total = len(values)
    assigned = total - counts["excluded"]
    observed = {s: (counts[s] / assigned if assigned else 0.0) for s in SPLITS}
    return {
        "counts": counts,
        "total": total,
        "assigned": assigned,
        "excluded_share": counts["excluded"] / total if total else 0.0,
        "intended_ratios": {s: float(intended.get(s, 0.0)) for s in SPLITS},
        "observed_ratios": observed,
        "intended_counts": {s: float(intended.get(s, 0.0)) * assigned for s in SPLITS},
        "deviation": {s: observed[s] - float(intended.get(s, 0.0)) for s in SPLITS},
    }
