"""What a build reports: its counts, their text form and the map of patches by split.

Owns: :func:`make_summary` (candidates, kept, drops per reason, per split / country /


class / product), :func:`format_summary` and :func:`plot_map` (``summary_map.png``).
Does not own: writing report.json or the metadata (finalise).
May import: reben_tools.format, reben_tools.build.countries, .discovery, .rows, matplotlib, geopandas.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from reben_tools.build.countries import CountryIndex
from reben_tools.build.pipeline.discovery import Inputs
from reben_tools.build.pipeline.rows import DROP_REASONS
from reben_tools.format.layout import SPLITS

MAP_FILE = "summary_map.png"


def make_summary(rows: pa.Table, dropped: Counter, candidates: int, inputs: Inputs, clc_issues: dict) -> dict:
    """Counts: candidates, kept, dropped per reason, per split, per country, per class, per product."""
    def count(column: str) -> dict:
        return dict(sorted(Counter(rows.column(column).to_pylist()).items()))

    classes: Counter = Counter()
    for labels in rows.column("labels").to_pylist():
        classes.update(labels)
    flagged = int(np.sum(rows.column("contains_seasonal_snow").to_numpy(zero_copy_only=False)
                         | rows.column("contains_cloud_or_shadow").to_numpy(zero_copy_only=False))) if rows.num_rows else 0
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
    lines = [f"patches: {summary['kept']} kept of {summary['candidate_patches']} candidates "
             f"({summary['flagged_snow_cloud_shadow']} flagged snow/cloud/shadow)"]
    lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()))
    lines.append("per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    lines.append("per country: " + ", ".join(f"{k} {v}" for k, v in summary["per_country"].items()))
    lines.append("per class:")
    lines.extend(f"  {v:6d}  {k}" for k, v in sorted(summary["per_class"].items(), key=lambda kv: (-kv[1], kv[0])))
    if summary["skipped_inputs"] or summary["clc_issues"]:
        lines.append(f"skipped inputs: {summary['skipped_inputs']}, CORINE issues: {summary['clc_issues']} (see report.json)")
    return "\n".join(lines)


def plot_map(splits: list[str], footprints: list, countries: CountryIndex, path: Path) -> None:
    """PNG of the archive's patch footprints (EPSG:4326) coloured by split, over the configured countries."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from shapely import box

    frame = gpd.GeoDataFrame({"split": splits}, geometry=footprints, crs="EPSG:4326")
    colours = {"train": "#1b9e77", "validation": "#d95f02", "test": "#7570b3"}
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    minx, miny, maxx, maxy = frame.total_bounds
    pad_x, pad_y = max((maxx - minx) * 0.15, 0.05), max((maxy - miny) * 0.15, 0.05)
    world = gpd.GeoDataFrame({"name": countries.names}, geometry=countries.geometries, crs=countries.metric_crs).to_crs("EPSG:4326")
    world.plot(ax=ax, facecolor="#f2f2f2", edgecolor="#888888", linewidth=0.8)
    for split, colour in colours.items():
        part = frame[frame["split"] == split]
        if len(part):
            part.plot(ax=ax, facecolor=colour, edgecolor="none", alpha=0.9)
    ax.set_xlim(minx - pad_x, maxx + pad_x)
    ax.set_ylim(miny - pad_y, maxy + pad_y)
    ax.set_aspect(1.0 / max(np.cos(np.radians((miny + maxy) / 2)), 0.1))
    view = box(minx - pad_x, miny - pad_y, maxx + pad_x, maxy + pad_y)
    for name, geometry in zip(world["name"], world.geometry):
        point = geometry.intersection(view).representative_point()
        if not point.is_empty:
            ax.annotate(name, (point.x, point.y), ha="center", color="#555555", fontsize=9)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    counts = frame["split"].value_counts()
    ax.legend(handles=[Patch(color=c, label=f"{s} ({int(counts.get(s, 0))})") for s, c in colours.items()], loc="best")
    ax.set_title(f"{len(frame)} patches by split")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
