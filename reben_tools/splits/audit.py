"""Spatial-correlation audit of dataset splits: how far is test from train, really?

For each split (a column of the input, or a strategy of :mod:`reben_tools.splits.strategies`
computed on the fly) the audit measures, over all patches of the input:

* **nearest train distance**: from every validation and test patch centre to the
  nearest train patch centre, in any tile, UTM zone or acquisition (ground
  distance through Earth-centred coordinates and a k-d tree); quantiles and the
  share within 1.2, 5, 10 and 25 km, and whether the nearest train patch is in the
  same acquisition, another acquisition of the same tile, or another tile;
* **join counts**: pairs of adjacent patches (centres at most 1.2 km apart, edge
  neighbours and overlapping patches of other tiles/acquisitions) whose splits
  differ, against the expectation and the spread under random permutations of
  the same split labels;
* **distributions**: per-split label prevalence and country shares and their
  Jensen-Shannon divergence from train;
* **counts** per split against the intended ratios.

:func:`run_audit` writes ``report.json`` (``schemas/audit_report.schema.json``),
PNG figures and ``report.md`` into a report directory and returns the report.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reben_tools.format.archive import SPLITS
from reben_tools.splits.strategies import (
    PATCH_SIDE_M,
    SplitInputError,
    SplitStrategy,
    categorical,
    get_strategy,
    load_patches,
    split_counts,
    PatchTable,
    STRATEGIES,
)

REPORT_FORMAT = "reben-tools-split-audit"
REPORT_VERSION = 1
DEFAULT_THRESHOLDS_M = (1200.0, 5000.0, 10000.0, 25000.0)
DISTANCE_TOLERANCE = 1.01
"""Thresholds are applied as ``distance <= threshold * 1.01``: edge neighbours are 1,200 m apart on
the UTM grid, i.e. 1,198.8 to 1,200.5 m on the ground (UTM scale factor 0.9996 to 1.001)."""
ADJACENCY_M = PATCH_SIDE_M * DISTANCE_TOLERANCE
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
SPLIT_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e", "test": "#d62728", "excluded": "#b0b0b0"}
SPLIT_PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
MAX_MAP_REGIONS = 12
MAX_MAP_PIXELS = 480
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
    strategy: dict | None = None
    codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        codes = np.full(len(self.values), -1, dtype=np.int8)
        for index, split in enumerate(SPLITS):
            codes[self.values == split] = index
        self.codes = codes


# --------------------------------------------------------------------------- measures


def _clean(value):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def nearest_distances(query: np.ndarray, reference: np.ndarray, tree=None) -> tuple[np.ndarray, np.ndarray]:
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
) -> dict:
    """Quantiles, mean and share within each threshold of nearest distances (metres).

    ``same_tile``: bool per query, its nearest reference patch lies in the same tile;
    ``colocated_other_acquisition``: bool per query, a reference patch of another
    acquisition lies within half a patch (600 m), i.e. the same place imaged again.
    """
    if len(distance) == 0:
        return {"patches": 0, "quantiles_m": None, "mean_m": None, "share_within": None, "nearest_in": None}
    quantiles = np.quantile(distance, QUANTILES)
    summary = {
        "patches": int(len(distance)),
        "quantiles_m": {f"{q:g}": float(v) for q, v in zip(QUANTILES, quantiles)},
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
    query: np.ndarray, reference: np.ndarray, query_product: np.ndarray, reference_product: np.ndarray, tree=None
) -> np.ndarray:
    """bool[m]: some reference patch of another acquisition lies within :data:`COLOCATED_M`
    (checked among the 8 nearest reference patches)."""
    from scipy.spatial import cKDTree

    tree = tree if tree is not None else cKDTree(reference)
    k = min(8, len(reference))
    distance, index = tree.query(query, k=k, distance_upper_bound=COLOCATED_M, workers=QUERY_WORKERS)
    distance = distance.reshape(len(query), k)
    index = index.reshape(len(query), k)
    found = np.isfinite(distance)
    other = np.zeros(found.shape, dtype=bool)
    other[found] = reference_product[index[found]] != np.repeat(query_product, k).reshape(found.shape)[found]
    return other.any(axis=1)


def nearest_split_distances(
    patches: PatchTable, codes: np.ndarray, thresholds_m: Sequence[float]
) -> tuple[dict, dict[str, np.ndarray]]:
    """Nearest-distance summaries for validation->train, test->train, evaluation (validation and
    test)->train and test->validation, and the raw distances per query set (for figures)."""
    from scipy.spatial import cKDTree

    points = patches.geocentric
    summaries, raw, parts, trees = {}, {}, {}, {}
    for name, query_code, reference_code in (
        ("validation_to_train", 1, 0), ("test_to_train", 2, 0), ("test_to_validation", 2, 1)
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
        np.concatenate([a, b]) for a, b in zip(parts["validation_to_train"], parts["test_to_train"])
    )
    query_counts = {
        "validation_to_train": int(np.sum(codes == 1)), "test_to_train": int(np.sum(codes == 2)),
        "evaluation_to_train": int(np.sum((codes == 1) | (codes == 2))), "test_to_validation": int(np.sum(codes == 2)),
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


def join_counts(codes: np.ndarray, pairs: np.ndarray, permutations: int = 20, seed: int = 0) -> dict:
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
    n_pairs = int(len(a))
    observed = _pair_counts(a, b)
    rng = np.random.default_rng(seed)
    assigned_pairs = pairs[keep]
    simulated = []
    if n_pairs and permutations > 0:
        labels = codes[assigned]
        position = np.full(len(codes), -1, dtype=np.int64)
        position[assigned] = np.arange(n_total)
        left, right = position[assigned_pairs[:, 0]], position[assigned_pairs[:, 1]]
        for _ in range(permutations):
            shuffled = rng.permutation(labels)
            simulated.append(_pair_counts(shuffled[left], shuffled[right]))
    simulated = np.array(simulated, dtype=np.float64) if simulated else np.zeros((0, 3, 3))

    def entry(obs: float, expected: float, sims: np.ndarray) -> dict:
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


def label_distributions(matrix: np.ndarray, names: list[str], codes: np.ndarray) -> dict:
    """Per-split label prevalence (share of the split's patches carrying each label), label
    frequency divergence from train, and the largest prevalence gap to train."""
    prevalence, occurrences = {}, {}
    for index, split in enumerate(SPLITS):
        rows = matrix[codes == index]
        occurrences[split] = rows.sum(axis=0).astype(np.float64)
        prevalence[split] = (rows.mean(axis=0) if len(rows) else np.full(len(names), np.nan)).tolist()
    divergence = {s: js_divergence(occurrences[s], occurrences["train"]) for s in SPLITS[1:]}
    gap = {}
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


def country_distributions(index: np.ndarray, vocabulary: Sequence[str], codes: np.ndarray) -> dict:
    """Per-split country shares and their divergence from train (``index``: int[n] into ``vocabulary``)."""
    counts = {}
    for i, split in enumerate(SPLITS):
        counts[split] = np.bincount(index[codes == i], minlength=len(vocabulary)).astype(np.float64)
    shares = {
        s: {str(v): (float(c / counts[s].sum()) if counts[s].sum() else None) for v, c in zip(vocabulary, counts[s])}
        for s in SPLITS
    }
    return {
        "names": [str(v) for v in vocabulary],
        "shares": shares,
        "js_divergence_from_train": {s: js_divergence(counts[s], counts["train"]) for s in SPLITS[1:]},
    }


def count_summary(values: np.ndarray, intended: Mapping[str, float]) -> dict:
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


# --------------------------------------------------------------------------- driver


def _splits_to_audit(
    patches: PatchTable,
    split_columns: Sequence[str] | None,
    strategies: Sequence[str | SplitStrategy] | None,
    strategy_options: Mapping[str, Mapping] | None,
) -> list[SplitUnderAudit]:
    table = patches.table
    if split_columns is None and strategies is None:
        split_columns = ["split"] if "split" in table.column_names else []
        strategies = list(STRATEGIES)
    split_columns = list(split_columns or [])
    strategies = list(strategies or [])
    if not split_columns and not strategies:
        raise SplitInputError(f"{patches.source}: nothing to audit (give split columns or strategies)")
    out: list[SplitUnderAudit] = []
    for column in split_columns:
        if column not in table.column_names:
            raise SplitInputError(f"{patches.source}: no split column {column!r} (columns: {table.column_names})")
        values = table.column(column).to_numpy(zero_copy_only=False).astype(object)
        value_codes, value_names = categorical(table.column(column))
        allowed = np.array([name in SPLITS for name in value_names] + [True], dtype=bool)
        known = allowed[value_codes]  # code -1 (null) picks the trailing True
        if not known.all():
            rows = np.flatnonzero(~known)
            listed = ", ".join(f"row {int(r)}: {values[r]!r}" for r in rows[:5])
            raise SplitInputError(
                f"{patches.source}: column {column!r} has {len(rows)} value(s) other than {list(SPLITS)} or null: {listed}"
            )
        out.append(SplitUnderAudit(column, "column", values, {"train": 0.5, "validation": 0.25, "test": 0.25}))
    names = {s.name for s in out}
    options = strategy_options or {}
    for strategy in strategies:
        chosen = strategy if isinstance(strategy, SplitStrategy) else get_strategy(strategy, **options.get(strategy, {}))
        name = chosen.name if chosen.name not in names else f"{chosen.name} (strategy)"
        names.add(name)
        out.append(
            SplitUnderAudit(
                name, "strategy", chosen.assign(patches), dict(chosen.intended_ratios),
                {"name": chosen.name, "options": chosen.options()},
            )
        )
    return out


def audit_patches(
    patches: PatchTable,
    splits: Sequence[SplitUnderAudit],
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    permutations: int = 20,
    seed: int = 0,
) -> tuple[dict, dict]:
    """The report dictionary and the raw arrays the figures need."""
    from tqdm.auto import tqdm

    pairs = adjacency_pairs(patches)
    labels = patches.label_matrix()
    entries, raw = [], {}
    for split in tqdm(splits, desc="auditing splits", unit="split", disable=len(splits) < 2):
        distances, raw_distances = nearest_split_distances(patches, split.codes, thresholds_m)
        entry = {
            "name": split.name,
            "source": split.source,
            "strategy": split.strategy,
            "counts": count_summary(split.values, split.intended_ratios),
            "nearest": distances,
            "joins": join_counts(split.codes, pairs, permutations=permutations, seed=seed),
            "labels": label_distributions(labels[0], labels[1], split.codes) if labels is not None else None,
            "countries": country_distributions(patches.country_codes, patches.country_names, split.codes)
            if patches.country_codes is not None else None,
        }
        entries.append(entry)
        raw[split.name] = raw_distances
    grid_zones = sorted({t[:3] for t in patches.tile_names})
    report = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "input": {
            "path": patches.source,
            "patches": len(patches),
            "tiles": len(patches.tile_names),
            "acquisitions": len(patches.product_names),
            "grid_zones": grid_zones,
            "has_labels": labels is not None,
            "has_country": patches.country_codes is not None,
            "position_source": "ulx/uly/crs columns"
            if all(c in patches.table.column_names for c in ("ulx", "uly", "crs"))
            else "MGRS tile in the patch id + x, y",
            "tile_side_m": sorted({float(v) for v in np.unique(patches.tile_side_m)}),
        },
        "settings": {
            "thresholds_m": [float(t) for t in thresholds_m],
            "distance_tolerance": DISTANCE_TOLERANCE,
            "adjacency_m": ADJACENCY_M,
            "quantiles": list(QUANTILES),
            "permutations": int(permutations),
            "seed": int(seed),
            "distance_frame": "WGS84 Earth-centred Cartesian (EPSG:4978), patch centres",
        },
        "splits": entries,
        "figures": [],
        "findings": [],
    }
    report["findings"] = findings(report)
    return _clean(report), raw


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _km(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:.1f} km"


def findings(report: dict) -> list[str]:
    """Plain-language findings derived from the report's numbers."""
    out = []
    first = report["settings"]["thresholds_m"][0]
    for entry in report["splits"]:
        name = entry["name"]
        test = entry["nearest"]["test_to_train"]
        if test["patches"] and test["share_within"]:
            within = test["share_within"][f"{first:g}"]
            sentence = (
                f"{name}: {_pct(within)} of test patches have a train patch within {first / 1000:g} km "
                f"(median distance to train {_km(test['quantiles_m']['0.5'])})"
            )
            near = test["nearest_in"]
            if within and near and near["other_tile"] > 0:
                sentence += f"; for {_pct(near['other_tile'])} of test patches the nearest train patch lies in another tile"
            if near and near["colocated_other_acquisition"] > 0:
                sentence += (f"; {_pct(near['colocated_other_acquisition'])} of test patches show a place that train "
                             "holds from another acquisition")
            out.append(sentence + ".")
        cross = entry["joins"]["cross_split"]
        if cross["ratio_to_random"] is not None:
            out.append(
                f"{name}: {cross['observed']:,} of {entry['joins']['adjacent_pairs']:,} adjacent pairs cross splits, "
                f"{cross['ratio_to_random']:.2f}x what a random assignment gives"
                + (f" (z = {cross['z_score']:.1f})." if cross["z_score"] is not None else ".")
            )
        deviations = entry["counts"]["deviation"]
        worst = max(SPLITS, key=lambda s: abs(deviations[s]))
        if abs(deviations[worst]) > 0.02:
            out.append(
                f"{name}: {worst} holds {_pct(entry['counts']['observed_ratios'][worst])} of the assigned patches, "
                f"intended {_pct(entry['counts']['intended_ratios'][worst])}."
            )
        if entry["counts"]["counts"]["excluded"]:
            out.append(
                f"{name}: {entry['counts']['counts']['excluded']:,} patches "
                f"({_pct(entry['counts']['excluded_share'])}) are in no split (buffer or missing split)."
            )
        if entry["labels"]:
            divergence = entry["labels"]["js_divergence_from_train"]
            gap = entry["labels"]["largest_prevalence_gap"].get("test")
            if divergence.get("test") is not None and gap:
                out.append(
                    f"{name}: label frequencies of test diverge from train by JS {divergence['test']:.4f}; "
                    f"largest prevalence gap: {gap['label']} ({100 * gap['difference']:.1f} points)."
                )
    return out


# --------------------------------------------------------------------------- figures


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "split"


def _png(figure, tight: bool = True) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(figure)
    return buffer.getvalue()


def split_map_figure(patches: PatchTable, split: SplitUnderAudit) -> bytes:
    """Patches by split, one panel per region (country, else UTM grid zone), rasterised at the
    patch size in EPSG:3035 (largest regions first, at most ``MAX_MAP_REGIONS``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if patches.country_codes is not None:
        inverse, names = patches.country_codes, patches.country_names
    else:
        zones = sorted({t[:3] for t in patches.tile_names})
        zone_of_tile = np.array([zones.index(t[:3]) for t in patches.tile_names], dtype=np.int64)
        inverse, names = zone_of_tile[patches.tile_codes], zones
    sizes = np.bincount(inverse, minlength=len(names))
    order = np.argsort(-sizes, kind="stable")[:MAX_MAP_REGIONS]
    columns = min(4, len(order))
    rows = math.ceil(len(order) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.2 * rows), squeeze=False)
    colours = ListedColormap(["white", SPLIT_COLOURS["train"], SPLIT_COLOURS["validation"], SPLIT_COLOURS["test"], SPLIT_COLOURS["excluded"]])
    value = np.where(split.codes >= 0, split.codes + 1, 4).astype(np.uint8)
    xy = patches.common_grid
    for axis, index in zip(axes.flat, order):
        members = np.flatnonzero(inverse == index)
        east, north = xy[members, 0], xy[members, 1]
        extent = max(east.max() - east.min(), north.max() - north.min()) + PATCH_SIDE_M
        pixel = max(PATCH_SIDE_M, extent / MAX_MAP_PIXELS)
        columns_px = int((east.max() - east.min()) // pixel) + 1
        rows_px = int((north.max() - north.min()) // pixel) + 1
        image = np.zeros((rows_px, columns_px), dtype=np.uint8)
        image[((north.max() - north) // pixel).astype(int), ((east - east.min()) // pixel).astype(int)] = value[members]
        axis.imshow(
            image, cmap=colours, vmin=0, vmax=4, interpolation="nearest",
            extent=(east.min() / 1000, (east.min() + columns_px * pixel) / 1000,
                    (north.max() - rows_px * pixel) / 1000, north.max() / 1000),
        )
        axis.set_title(
            f"{names[index]}: {len(members):,} patches\n{columns_px * pixel / 1000:,.0f} x {rows_px * pixel / 1000:,.0f} km",
            fontsize=8,
        )
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(order):]:
        axis.axis("off")
    figure.legend(handles=[Patch(color=SPLIT_COLOURS[s], label=s) for s in (*SPLITS, "excluded")],
                  loc="lower center", ncol=4, fontsize=8)
    figure.suptitle(f"Patches by split: {split.name} (EPSG:3035, north up)", fontsize=11)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.08, wspace=0.08, hspace=0.25)
    return _png(figure, tight=False)


def distance_histogram_figure(raw: Mapping[str, Mapping[str, np.ndarray]], thresholds_m: Sequence[float]) -> bytes:
    """Histograms of the distance from validation and test patches to the nearest train patch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(raw)
    figure, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), squeeze=False, sharex=True)
    largest = max([float(np.max(d)) for r in raw.values() for d in r.values() if len(d)] or [1.0]) / 1000
    upper = min(max(30.0, largest), 100.0)
    bins = np.arange(0.0, upper + 1.2, 1.2)
    for axis, name in zip(axes[:, 0], names):
        for key, split in (("validation_to_train", "validation"), ("test_to_train", "test")):
            distance = raw[name].get(key, np.empty(0)) / 1000
            if len(distance):
                axis.hist(np.minimum(distance, bins[-1] - 1e-9), bins=bins, histtype="step", linewidth=1.5,
                          color=SPLIT_COLOURS[split], label=f"{split} (n={len(distance):,})")
        for threshold in thresholds_m:
            axis.axvline(threshold / 1000, color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(name, fontsize=9)
        axis.set_ylabel("patches", fontsize=8)
        axis.set_yscale("symlog", linthresh=10)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    axes[-1, 0].set_xlabel(f"distance to the nearest train patch (km; last bin holds >= {bins[-2]:.0f} km); dotted: thresholds")
    figure.suptitle("Nearest train patch, any tile or acquisition", fontsize=11)
    return _png(figure)


def label_figure(report: dict) -> bytes | None:
    """Label prevalence per split, one panel per audited split."""
    entries = [e for e in report["splits"] if e["labels"]]
    if not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = entries[0]["labels"]["names"]
    figure, axes = plt.subplots(1, len(entries), figsize=(5 * len(entries) + 3, 0.3 * len(names) + 1.5), squeeze=False, sharey=True)
    positions = np.arange(len(names))
    for axis, entry in zip(axes[0], entries):
        for offset, split in zip((-0.27, 0.0, 0.27), SPLITS):
            values = [v if v is not None else 0.0 for v in entry["labels"]["prevalence"][split]]
            axis.barh(positions + offset, values, height=0.27, color=SPLIT_COLOURS[split], label=split)
        axis.set_title(entry["name"], fontsize=9)
        axis.set_xlabel("share of patches with the label", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0, 0].set_yticks(positions, [n if len(n) < 40 else n[:37] + "..." for n in names])
    axes[0, 0].invert_yaxis()
    axes[0, -1].legend(fontsize=7)
    figure.suptitle("Label distribution per split", fontsize=11)
    return _png(figure)


# --------------------------------------------------------------------------- report


def markdown_report(report: dict) -> str:
    """An analyst's summary of the audit."""
    inp = report["input"]
    thresholds = report["settings"]["thresholds_m"]
    lines = [
        "# Split audit",
        "",
        f"Input: `{inp['path']}`: {inp['patches']:,} patches, {inp['tiles']} tiles, {inp['acquisitions']} acquisitions, "
        f"grid zones {', '.join(inp['grid_zones'])}. Positions from {inp['position_source']}; "
        f"tile side {', '.join(f'{s:,.0f} m' for s in inp['tile_side_m'])}.",
        "",
        "## Findings",
        "",
        *[f"- {f}" for f in report["findings"]],
        "",
        "## Comparison",
        "",
        "Distances are between patch centres on the ground, to the nearest train patch in any tile, "
        "UTM zone or acquisition. *Within* counts distances up to the threshold (x1.01, so edge "
        "neighbours count as within 1.2 km).",
        "",
    ]
    header = ["split", "train / val / test (excluded)", "test: median to train"]
    header += [f"test within {t / 1000:g} km" for t in thresholds]
    header += ["val within 1.2 km", "cross-split joins vs random", "JS labels, test vs train", "JS countries, test vs train"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for entry in report["splits"]:
        counts = entry["counts"]["counts"]
        test = entry["nearest"]["test_to_train"]
        validation = entry["nearest"]["validation_to_train"]
        cross = entry["joins"]["cross_split"]
        cells = [
            f"{entry['name']}" + (" (strategy)" if entry["source"] == "strategy" and "(strategy)" not in entry["name"] else ""),
            f"{counts['train']:,} / {counts['validation']:,} / {counts['test']:,} ({counts['excluded']:,})",
            _km(test["quantiles_m"]["0.5"]) if test["quantiles_m"] else "n/a",
        ]
        cells += [_pct(test["share_within"][f"{t:g}"]) if test["share_within"] else "n/a" for t in thresholds]
        cells.append(_pct(validation["share_within"]["1200"]) if validation["share_within"] and "1200" in validation["share_within"] else "n/a")
        cells.append(f"{cross['ratio_to_random']:.2f}x" if cross["ratio_to_random"] is not None else "n/a")
        js_labels = entry["labels"]["js_divergence_from_train"]["test"] if entry["labels"] else None
        js_countries = entry["countries"]["js_divergence_from_train"]["test"] if entry["countries"] else None
        cells.append(f"{js_labels:.4f}" if js_labels is not None else "n/a")
        cells.append(f"{js_countries:.4f}" if js_countries is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reading it: a split whose test patches sit within 1.2 km of train shares land-cover "
        "parcels, and often the same fields and forests, between training and evaluation; "
        "scores on such a test set are optimistic for new places. Cross-split joins well below "
        "a random assignment (ratio << 1) mean the splits are spatially compact; ratios near or "
        "above 1 mean they are interleaved.",
        "",
        "## Counts against intended ratios",
        "",
        "| split | " + " | ".join(f"{s} (intended)" for s in SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
    ]
    for entry in report["splits"]:
        c = entry["counts"]
        lines.append(
            f"| {entry['name']} | "
            + " | ".join(f"{_pct(c['observed_ratios'][s])} ({_pct(c['intended_ratios'][s])})" for s in SPLITS)
            + " |"
        )
    lines += ["", "## Where the nearest train patch is", "",
              "| split | query | nearest train in the same tile | in another tile | same place in train from another acquisition (<= 600 m) |",
              "|---|---|---|---|---|"]
    for entry in report["splits"]:
        for key in ("validation_to_train", "test_to_train"):
            near = entry["nearest"][key]["nearest_in"]
            if near:
                lines.append(
                    f"| {entry['name']} | {key.split('_')[0]} | {_pct(near['same_tile'])} | "
                    f"{_pct(near['other_tile'])} | {_pct(near['colocated_other_acquisition'])} |"
                )
    if report["figures"]:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in report["figures"]]
    lines += ["", "The full figures are in `report.json` (schema `schemas/audit_report.schema.json`).", ""]
    return "\n".join(lines)


def _write_outputs(out_dir: Path, files: Mapping[str, bytes]) -> None:
    """Write all files into a temporary sibling directory, then move them into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if not out_dir.exists():
            os.rename(tmp, out_dir)
        else:
            for name in files:
                os.replace(tmp / name, out_dir / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_audit(
    input_path: str | Path,
    out_dir: str | Path,
    split_columns: Sequence[str] | None = None,
    strategies: Sequence[str | SplitStrategy] | None = None,
    tile_side_m: float | None = None,
    strategy_options: Mapping[str, Mapping] | None = None,
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    permutations: int = 20,
    seed: int = 0,
    figures: bool = True,
) -> dict:
    """Audit splits of INPUT and write ``report.json``, ``report.md`` and PNG figures to ``out_dir``.

    Args:
        input_path: archive directory, ``patches.parquet`` or any parquet with ``patch_id``.
        out_dir: report directory (created; files in it are replaced).
        split_columns: columns of the input holding splits. With neither this nor
            ``strategies`` given: the input's ``split`` column (if any) and every strategy.
        strategies: strategy names (or instances) computed on the fly.
        tile_side_m: tile side for inputs without a ``tile_side_m`` column (default full tile).
        strategy_options: per strategy name, keyword options (e.g. ``{"v1-blocks": {"seed": 1}}``).
        thresholds_m: distance thresholds for the "share within" figures.
        permutations: random permutations for the join-count spread.
        seed: seed of those permutations.
        figures: render PNG figures.

    Returns:
        the report (as written to ``report.json``).

    Raises:
        SplitInputError: bad input (nothing is written).
    """
    patches = load_patches(input_path, tile_side_m=tile_side_m)
    options = dict(strategy_options or {})
    if tile_side_m is not None:
        options["reben"] = {"tile_side_m": tile_side_m, **options.get("reben", {})}
    splits = _splits_to_audit(patches, split_columns, strategies, options)
    report, raw = audit_patches(patches, splits, thresholds_m=thresholds_m, permutations=permutations, seed=seed)
    files: dict[str, bytes] = {}
    if figures:
        for split in splits:
            files[f"map_{_safe(split.name)}.png"] = split_map_figure(patches, split)
        files["nearest_train_distance.png"] = distance_histogram_figure(raw, thresholds_m)
        labels_png = label_figure(report)
        if labels_png is not None:
            files["label_distribution.png"] = labels_png
    report["figures"] = sorted(files)
    files["report.json"] = (json.dumps(report, indent=2, allow_nan=False) + "\n").encode("utf-8")
    files["report.md"] = markdown_report(report).encode("utf-8")
    _write_outputs(Path(out_dir), files)
    return report
