"""PNG figure of the probes: one bar chart of each probe's headline metrics.

Owns: plot_probes (matplotlib, Agg backend, imported lazily).
Does not own: the numbers plotted (probes.py), the per-class F2 chart (probe_report.py).
May import: numpy, matplotlib (lazily); reben_tools.format.atomic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_probes(results: dict, path: Path) -> None:
    """Bar chart (PNG) of macro/micro AP and F1 of each probe in :func:`reben_tools.learn.evaluation.probes.probe`'s ``results``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["probes"])
    keys = ("average_precision_macro", "average_precision_micro", "f1_macro", "f1_micro")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        vals = [results["probes"][kind][k] or 0.0 for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=kind)
    ax.set_xticks(np.arange(len(keys)) + width * (len(kinds) - 1) / 2, keys, fontsize=8)
    ax.set(ylim=(0, 1), title="probes on frozen features (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
