"""The run directory of a training run, and its metrics file.

A run directory holds::

    RUN_DIR/
      config.json               the run's configuration
      checkpoints/last.pt       written after every epoch (and at --max-steps / every N steps)
      checkpoints/best.pt       the epoch with the best validation macro AP
      metrics.json              per-epoch history, rewritten after every epoch and at the end
      curves.png                training loss, learning rate, validation AP per epoch
      test/metrics.json         the best checkpoint on the test split (end of training)
      test/per_class.png

Owns: LAST_CHECKPOINT, BEST_CHECKPOINT (the checkpoint file names), write_run_metrics.
Does not own: checkpoint contents and I/O (checkpoints.py), the curves (plots.py), the loop (loop.py).
May import: reben_tools.format.
"""

from __future__ import annotations

import math
from pathlib import Path

from reben_tools.format.atomic import write_json_atomic

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


def write_run_metrics(out: Path, history: list[dict], early: dict, status: str, extra: dict | None = None) -> dict:
    """Write (atomically) and return ``out/metrics.json``: status, best epoch and score, per-epoch ``history``.

    Args:
        early: the loop's early-stopping state (``best_score``, ``best_epoch``; -inf = no score yet).
        extra: further top-level entries (end of run: ``stopped_by``, ``steps``, ``test`` ...).
    """
    best = early["best_score"]
    metrics = {
        "status": status,
        "best_epoch": early["best_epoch"],
        "best_validation_average_precision_macro": None if best == -math.inf else best,
        "epochs": history,
        **(extra or {}),
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
