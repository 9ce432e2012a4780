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

Owns: choosing the splits to audit (columns, strategies), :func:`audit_patches` (the report
dictionary), findings, the Markdown report, writing the report directory (:func:`run_audit`).
Does not own: the measures (``splits.audit_measures``), the figures (``splits.audit_figures``),
the strategies (``splits.strategies``).
May import: ``format.layout``, ``splits.patches``, ``splits.strategies``,
``splits.audit_measures``, ``splits.audit_figures``, numpy.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reben_tools.format.layout import SPLITS
from reben_tools.format.outputs import check_output_path
from reben_tools.format.sources import ArchiveSource
from reben_tools.splits.audit_figures import distance_histogram_figure, label_figure, split_map_figure
from reben_tools.splits.audit_measures import (
    ADJACENCY_M,
    DEFAULT_THRESHOLDS_M,
    DISTANCE_TOLERANCE,
    QUANTILES,
    SplitUnderAudit,
    adjacency_pairs,
    count_summary,
    country_distributions,
    join_counts,
    label_distributions,
    nearest_split_distances,
)
from reben_tools.splits.patches import PatchTable, SplitInputError, categorical, load_patches
from reben_tools.splits.strategies import STRATEGIES, SplitStrategy, get_strategy

REPORT_FORMAT = "reben-tools-split-audit"
REPORT_VERSION = 1


def _clean(value: object) -> object:
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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "split"


# --------------------------------------------------------------------------- driver


def _splits_to_audit(
    patches: PatchTable,
    split_columns: Sequence[str] | None,
    strategies: Sequence[str | SplitStrategy] | None,
    strategy_options: Mapping[str, Mapping[str, Any]] | None,
) -> list[SplitUnderAudit]:
    table = patches.table
    if split_columns is None:
        # the input's own split is always audited when it has one, also beside --strategy
        split_columns = ["split"] if "split" in table.column_names else []
        if strategies is None:
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
        chosen = (
            strategy if isinstance(strategy, SplitStrategy) else get_strategy(strategy, **options.get(strategy, {}))
        )
        values = chosen.assign(patches)
        same = next((i for i, s in enumerate(out) if s.source == "column" and _same_split(s.values, values)), None)
        if same is not None:
            # one row for identical splits: "split = reben" rather than two rows that repeat each other
            matching = out[same]
            out[same] = SplitUnderAudit(
                f"{matching.name} = {chosen.name}",
                "column",
                matching.values,
                matching.intended_ratios,
                {"name": chosen.name, "options": chosen.options()},
            )
            continue
        name = chosen.name if chosen.name not in names else f"{chosen.name} (strategy)"
        names.add(name)
        out.append(
            SplitUnderAudit(
                name,
                "strategy",
                values,
                dict(chosen.intended_ratios),
                {"name": chosen.name, "options": chosen.options()},
            )
        )
    return out


def _same_split(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two split columns assign every patch alike (None equal to None)."""
    return len(a) == len(b) and all(
        x == y or (x is None and y is None) for x, y in zip(a.tolist(), b.tolist(), strict=True)
    )


def audit_patches(
    patches: PatchTable,
    splits: Sequence[SplitUnderAudit],
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    permutations: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report dictionary and the raw arrays the figures need (``progress``: a bar over the splits)."""
    from tqdm.auto import tqdm

    pairs = adjacency_pairs(patches)
    labels = patches.label_matrix()
    entries, raw = [], {}
    for split in tqdm(splits, desc="auditing splits", unit="split", disable=not progress or len(splits) < 2):
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
            if patches.country_codes is not None and patches.country_names is not None
            else None,
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
    cleaned = _clean(report)
    assert isinstance(cleaned, dict)  # a dict stays a dict
    return cleaned, raw


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _km(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:.1f} km"


def findings(report: dict[str, Any]) -> list[str]:
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
                sentence += (
                    f"; for {_pct(near['other_tile'])} of test patches the nearest train patch lies in another tile"
                )
            if near and near["colocated_other_acquisition"] > 0:
                sentence += (
                    f"; {_pct(near['colocated_other_acquisition'])} of test patches show a place that train "
                    "holds from another acquisition"
                )
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


# --------------------------------------------------------------------------- report


def markdown_report(report: dict[str, Any]) -> str:
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
    header += [
        "val within 1.2 km",
        "cross-split joins vs random",
        "JS labels, test vs train",
        "JS countries, test vs train",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for entry in report["splits"]:
        counts = entry["counts"]["counts"]
        test = entry["nearest"]["test_to_train"]
        validation = entry["nearest"]["validation_to_train"]
        cross = entry["joins"]["cross_split"]
        cells = [
            f"{entry['name']}"
            + (" (strategy)" if entry["source"] == "strategy" and "(strategy)" not in entry["name"] else ""),
            f"{counts['train']:,} / {counts['validation']:,} / {counts['test']:,} ({counts['excluded']:,})",
            _km(test["quantiles_m"]["0.5"]) if test["quantiles_m"] else "n/a",
        ]
        cells += [_pct(test["share_within"][f"{t:g}"]) if test["share_within"] else "n/a" for t in thresholds]
        cells.append(
            _pct(validation["share_within"]["1200"])
            if validation["share_within"] and "1200" in validation["share_within"]
            else "n/a"
        )
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
    lines += [
        "",
        "## Where the nearest train patch is",
        "",
        "| split | query | nearest train in the same tile | in another tile | same place in train from another acquisition (<= 600 m) |",
        "|---|---|---|---|---|",
    ]
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
    input_path: str | Path | ArchiveSource,
    out_dir: str | Path,
    split_columns: Sequence[str] | None = None,
    strategies: Sequence[str | SplitStrategy] | None = None,
    tile_side_m: float | None = None,
    strategy_options: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    permutations: int = 20,
    seed: int = 0,
    figures: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit splits of INPUT and write ``report.json``, ``report.md`` and PNG figures to ``out_dir``.

    Args:
        input_path: archive directory, ``patches.parquet`` or any parquet with ``patch_id``, or an
            ArchiveSource (see :func:`reben_tools.splits.patches.load_patches`).
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
        progress: a progress bar over the splits.

    Returns:
        the report (as written to ``report.json``).

    Raises:
        SplitInputError: bad input (nothing is written).
    """
    check_output_path(out_dir, what="the audit folder")
    patches = load_patches(input_path, tile_side_m=tile_side_m)
    options = dict(strategy_options or {})
    if tile_side_m is not None:
        options["reben"] = {"tile_side_m": tile_side_m, **options.get("reben", {})}
    splits = _splits_to_audit(patches, split_columns, strategies, options)
    report, raw = audit_patches(
        patches, splits, thresholds_m=thresholds_m, permutations=permutations, seed=seed, progress=progress
    )
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
