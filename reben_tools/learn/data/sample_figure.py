"""Pictures of single samples: :func:`plot_sample`, behind ``ReBENDataset.plot`` and ``reben show``.

Like torchgeo's ``dataset.plot(sample)``: one row of panels, the Sentinel-2 true-colour
image (B04, B03, B02), Sentinel-1 VV and VH, and the reference map in the CORINE legend's own
colours, with the patch's labels as the title. Panels whose bands the sample does not hold
are left out; the reference map needs the patch's CLC codes (``reference_map``).

Owns: :func:`plot_sample`, :func:`stretch`, :func:`wrap_names` (titles broken between class names).
Does not own: reading samples (``learn.dataset``), the CORINE legend (``format.labels``).
May import: numpy, matplotlib (lazily), ``reben_tools.format``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from reben_tools.format.labels import NO_POLYGON_CODE, clc_legend

RGB_BANDS = ("B04", "B03", "B02")


def stretch(values: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Values scaled to [0, 1] between their ``low`` and ``high`` percentiles (float32, same shape).

    A constant image maps to 0.
    """
    values = np.asarray(values, dtype=np.float32)
    lo, hi = np.percentile(values, [low, high])
    if not hi > lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def wrap_names(prefix: str, names: Sequence[str], width: int) -> str:
    """``prefix`` and the comma-separated ``names`` in lines of at most ``width`` characters, broken
    between names only (class names hold commas and spaces: "Transitional woodland, shrub"). A name
    longer than a whole line is the one thing wrapped inside."""
    if not names:
        return f"{prefix} none"
    lines, current = [], prefix
    for i, name in enumerate(names):
        piece = name + ("," if i < len(names) - 1 else "")
        if current != prefix and len(current) + 1 + len(piece) > width:
            lines.append(current)
            current = piece
        else:
            current = f"{current} {piece}"
    lines.append(current)
    return "\n".join(textwrap.fill(line, width) if len(line) > width else line for line in lines)


def plot_sample(
    image: np.ndarray,
    bands: Sequence[str],
    labels: Sequence[str],
    reference_map: np.ndarray | None = None,
    patch_id: str | None = None,
    statistics: Mapping[str, tuple[float, float]] | None = None,
    prediction: Sequence[str] | None = None,
    show_titles: bool = True,
):
    """A Figure of one sample.

    Args:
        image: float32 (C, H, W), channel ``c`` being band ``bands[c]``; normalised when
            ``statistics`` is given (undone before display, each panel is then stretched
            between its 2nd and 98th percentile).
        bands: the band name of each channel.
        labels: the patch's class names (the title).
        reference_map: uint16 (120, 120) CLC codes (999 where no polygon), or None.
        patch_id: shown above the labels.
        statistics: per band (mean, std) that normalised ``image``.
        prediction: predicted class names, shown under the labels.
        show_titles: titles on the panels.

    Returns:
        a matplotlib Figure (constrained layout).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image = np.asarray(image, dtype=np.float32)
    index = {band: i for i, band in enumerate(bands)}

    def band(name: str) -> np.ndarray:
        values = image[index[name]]
        if statistics is not None:
            mean, std = statistics[name]
            values = values * std + mean
        return values

    panels: list[tuple[str, np.ndarray, dict]] = []
    if all(b in index for b in RGB_BANDS):
        rgb = np.stack([stretch(band(b)) for b in RGB_BANDS], axis=-1)
        panels.append(("Sentinel-2 RGB (B04, B03, B02)", rgb, {}))
    panels.extend(
        (f"Sentinel-1 {name}", stretch(band(name)), {"cmap": "gray", "vmin": 0, "vmax": 1})
        for name in ("VV", "VH")
        if name in index
    )
    legend_handles = []
    if reference_map is not None:
        legend = clc_legend()
        codes = np.asarray(reference_map)
        present = sorted(int(c) for c in np.unique(codes))
        colours = [np.array(legend[c].rgb) / 255 if c in legend else np.array([1.0, 1.0, 1.0]) for c in present]
        lookup = np.searchsorted(present, codes)
        panels.append(
            (
                "Reference map (CORINE 2018)",
                lookup,
                {"cmap": ListedColormap(colours), "vmin": -0.5, "vmax": len(present) - 0.5, "interpolation": "nearest"},
            )
        )
        for code, colour in zip(present, colours, strict=True):
            name = (
                "no CORINE polygon" if code == NO_POLYGON_CODE else (legend[code].name if code in legend else "unknown")
            )
            legend_handles.append(
                Patch(
                    facecolor=(float(colour[0]), float(colour[1]), float(colour[2])),
                    edgecolor="#555555",
                    linewidth=0.5,
                    label=textwrap.fill(f"{code} {name}", 48),
                )
            )
    if not panels:
        raise ValueError(f"nothing to plot: the sample has none of {RGB_BANDS + ('VV', 'VH')} and no reference map")
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.3 * len(panels), 3.3 + 0.4 * max(1, len(legend_handles) // 2)),
        squeeze=False,
        layout="constrained",
    )
    for axis, (title, data, style) in zip(axes[0], panels, strict=True):
        axis.imshow(data, **style)
        axis.set_xticks([])
        axis.set_yticks([])
        if show_titles:
            axis.set_title(title, fontsize=9)
    if legend_handles:
        figure.legend(
            handles=legend_handles,
            loc="outside lower center",
            ncol=min(2, len(legend_handles)),
            fontsize=7,
            title="reference map",
            title_fontsize=7,
        )
    if show_titles:
        lines = [] if patch_id is None else [patch_id]
        width = max(40, 28 * len(panels))  # characters of 9 pt type across the panels
        lines.append(wrap_names("labels:", labels, width))
        if prediction is not None:
            lines.append(wrap_names("predicted:", prediction, width))
        figure.suptitle("\n".join(lines), fontsize=9)
    return figure
