"""Configuration of a training run: :class:`RunSettings` (what every run shares), :class:`TrainConfig`
(supervised training and its recipe defaults), and the run errors.

Owns: RunSettings, TrainConfig, TRAJECTORY_FIELDS, DEFAULTS, TrainingError, StoppedByPeer, check_numbers (the
numeric option rules of every run).
Does not own: devices (devices.py), the schedule (schedule.py), checkpoints (checkpoints.py), the loop (loop.py).
May import: the standard library only (it is the base every other training module builds on).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any


class TrainingError(RuntimeError):
    """A run cannot start or go on; the message says what to change.

    ``all_processes`` is true when every process of a torchrun run raises the same error at the
    same point (agreed through a collective, or from the same configuration): then only the main
    process needs to print it.
    """

    def __init__(self, message: str, all_processes: bool = False) -> None:
        super().__init__(message)
        self.all_processes = all_processes


class StoppedByPeer(TrainingError):
    """This process stopped because another process of the run failed alone and left (that one says why)."""


# --------------------------------------------------------------------------- configuration


@dataclass(kw_only=True)
class RunSettings:
    """How a run of either objective runs (``reben train``, ``reben pretrain``): free to change between a run
    and its resumption, and the same for both. :class:`TrainConfig` and
    :class:`reben_tools.learn.training.pretrain.PretrainConfig` extend it with what defines their runs.
    """

    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    compile: bool = False
    max_steps: int | None = None
    checkpoint_every: int | None = None
    progress: bool = True
    deterministic: bool = False
    """Deterministic algorithms only (cuDNN/cuBLAS): bit-exact resume on GPUs, at some speed cost."""

    def check(self) -> None:
        """Check every numeric field (:func:`check_numbers`); one-line :class:`TrainingError` on the first bad one."""
        check_numbers(asdict(self))


@dataclass
class TrainConfig(RunSettings):
    """Everything that defines a training run.

    ``init`` names published encoder weights the model starts from (``dofa_base:PATH``);
    ``layer_decay`` turns on layer-wise lr decay (each block below the head gets ``lr`` times
    ``layer_decay`` per layer, see :func:`reben_tools.learn.runtime.schedule.layer_decay_multipliers`).

    Fields in :data:`TRAJECTORY_FIELDS` determine the sequence of weights; a resumed run
    keeps them from its checkpoint (passing a different value is an error). The others
    (those of :class:`RunSettings`: ``max_steps``, ``workers``, ``device`` ...) may change between a
    run and its resumption.
    """

    archive: str
    bands: str | list[str]
    model: str
    out: str
    metadata: list[str] = field(default_factory=list)
    """reBEN metadata files of a plain LMDB ``archive`` (``--metadata``); empty: the archive's own,
    or reBEN's files found beside the LMDB (``format.sources.open_archive_source``)."""
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
    include_snowy: bool | None = None
    """Keep patches flagged for seasonal snow (ConfigILM's flag); None = ``include_snow_cloud``."""
    include_cloudy: bool | None = None
    """Keep patches flagged for cloud or shadow (ConfigILM's flag); None = ``include_snow_cloud``."""
    train_fraction: float | None = None
    """Fit on this stratified share of the train split (``splits.subsets``); None = all of it."""
    subset_seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    mix: str = "none"
    mix_prob: float = 0.5
    mix_area: tuple[float, float] = (0.1, 0.5)
    init: str | None = None
    layer_decay: float | None = None
    accumulate: int = 1
    """Micro-batches per optimiser step (gradient accumulation): the global batch and the schedule stay the same."""
    sampler: str = "global"
    """How an epoch's samples are dealt to processes: ``global`` (one permutation of all samples,
    strided over processes) or ``shard-local`` (each node reads only the shards assigned to it;
    ``learn.data.shard_sampler``)."""
    # free to change between a run and its resumption (with those of RunSettings)
    evaluate_test: bool = True
    sync_batchnorm: bool = True
    """Under torchrun, convert BatchNorm layers to SyncBatchNorm (normalise over the global batch)."""


TRAJECTORY_FIELDS = (
    "bands",
    "model",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "dropout",
    "drop_path",
    "warmup_steps",
    "min_lr_factor",
    "patience",
    "fusion",
    "seed",
    "flips",
    "class_order",
    "include_snow_cloud",
    "model_kwargs",
    "include_snowy",
    "include_cloudy",
    "mix",
    "mix_prob",
    "mix_area",
    "train_fraction",
    "subset_seed",
    "init",
    "layer_decay",
    "accumulate",
    "sampler",
)
DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if callable(f.default_factory) else f.default
    for f in fields(TrainConfig)
    if f.default is not MISSING or f.default_factory is not MISSING
}
"""Default value of every TrainConfig field that has one (the recipe)."""


_NUMBER_RULES = {
    # field: (flag, check, what the value must be)
    "epochs": ("--epochs", lambda v: v >= 1, "an integer >= 1"),
    "batch_size": ("--batch-size", lambda v: v >= 1, "an integer >= 1"),
    "lr": ("--lr", lambda v: v >= 0, "a number >= 0"),
    "weight_decay": ("--weight-decay", lambda v: v >= 0, "a number >= 0"),
    "dropout": ("--dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "drop_path": ("--drop-path", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "warmup_steps": ("--warmup-steps", lambda v: v >= 0, "an integer >= 0"),
    "min_lr_factor": ("min_lr_factor", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "patience": ("--patience", lambda v: v >= 1, "an integer >= 1"),
    "seed": ("--seed", lambda v: v >= 0, "an integer >= 0"),
    "workers": ("--workers", lambda v: v is None or v >= 0, "an integer >= 0"),
    "max_steps": ("--max-steps", lambda v: v is None or v >= 1, "an integer >= 1"),
    "checkpoint_every": ("--checkpoint-every", lambda v: v is None or v >= 1, "an integer >= 1"),
    "accumulate": ("--accumulate", lambda v: v >= 1, "an integer >= 1"),
    "mask_ratio": ("--mask-ratio", lambda v: 0 < v < 1, "a number in (0, 1)"),
}


def check_numbers(values: dict) -> None:
    """Check the numeric options among ``values`` (config field -> value; ``None`` = not given), of either
    objective's config: both share these field names.

    Raises:
        TrainingError: one line naming the flag, the rule and the value, e.g.
            ``--batch-size must be an integer >= 1 (got 0)``.
    """
    for name, (flag, ok, rule) in _NUMBER_RULES.items():
        value = values.get(name)
        if value is None:
            continue
        bad = isinstance(value, float) and not math.isfinite(value)
        if bad or not ok(value):
            raise TrainingError(f"{flag} must be {rule} (got {value})", all_processes=True)
    patch = (values.get("model_kwargs") or {}).get("patch_size")
    if patch is not None and patch < 1:
        raise TrainingError(f"--patch-size must be an integer >= 1 (got {patch})", all_processes=True)
