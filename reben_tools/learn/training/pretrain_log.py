"""Per-step log and curves of a pretraining run: ``steps.jsonl`` and ``curves.png``.

Owns: StepLog (append-only JSON-lines log of step figures, cut back to a checkpoint's step on
resume), plot_pretrain_curves.
Does not own: what the figures are (pretrain.py, croma_losses.py), the run directory's other files.
May import: matplotlib (lazily), the standard library; reben_tools.format.atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

from reben_tools.format.atomic import replaced_atomically, save_figure_atomic


class StepLog:
    """JSON lines, one per optimiser step, buffered and appended to ``path``.

    Lines are flushed with every checkpoint (and at the latest every 50 steps), so after a
    crash the file holds at least the steps of the last checkpoint; :meth:`truncate` drops
    the lines after a resumed checkpoint's step so no step appears twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pending: list[str] = []

    def truncate(self, step: int) -> None:
        """Keep only the lines of steps ``<= step`` (all lines are dropped for a fresh run)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text("utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        with replaced_atomically(self.path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept), "utf-8")

    def append(self, record: dict) -> None:
        self._pending.append(json.dumps(record))
        if len(self._pending) >= 50:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{line}\n" for line in self._pending))
        self._pending.clear()


def read_steps(path: Path) -> list[dict]:
    """The records of a ``steps.jsonl`` file (empty when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def plot_pretrain_curves(steps_path: Path, history: list[dict], path: Path) -> None:
    """Four panels over optimiser steps: losses, reconstruction per modality, temperature, retrieval accuracy.

    Validation figures (one per epoch) are drawn as markers at the epoch's last step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = read_steps(steps_path)
    x = [s["step"] for s in steps]
    val = [
        (h["step"], h["validation"])
        for h in history
        if isinstance(h.get("validation"), dict) and "loss" in h["validation"]
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    panels = [
        (axes[0], (("contrastive", "contrastive"), ("reconstruction", "reconstruction")), "losses", None),
        (
            axes[1],
            (("reconstruction_s1", "S1 (masked)"), ("reconstruction_s2", "S2 (masked)")),
            "reconstruction MSE",
            None,
        ),
        (axes[2], (("temperature", "temperature"),), "contrastive temperature", None),
        (axes[3], (("acc_s1_to_s2", "S1->S2"), ("acc_s2_to_s1", "S2->S1")), "in-batch retrieval accuracy", (0, 1)),
    ]
    for ax, series, title, ylim in panels:
        for key, label in series:
            (line,) = ax.plot(x, [s[key] for s in steps], lw=1, label=f"train {label}")
            if val and key in val[0][1]:
                ax.plot(
                    [v[0] for v in val],
                    [v[1][key] for v in val],
                    "o",
                    color=line.get_color(),
                    label=f"validation {label}",
                )
        ax.set(title=title, xlabel="step")
        if ylim:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
    plt.close(fig)
