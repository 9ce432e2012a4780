"""What a build reports: its counts, their text form and the map of patches by split.

Owns: :func:`make_summary` (candidates, kept, drops per reason, per split / country /


class / product), :func:`format_summary` and :func:`plot_map` / :func:`map_figure` (``summary_map.png``,
one panel per site or one map, chosen by extent).
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


PANEL_LIMIT = 6
"""At most this many sites get a panel each; more (a country-scale build) are drawn on one map."""
SPLIT_COLOURS = {"train": "#1b9e77", "validation": "#d95f02", "test": "#7570b3"}


def plot_map(
    splits: list[str],
    footprints: list,
    countries: CountryIndex,
    path: Path,
    sites: list[str] | None = None,
    patch_countries: list[str | None] | None = None,
) -> None:
    """PNG of the archive's patch footprints (EPSG:4326) coloured by split (see :func:`map_figure`)."""
    import matplotlib.pyplot as plt

    fig = map_figure(splits, footprints, countries, sites, patch_countries)
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def group_sites(footprints: list, sites: list[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, indices of its footprints) per site: the given site names (e.g. the MGRS tile of each
    patch), else the groups of touching footprints, named ``site 1``, ``site 2`` ... from west to east."""
    import shapely

    if sites is None:
        parts = shapely.get_parts(shapely.union_all(shapely.buffer(np.asarray(footprints, dtype=object), 0.005)))
        west_to_east = sorted(parts, key=lambda g: g.bounds[0])
        centres = shapely.centroid(np.asarray(footprints, dtype=object))
        sites = [""] * len(footprints)
        for number, part in enumerate(west_to_east, start=1):
            for i in np.flatnonzero(shapely.contains(part, centres)):
                sites[i] = f"site {number}"
    names = np.asarray(sites, dtype=object)
    order = sorted(set(sites), key=lambda name: min(footprints[i].bounds[0] for i in np.flatnonzero(names == name)))
    return [(name, np.flatnonzero(names == name)) for name in order]


def map_layout(footprints: list, groups: list[tuple[str, np.ndarray]], overview_bounds: tuple) -> str:
    """``"panels"`` (one panel per site at patch scale, the countries as an overview) when there are few
    sites, each small against the whole view; ``"single"`` (one map) for builds that cover a country."""
    import shapely

    if len(groups) > PANEL_LIMIT:
        return "single"
    span = max(overview_bounds[2] - overview_bounds[0], overview_bounds[3] - overview_bounds[1])
    for _, members in groups:
        minx, miny, maxx, maxy = shapely.total_bounds(np.asarray(footprints, dtype=object)[members])
        if max(maxx - minx, maxy - miny) > span / 4:
            return "single"
    return "panels"


def map_figure(
    splits: list[str],
    footprints: list,
    countries: CountryIndex,
    sites: list[str] | None = None,
    patch_countries: list[str | None] | None = None,
):
    """The ``summary_map.png`` Figure, its layout chosen by extent (:func:`map_layout`).

    ``panels``: one panel per site (``sites``: a name per patch, e.g. its tile; default: groups of
    touching footprints) zoomed to its patches, so the split pattern is readable patch by patch, and
    an overview of the countries with every site outlined and named. ``single``: one map that holds
    every patch and the whole outline of every country holding one (a build over many tiles).
    The legend (with the counts per split) sits below; no text overlaps another. A panel names the
    countries its patches were assigned (``patch_countries``, the archive's ``country``), else the
    outlines its patches touch.
    """
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")

    columns = {"split": splits} | ({"country": patch_countries} if patch_countries is not None else {})
    frame = gpd.GeoDataFrame(columns, geometry=footprints, crs="EPSG:4326")
    world = gpd.GeoDataFrame({"name": countries.names}, geometry=countries.geometries, crs=countries.metric_crs).to_crs(
        "EPSG:4326"
    )
    holding = world[world.intersects(frame.union_all().buffer(0.05))]
    bounds = _bounds_with(frame.total_bounds, holding)
    groups = group_sites(footprints, sites)
    if map_layout(footprints, groups, bounds) == "single":
        return _single_map(frame, world, holding, bounds)
    return _site_panels(frame, world, holding, bounds, groups)


def _bounds_with(bounds, holding) -> tuple:
    minx, miny, maxx, maxy = bounds
    if len(holding):
        cminx, cminy, cmaxx, cmaxy = holding.total_bounds
        minx, miny, maxx, maxy = min(minx, cminx), min(miny, cminy), max(maxx, cmaxx), max(maxy, cmaxy)
    return minx, miny, maxx, maxy


def _aspect(miny: float, maxy: float) -> float:
    return 1.0 / max(np.cos(np.radians((miny + maxy) / 2)), 0.1)


def _draw_patches(ax, frame, world=None) -> None:
    """Patches coloured by split, then the country borders (``world``) on top of them."""
    for split, colour in SPLIT_COLOURS.items():
        part = frame[frame["split"] == split]
        if len(part):
            part.plot(ax=ax, facecolor=colour, edgecolor="none", alpha=0.9)
    if world is not None:
        world.boundary.plot(ax=ax, color="#555555", linewidth=0.8)


def _legend(fig, frame) -> None:
    from matplotlib.patches import Patch

    counts = frame["split"].value_counts()
    fig.legend(
        handles=[Patch(color=c, label=f"{s} ({int(counts.get(s, 0))})") for s, c in SPLIT_COLOURS.items()],
        loc="outside lower center",
        ncol=3,
        fontsize=9,
    )


def _single_map(frame, world, holding, bounds):
    """One map: every patch and the whole outline of every country holding one; the figure takes the
    view's shape (so the map fills its width), country names beside the patches."""
    import matplotlib.pyplot as plt

    minx, miny, maxx, maxy = bounds
    pad_x, pad_y = max((maxx - minx) * 0.04, 0.02), max((maxy - miny) * 0.04, 0.02)
    aspect = _aspect(miny, maxy)
    shape = (maxx - minx + 2 * pad_x) / ((maxy - miny + 2 * pad_y) * aspect)  # width / height on paper
    map_height = 6.0
    map_width = float(np.clip(map_height * shape, 3.0, 12.0))
    map_height = float(np.clip(map_width / shape, 3.0, 9.0))
    fig, ax = plt.subplots(figsize=(map_width + 1.2, map_height + 1.6), dpi=110, layout="constrained")
    ax.set_label("map")
    world.plot(ax=ax, facecolor="#f2f2f2", edgecolor="#888888", linewidth=0.8)
    _draw_patches(ax, frame, world)
    ax.set_xlim(minx - pad_x, maxx + pad_x)
    ax.set_ylim(miny - pad_y, maxy + pad_y)
    ax.set_aspect(aspect)
    for name, geometry in zip(holding["name"], holding.geometry, strict=True):
        free = geometry.difference(frame.union_all().buffer(0.02))
        point = (free if not free.is_empty else geometry).representative_point()
        ax.annotate(name, (point.x, point.y), ha="center", va="center", color="#555555", fontsize=9)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    _legend(fig, frame)
    ax.set_title(f"{len(frame)} patches by split")
    return fig


def _site_panels(frame, world, holding, bounds, groups):
    """One panel per site at patch scale (a 1.2 km patch is many pixels wide), the countries as an overview."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(len(groups), 3)
    rows = -(-len(groups) // columns)
    fig = plt.figure(figsize=(3.6 * columns + 3.2, 3.5 * rows + 0.9), dpi=110, layout="constrained")
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[1.0] * columns + [0.85])
    for k, (name, members) in enumerate(groups):
        ax = fig.add_subplot(grid[k // columns, k % columns])
        ax.set_label(f"site:{name}")
        part = frame.iloc[members]
        minx, miny, maxx, maxy = part.total_bounds
        side = max(maxx - minx, (maxy - miny) * _aspect(miny, maxy)) * 0.55  # half of a square view, padded
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        world.plot(ax=ax, facecolor="#f2f2f2", edgecolor="#888888", linewidth=0.8)
        _draw_patches(ax, part, world)
        ax.set_xlim(cx - side, cx + side)
        ax.set_ylim(cy - side / _aspect(miny, maxy), cy + side / _aspect(miny, maxy))
        ax.set_aspect(_aspect(miny, maxy))
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("longitude", fontsize=8)
        ax.set_ylabel("latitude", fontsize=8)
        if "country" in part:  # the archive's assignment (the overview's outlines are coarser than the build's)
            where = sorted({c for c in part["country"] if c})
        else:
            where = [
                n for n, g in zip(holding["name"], holding.geometry, strict=True) if g.intersects(part.union_all())
            ]
        title = f"{k + 1}: {name}, {len(part)} patches" + (f"\n{', '.join(where)}" if where else "")
        ax.set_title(title, fontsize=9)
    overview = fig.add_subplot(grid[:, columns])
    overview.set_label("overview")
    _overview(overview, frame, world, holding, bounds, groups)
    _legend(fig, frame)
    fig.suptitle(f"{len(frame)} patches by split, one panel per site", fontsize=11)
    return fig


def _overview(ax, frame, world, holding, bounds: tuple, groups: list) -> None:
    """The countries holding patches, each site outlined and numbered as its panel; a country's name
    goes where its rendered text overlaps no site box and no number (:func:`_place_label`)."""
    import shapely
    from matplotlib.patches import Rectangle

    minx, miny, maxx, maxy = bounds
    pad = max(maxx - minx, maxy - miny) * 0.05
    world.plot(ax=ax, facecolor="#f2f2f2", edgecolor="#888888", linewidth=0.6)
    ax.set_xlim(minx - pad, maxx + pad)
    ax.set_ylim(miny - pad, maxy + pad)
    ax.set_aspect(_aspect(miny, maxy))
    boxes = [shapely.box(*frame.iloc[members].total_bounds) for _, members in groups]
    marks = []
    for number, site in enumerate(boxes, start=1):
        sminx, sminy, smaxx, smaxy = site.bounds
        ax.add_patch(Rectangle((sminx, sminy), smaxx - sminx, smaxy - sminy, fill=False, edgecolor="#c00000", lw=1.5))
        east = (sminx + smaxx) / 2 > (minx + maxx) / 2  # the number on the side facing the middle
        marks.append(
            ax.annotate(
                str(number),
                (sminx if east else smaxx, (sminy + smaxy) / 2),
                xytext=(-3 if east else 3, 0),
                textcoords="offset points",
                ha="right" if east else "left",
                va="center",
                fontsize=8,
                fontweight="bold",
                color="#c00000",
            )
        )
    renderer = ax.figure.canvas.get_renderer()
    taken = shapely.union_all([_data_box(ax, mark.get_window_extent(renderer)) for mark in marks] + boxes)
    taken = taken.buffer(pad * 0.3)
    for name, geometry in zip(holding["name"], holding.geometry, strict=True):
        label = _place_label(ax, renderer, name, geometry, taken)
        taken = taken.union(_data_box(ax, label.get_window_extent(renderer)))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("overview", fontsize=9)


def _data_box(ax, extent):
    """A rendered text's window extent as a shapely box in the axes' data coordinates."""
    import shapely

    (x0, y0), (x1, y1) = ax.transData.inverted().transform([[extent.x0, extent.y0], [extent.x1, extent.y1]])
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _place_label(ax, renderer, name: str, geometry, taken):
    """``name`` inside ``geometry`` at the candidate point nearest its middle whose text box stays in the
    axes and clear of ``taken`` (site boxes, numbers, other names); its representative point when none is."""
    import shapely

    view = _view_box(ax)
    inside = geometry.intersection(view)
    area = inside if not inside.is_empty else geometry
    middle = area.representative_point()
    gx0, gy0, gx1, gy1 = area.bounds
    grid = [shapely.Point(x, y) for x in np.linspace(gx0, gx1, 9) for y in np.linspace(gy0, gy1, 9)]
    candidates = [middle] + sorted((p for p in grid if inside.contains(p)), key=middle.distance)
    for point in candidates:
        label = ax.annotate(name, (point.x, point.y), ha="center", va="center", color="#555555", fontsize=8)
        box = _data_box(ax, label.get_window_extent(renderer))
        if view.contains(box) and not box.intersects(taken):
            return label
        label.remove()
    return ax.annotate(name, (middle.x, middle.y), ha="center", va="center", color="#555555", fontsize=8)


def _view_box(ax):
    import shapely

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
