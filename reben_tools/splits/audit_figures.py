"""Figures of the split audit: split maps, distance histograms, label prevalence (PNG bytes).

Owns: :func:`split_map_figure`, :func:`distance_histogram_figure`, :func:`label_figure` (PNG
bytes) and the Figures behind them (``*_plot``, which the layout tests inspect), the split
colours and map size limits.
Does not own: the measures (``splits.audit_measures``), the report and where files go
(``splits.audit``).
May import: ``format.layout``, ``splits.patches``, ``splits.audit_measures``, numpy,
matplotlib and pyproj (lazily).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reben_tools.format.layout import SPLITS
from reben_tools.splits.audit_measures import SplitUnderAudit
from reben_tools.splits.patches import PATCH_SIDE_M, PatchTable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SPLIT_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e", "test": "#d62728", "excluded": "#b0b0b0"}
MAX_MAP_REGIONS = 12
MAX_MAP_PIXELS = 480


# --------------------------------------------------------------------------- figures


def _png(figure: Figure, tight: bool = True) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(figure)
    return buffer.getvalue()


def _set_pads(figure: Figure, h_pad: float | None = None, w_pad: float | None = None) -> None:
    """Padding of a figure made with ``layout="constrained"`` (inches; None keeps the current one)."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = figure.get_layout_engine()
    if not isinstance(engine, ConstrainedLayoutEngine):
        raise TypeError(f"expected a constrained-layout figure, got {type(engine).__name__}")
    engine.set(h_pad=h_pad, w_pad=w_pad)


def split_map_figure(patches: PatchTable, split: SplitUnderAudit) -> bytes:
    """Patches by split, one panel per region (country, else UTM grid zone), rasterised at the
    patch size in EPSG:3035 (largest regions first, at most ``MAX_MAP_REGIONS``); PNG bytes."""
    return _png(split_map_plot(patches, split))


def split_map_plot(patches: PatchTable, split: SplitUnderAudit) -> Figure:
    """The :func:`split_map_figure` as a matplotlib Figure (constrained layout: the title,
    panel titles and legend never overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names: list[str]
    if patches.country_codes is not None and patches.country_names is not None:
        inverse, names = patches.country_codes, patches.country_names
    else:
        zones = sorted({t[:3] for t in patches.tile_names})
        zone_of_tile = np.array([zones.index(t[:3]) for t in patches.tile_names], dtype=np.int64)
        inverse, names = zone_of_tile[patches.tile_codes], zones
    sizes = np.bincount(inverse, minlength=len(names))
    order = np.argsort(-sizes, kind="stable")[:MAX_MAP_REGIONS]
    columns = min(4, len(order))
    rows = math.ceil(len(order) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 4.2 * rows + 0.9), squeeze=False, layout="constrained"
    )
    colours = ListedColormap(
        ["white", SPLIT_COLOURS["train"], SPLIT_COLOURS["validation"], SPLIT_COLOURS["test"], SPLIT_COLOURS["excluded"]]
    )
    value = np.where(split.codes >= 0, split.codes + 1, 4).astype(np.uint8)
    xy = patches.common_grid
    for axis, index in zip(axes.flat, order, strict=False):
        members = np.flatnonzero(inverse == index)
        east, north = xy[members, 0], xy[members, 1]
        extent = max(east.max() - east.min(), north.max() - north.min()) + PATCH_SIDE_M
        pixel = max(PATCH_SIDE_M, extent / MAX_MAP_PIXELS)
        columns_px = int((east.max() - east.min()) // pixel) + 1
        rows_px = int((north.max() - north.min()) // pixel) + 1
        image = np.zeros((rows_px, columns_px), dtype=np.uint8)
        image[((north.max() - north) // pixel).astype(int), ((east - east.min()) // pixel).astype(int)] = value[members]
        axis.imshow(
            image,
            cmap=colours,
            vmin=0,
            vmax=4,
            interpolation="nearest",
            extent=(
                east.min() / 1000,
                (east.min() + columns_px * pixel) / 1000,
                (north.max() - rows_px * pixel) / 1000,
                north.max() / 1000,
            ),
        )
        axis.set_title(
            f"{names[index]}: {len(members):,} patches\n{columns_px * pixel / 1000:,.0f} x {rows_px * pixel / 1000:,.0f} km",
            fontsize=8,
        )
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(order) :]:
        axis.axis("off")
    handles = [Patch(color=SPLIT_COLOURS[s], label=s) for s in SPLITS]
    handles.append(Patch(color=SPLIT_COLOURS["excluded"], label="excluded (in no split)"))
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=0.6, label="no patch (dropped or not imaged)"))
    figure.legend(handles=handles, loc="outside lower center", ncol=3 if columns < 3 else 5, fontsize=8)
    figure.suptitle(f"Patches by split: {split.name} (EPSG:3035, north up)", fontsize=11)
    _set_pads(figure, h_pad=0.1, w_pad=0.1)
    return figure


def distance_histogram_figure(raw: Mapping[str, Mapping[str, np.ndarray]], thresholds_m: Sequence[float]) -> bytes:
    """Histograms of the distance from validation and test patches to the nearest train patch; PNG bytes."""
    return _png(distance_histogram_plot(raw, thresholds_m))


def distance_histogram_plot(raw: Mapping[str, Mapping[str, np.ndarray]], thresholds_m: Sequence[float]) -> Figure:
    """The :func:`distance_histogram_figure` as a Figure: 1.2 km bins up to one bin past the
    largest distance (at most 100 km, the last bin holding everything beyond), patch counts on a
    linear axis, thresholds drawn where they fall inside the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(raw)
    figure, axes = plt.subplots(
        len(names), 1, figsize=(8, 2.4 * len(names) + 0.8), squeeze=False, sharex=True, layout="constrained"
    )
    shown = [r.get(key, np.empty(0)) for r in raw.values() for key in ("validation_to_train", "test_to_train")]
    largest = max([float(np.max(d)) for d in shown if len(d)] or [1200.0]) / 1000
    step = PATCH_SIDE_M / 1000
    upper = min(step * (math.floor(largest / step + 1e-9) + 2), 100.0)
    bins = np.arange(0.0, upper + step / 2, step)
    capped = largest > bins[-1]
    for axis, name in zip(axes[:, 0], names, strict=True):
        for key, split in (("validation_to_train", "validation"), ("test_to_train", "test")):
            distance = raw[name].get(key, np.empty(0)) / 1000
            if len(distance):
                axis.hist(
                    np.minimum(distance, bins[-1] - 1e-9),
                    bins=bins,
                    histtype="step",
                    linewidth=1.5,
                    color=SPLIT_COLOURS[split],
                    label=f"{split} (n={len(distance):,})",
                )
        for threshold in thresholds_m:
            if threshold / 1000 <= bins[-1]:
                axis.axvline(threshold / 1000, color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(name, fontsize=9)
        axis.set_ylabel("patches", fontsize=8)
        axis.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, min_n_ticks=3))
        axis.set_xlim(0.0, bins[-1])
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="upper right")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(nbins=12, steps=[1, 1.2, 2, 2.4, 5, 6, 10]))
    beyond = f"; last bin holds >= {bins[-2]:.0f} km" if capped else ""
    axes[-1, 0].set_xlabel(f"distance to the nearest train patch (km{beyond}); dotted: thresholds")
    figure.suptitle("Nearest train patch, any tile or acquisition", fontsize=11)
    _set_pads(figure, h_pad=0.15)
    return figure


def label_figure(report: dict[str, Any]) -> bytes | None:
    """Label prevalence per split, one panel per audited split; PNG bytes (None without labels)."""
    figure = label_plot(report)
    return None if figure is None else _png(figure)


def label_plot(report: dict[str, Any]) -> Figure | None:
    """The :func:`label_figure` as a Figure: full class names, wrapped onto two lines where long."""
    entries = [e for e in report["splits"] if e["labels"]]
    if not entries:
        return None
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = entries[0]["labels"]["names"]
    wrapped = [textwrap.fill(n, 38) for n in names]
    height = 0.42 * sum(1 + w.count("\n") * 0.6 for w in wrapped) + 1.6
    figure, axes = plt.subplots(
        1, len(entries), figsize=(4 * len(entries) + 3.5, height), squeeze=False, sharey=True, layout="constrained"
    )
    positions = np.arange(len(names))
    for axis, entry in zip(axes[0], entries, strict=True):
        for offset, split in zip((-0.27, 0.0, 0.27), SPLITS, strict=True):
            values = [v if v is not None else 0.0 for v in entry["labels"]["prevalence"][split]]
            axis.barh(positions + offset, values, height=0.27, color=SPLIT_COLOURS[split], label=split)
        axis.set_title(entry["name"], fontsize=9)
        axis.set_xlabel("share of patches", fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=4))
        axis.tick_params(labelsize=7)
    axes[0, 0].set_yticks(positions, wrapped)
    axes[0, 0].invert_yaxis()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    figure.suptitle("Label distribution per split", fontsize=11)
    _set_pads(figure, w_pad=0.15)
    return figure
