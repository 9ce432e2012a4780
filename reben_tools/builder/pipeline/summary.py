"""What a build reports: its counts, their text form and the map of patches by split.

Owns: :func:`make_summary` (candidates, kept, drops per reason, per split / country /


class / product), :func:`format_summary` and :func:`plot_map` / :func:`map_figure` (``summary_map.png``).
Does not own: writing report.json or the metadata (finalise).
May import: reben_tools.format, reben_tools.builder.countries, .discovery, .rows, matplotlib, geopandas.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from reben_tools.builder.countries import CountryIndex
from reben_tools.builder.pipeline.discovery import Inputs
from reben_tools.builder.pipeline.rows import DROP_REASONS
from reben_tools.format.atomic import save_figure_atomic
from reben_tools.format.layout import SPLITS

MAP_FILE = "summary_map.png"


def make_summary(rows: pa.Table, dropped: Counter, candidates: int, inputs: Inputs, clc_issues: dict) -> dict:
    """Counts: candidates, kept, dropped per reason, per split, per country, per class, per product."""

    def count(column: str) -> dict:
        return dict(sorted(Counter(rows.column(column).to_pylist()).items()))

    classes: Counter = Counter()
    for labels in rows.column("labels").to_pylist():
        classes.update(labels)
    flagged = (
        int(
            np.sum(
                rows.column("contains_seasonal_snow").to_numpy(zero_copy_only=False)
                | rows.column("contains_cloud_or_shadow").to_numpy(zero_copy_only=False)
            )
        )
        if rows.num_rows
        else 0
    )
    return {
        "candidate_patches": candidates,
        "kept": rows.num_rows,
        "flagged_snow_cloud_shadow": flagged,
        "dropped": {k: int(dropped.get(k, 0)) for k in DROP_REASONS},
        "per_split": {s: count("split").get(s, 0) for s in SPLITS},
        "per_country": count("country"),
        "per_class": dict(sorted(classes.items())),
        "per_product": count("product"),
        "skipped_inputs": len(inputs.skipped),
        "clc_issues": len(clc_issues),
    }


def format_summary(summary: dict) -> str:
    """Human-readable lines of a build summary."""
    lines = [
        f"patches: {summary['kept']} kept of {summary['candidate_patches']} candidates "
        f"({summary['flagged_snow_cloud_shadow']} flagged snow/cloud/shadow)"
    ]
    lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()))
    lines.append("per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    lines.append("per country: " + ", ".join(f"{k} {v}" for k, v in summary["per_country"].items()))
    lines.append("per class:")
    lines.extend(f"  {v:6d}  {k}" for k, v in sorted(summary["per_class"].items(), key=lambda kv: (-kv[1], kv[0])))
    if summary["skipped_inputs"] or summary["clc_issues"]:
        lines.append(
            f"skipped inputs: {summary['skipped_inputs']}, CORINE issues: {summary['clc_issues']} (see report.json)"
        )
    return "\n".join(lines)


def plot_map(splits: list[str], footprints: list, countries: CountryIndex, path: Path) -> None:
    """PNG of the archive's patch footprints (EPSG:4326) coloured by split, over the configured countries."""
    import matplotlib.pyplot as plt

    fig = map_figure(splits, footprints, countries)
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def map_figure(splits: list[str], footprints: list, countries: CountryIndex):
    """The ``summary_map.png`` Figure: the view holds every patch and the whole outline of every
    country that holds one; the figure takes the view's shape (so the map fills its width), the
    legend sits below the map and country names beside the patches never overlap other text."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    frame = gpd.GeoDataFrame({"split": splits}, geometry=footprints, crs="EPSG:4326")
    colours = {"train": "#1b9e77", "validation": "#d95f02", "test": "#7570b3"}
    world = gpd.GeoDataFrame({"name": countries.names}, geometry=countries.geometries, crs=countries.metric_crs).to_crs(
        "EPSG:4326"
    )
    minx, miny, maxx, maxy = frame.total_bounds
    holding = world[world.intersects(frame.union_all().buffer(0.05))]
    if len(holding):
        cminx, cminy, cmaxx, cmaxy = holding.total_bounds
        minx, miny, maxx, maxy = min(minx, cminx), min(miny, cminy), max(maxx, cmaxx), max(maxy, cmaxy)
    pad_x, pad_y = max((maxx - minx) * 0.04, 0.02), max((maxy - miny) * 0.04, 0.02)
    aspect = 1.0 / max(np.cos(np.radians((miny + maxy) / 2)), 0.1)
    shape = (maxx - minx + 2 * pad_x) / ((maxy - miny + 2 * pad_y) * aspect)  # width / height on paper
    map_height = 6.0
    map_width = float(np.clip(map_height * shape, 3.0, 12.0))
    map_height = float(np.clip(map_width / shape, 3.0, 9.0))
    fig, ax = plt.subplots(figsize=(map_width + 1.2, map_height + 1.6), dpi=110, layout="constrained")
    world.plot(ax=ax, facecolor="#f2f2f2", edgecolor="#888888", linewidth=0.8)
    for split, colour in colours.items():
        part = frame[frame["split"] == split]
        if len(part):
            part.plot(ax=ax, facecolor=colour, edgecolor="none", alpha=0.9)
    ax.set_xlim(minx - pad_x, maxx + pad_x)
    ax.set_ylim(miny - pad_y, maxy + pad_y)
    ax.set_aspect(aspect)
    for name, geometry in zip(holding["name"], holding.geometry):
        free = geometry.difference(frame.union_all().buffer(0.02))
        point = (free if not free.is_empty else geometry).representative_point()
        ax.annotate(name, (point.x, point.y), ha="center", va="center", color="#555555", fontsize=9)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    counts = frame["split"].value_counts()
    fig.legend(
        handles=[Patch(color=c, label=f"{s} ({int(counts.get(s, 0))})") for s, c in colours.items()],
        loc="outside lower center",
        ncol=3,
        fontsize=9,
    )
    ax.set_title(f"{len(frame)} patches by split")
    return fig
