"""Learning-rate schedule of reBEN's recipe: linear warm-up from lr/10, then cosine to lr/10,
and the per-parameter multipliers of layer-wise lr decay (for fine-tuning transformers).

Owns: lr_factor, effective_warmup, layer_of, layer_decay_multipliers.
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


EMBEDDING_PARTS = ("patch_embed", "cls_token", "pos_embed")
"""Parameter-name parts that mark a transformer's embedding layer (layer 0)."""


def layer_of(name: str, depth: int) -> int:
    """Layer of a parameter for layer-wise lr decay, from its dotted name.

    The embeddings (a part in :data:`EMBEDDING_PARTS`) are layer 0, ``...blocks.i...`` is layer
    ``i + 1``, and everything after the blocks (final norm, head) is ``depth + 1``.
    """
    block = _block_index(name)
    if block is not None:
        return block + 1
    if any(p in EMBEDDING_PARTS for p in name.split(".")):
        return 0
    return depth + 1


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "blocks" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def layer_decay_multipliers(names: list[str], decay: float) -> dict[str, float]:
    """Learning-rate multiplier of every parameter under layer-wise decay (BEiT / MAE fine-tuning).

    A parameter of layer ``l`` (:func:`layer_of`) gets ``decay ** (depth + 1 - l)``: 1 for the
    head, ``decay`` for the last block, ``decay ** (depth + 1)`` for the embeddings.

    Raises:
        ValueError: ``decay`` not in (0, 1], or no parameter belongs to numbered ``blocks``.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer-wise lr decay must be in (0, 1], got {decay}")
    blocks = [b for b in map(_block_index, names) if b is not None]
    if not blocks:
        raise ValueError(
            "layer-wise lr decay needs a transformer with numbered blocks (name.blocks.N...); this model has none"
        )
    depth = max(blocks) + 1
    return {n: decay ** (depth + 1 - layer_of(n, depth)) for n in names}
