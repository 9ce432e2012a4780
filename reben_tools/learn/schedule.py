"""Learning-rate schedule of reBEN's recipe: linear warm-up from lr/10, then cosine to lr/10.

Owns: lr_factor, effective_warmup.
Does not own: the optimiser and its parameter groups (built in loop.py), the run configuration (config.py).
May import: the standard library only.
"""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.1) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    Linear from ``min_factor`` to 1 over ``warmup_steps``, then a half cosine from 1 down to
    ``min_factor`` at ``total_steps``; ``min_factor`` after that.
    """
    if step < warmup_steps:
        return min_factor + (1.0 - min_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warm-up length used: the configured one, at most a tenth of the schedule.

    For reBEN (533 steps per epoch at batch 512, 100 epochs) this is the recipe's 1,000;
    it only shortens warm-up for small archives, where 1,000 steps could be the whole run.
    """
    return max(1, min(warmup_steps, total_steps // 10)) if warmup_steps > 0 else 0
