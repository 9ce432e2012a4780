"""PNG figure of a training run: curves per epoch.

Owns: plot_curves, curves_figure (matplotlib, Agg backend, imported lazily).
Does not own: the per-class metric chart (metrics.py), the numbers plotted (loop.py, probes.py).
May import: numpy, matplotlib (lazily); reben_tools.format.atomic.
"""

from __future__ import annotations

from pathlib import Path

from reben_tools.format.atomic import save_figure_atomic


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, validation loss, validation macro/micro AP and learning rate per epoch (PNG)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(history)
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def curves_figure(history: list[dict]):
    """The :func:`plot_curves` Figure; the epoch axes are ticked at whole epochs only (a 2-epoch run
    showed 1.25, 1.5 ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["validation"].get("loss") for h in history], "o-", label="validation")
    axes[0].set(title="BCE loss", xlabel="epoch")
    axes[0].legend()
    for key, label in (
        ("average_precision_macro", "macro AP"),
        ("average_precision_micro", "micro AP"),
        ("f1_macro", "macro F1"),
    ):
        axes[1].plot(epochs, [h["validation"].get(key) for h in history], "o-", label=label)
    axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1))
    axes[1].legend()
    axes[2].plot(epochs, [h["lr"] for h in history], "o-")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in axes:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # at least one whole epoch wide, even for a 1-epoch run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    return fig
