"""Figures of the split audit: split maps, distance histograms, label prevalence (PNG bytes).

Owns: :func:`split_map_figure`, :func:`distance_histogram_figure`, :func:`label_figure`, the
split colours and map size limits.
Does not own: the measures (``splits.audit_measures``), the report and where files go
(``splits.audit``).
May import: ``format.layout``, ``splits.patches``, ``splits.audit_measures``, numpy,
matplotlib and pyproj (lazily).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from reben_tools.format.layout import SPLITS
from reben_tools.splits.patches import PATCH_SIDE_M, PatchTable
from reben_tools.splits.audit_measures import SplitUnderAudit

SPLIT_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e", "test": "#d62728", "excluded": "#b0b0b0"}
MAX_MAP_REGIONS = 12
MAX_MAP_PIXELS = 480


# --------------------------------------------------------------------------- figures


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
