"""Configuration of a training run: :class:`TrainConfig`, its recipe defaults, and the run errors.

Owns: TrainConfig, TRAJECTORY_FIELDS, DEFAULTS, TrainingError.
Does not own: devices (devices.py), the schedule (schedule.py), checkpoints (checkpoints.py), the loop (loop.py).
May import: the standard library only (it is the base every other training module builds on).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields


class TrainingError(RuntimeError):
    """A run cannot start or go on; the message says what to change."""


# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Fields in :data:`TRAJECTORY_FIELDS` determine the sequence of weights; a resumed run
    keeps them from its checkpoint (passing a different value is an error). The others
    (``max_steps``, ``workers``, ``device`` ...) may change between a run and its resumption.
    """

    archive: str
    bands: str | list[str]
    model: str
    out: str
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    dropout: float = 0.15
    drop_path: float = 0.15
    warmup_steps: int = 1000
    min_lr_factor: float = 0.1
    patience: int = 5
    fusion: str = "early"
    seed: int = 0
    flips: bool = True
    class_order: str = "alphabetical"
    include_snow_cloud: bool = False
    train_fraction: float | None = None
    """Fit on this stratified share of the train split (``splits.subsets``); None = all of it."""
    subset_seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    mix: str = "none"
    mix_prob: float = 0.5
    mix_area: tuple[float, float] = (0.1, 0.5)
    # free to change between a run and its resumption
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    compile: bool = False
    max_steps: int | None = None
    checkpoint_every: int | None = None
    evaluate_test: bool = True
    progress: bool = True


TRAJECTORY_FIELDS = (
    "bands", "model", "epochs", "batch_size", "lr", "weight_decay", "dropout", "drop_path", "warmup_steps",
    "min_lr_factor", "patience", "fusion", "seed", "flips", "class_order", "include_snow_cloud", "model_kwargs",
    "mix", "mix_prob", "mix_area",
    "train_fraction", "subset_seed",
)
DEFAULTS = {
    f.name: f.default if f.default is not MISSING else f.default_factory()
    for f in fields(TrainConfig)
    if f.default is not MISSING or f.default_factory is not MISSING
}
"""Default value of every TrainConfig field that has one (the recipe)."""
