"""PNG figure of the probes: each probe's headline metrics, under the names the report uses.

Owns: plot_probes, probes_figure (matplotlib, Agg backend, imported lazily).
Does not own: the numbers plotted (probes.py), the metric names (probe_report.METRIC_NAMES), the
per-class F2 chart (probe_report.py).
May import: numpy, matplotlib (lazily); reben_tools.format.atomic; .probe_report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reben_tools.format.atomic import save_figure_atomic
from reben_tools.learn.evaluation.probe_report import METRIC_NAMES, TABLE_ROWS

FIGURE_METRICS = ("average_precision_macro", "average_precision_micro", "f2_macro", "f2_micro", "precision_macro")
"""The bars of each probe, left to right (the report's headline columns)."""


def plot_probes(results: dict, path: Path) -> None:
    """Write :func:`probes_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = probes_figure(results)
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def probes_figure(results: dict):
    """Bar chart of the last run's metrics per probe (test split), with the report's metric names.

    With the comparison protocol in ``results``, the AP bars carry its 95% interval (over the
    repeated held-out splits) as error bars, and the caption says so.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = dict(TABLE_ROWS)
    kinds = list(results["probes"])
    protocol = results.get("protocol") or {}
    fig, ax = plt.subplots(figsize=(9, 5.2), layout="constrained")
    width = 0.8 / len(kinds)
    x = np.arange(len(FIGURE_METRICS))
    for i, kind in enumerate(kinds):
        values = [results["probes"][kind].get(k) or 0.0 for k in FIGURE_METRICS]
        bars = ax.bar(x + i * width, values, width, label=names.get(kind, kind))
        intervals = protocol.get("probes", {}).get(kind, {})
        for j, key in enumerate(FIGURE_METRICS):
            if key in intervals:
                m = intervals[key]
                lo, hi = m["interval"]
                ax.errorbar(
                    x[j] + i * width,
                    m["mean"],
                    yerr=[[m["mean"] - lo], [hi - m["mean"]]],
                    fmt="o",
                    ms=3,
                    color="black",
                    capsize=3,
                    lw=1,
                )
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x + width * (len(kinds) - 1) / 2, [METRIC_NAMES[k] for k in FIGURE_METRICS], fontsize=11)
    ax.tick_params(axis="y", labelsize=10)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score on the test split", fontsize=11)
    title = f"probes on frozen features ({results['test_samples']:,} test patches)"
    if protocol:
        title += (
            f"\nblack: mean and 95% interval over {protocol['repeats']} splits of the "
            f"{protocol['patches']:,} held-out patches"
        )
    ax.set_title(title, fontsize=11)
    fig.legend(fontsize=10, loc="outside lower center", ncol=len(kinds))
    ax.grid(axis="y", alpha=0.3)
    return fig
