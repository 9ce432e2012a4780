"""Supervised training (``reben train``): a multi-label classifier on a reBEN archive, as an objective of
the training skeleton (:mod:`.skeleton`, which owns epochs, steps, synchronisation, checkpoints and resume).

The objective reproduces reBEN's published recipe by default: AdamW (weight
decay 0.01), lr 1e-3, global batch 512, dropout and drop-path 0.15, linear warm-up over
1,000 steps from lr/10 then cosine to lr/10, BCE-with-logits, random horizontal and vertical
flips (optionally CutMix or CutMix with label propagation first, ``--mix``), up to 100 epochs, early stopping (patience 5) and model
selection on validation macro average precision. On a GPU the model runs channels-last under bf16 autocast;
``torch.compile`` is optional. The run directory it fills is described in :mod:`.rundir`.

Under torchrun, BatchNorm becomes SyncBatchNorm on GPUs (``--no-sync-batchnorm``: per process), and rank 0's
buffers are broadcast before every validation and checkpoint.

Owns: train, Supervised (the objective: data, model, step, per-epoch validation and early stopping, the
checkpoint's contents, the end-of-run test evaluation).
Does not own: the skeleton (skeleton.py), configuration (config.py), devices (devices.py), processes and sampling
(distributed.py), loaders (loaders.py), augmentation (augment.py), checkpoint I/O (checkpoints.py), prediction
(predict.py), run-directory files (rundir.py), plots (plots.py), models (models/).
May import: numpy, torch; reben_tools.format; any reben_tools.learn module except probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import resolve_bands
from reben_tools.format.labels import class_names
from reben_tools.learn.data.augment import TrainMixer, random_flips
from reben_tools.learn.data.loaders import (
    DevicePreprocess,
    archive_identity,
    make_loader,
    open_dataset,
    run_source,
    split_indices,
    train_label_frequency,
    training_dataset,
)
from reben_tools.learn.data.mixing import MIX_MODES, parse_area_range
from reben_tools.learn.data.shard_sampler import eval_sampler, make_samplers
from reben_tools.learn.evaluation.metrics import HEADLINE_METRICS, multilabel_metrics, plot_per_class
from reben_tools.learn.evaluation.predict import merge_predictions, predict, prior_baseline
from reben_tools.learn.models.classifier import build_model
from reben_tools.learn.models.dofa import init_encoders
from reben_tools.learn.models.restore import model_from_checkpoint
from reben_tools.learn.runtime.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from reben_tools.learn.runtime.config import TRAJECTORY_FIELDS, TrainConfig, TrainingError
from reben_tools.learn.runtime.devices import autocast
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler, convert_batchnorm
from reben_tools.learn.runtime.rundir import BEST_CHECKPOINT, write_run_metrics
from reben_tools.learn.runtime.schedule import layer_decay_multipliers
from reben_tools.learn.training import skeleton
from reben_tools.learn.training.plots import plot_curves
from reben_tools.learn.training.resume import resume_state


def train(
    config: TrainConfig,
    resume: bool = False,
    given: set[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train (or resume) a run into ``config.out``; returns the final metrics dictionary.

    Args:
        config: the run's configuration.
        resume: continue from ``out/checkpoints/last.pt`` exactly where it stopped.
        given: names of the config fields the user set explicitly (on resume, these must
            agree with the stored run).
        on_step: called on the main process after every optimiser step with (step, loss).

    Raises:
        TrainingError / CheckpointError: bad archive, split, bands, checkpoint or memory;
            the message says what to change.
    """
    return skeleton.run(Supervised(config), resume, given, on_step)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Trainable parameters as AdamW groups: one group, or one per lr multiplier under layer-wise decay
    (largest first, so the logged lr is the head's)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.layer_decay is None:
        return [{"params": [p for _, p in named]}]
    try:
        multiplier = layer_decay_multipliers([n for n, _ in named], config.layer_decay)
    except ValueError as exc:
        raise TrainingError(f"--layer-decay: {exc}") from None
    groups: dict[float, list] = {}
    for n, p in named:
        groups.setdefault(multiplier[n], []).append(p)
    return [{"params": ps, "lr": config.lr * m} for m, ps in sorted(groups.items(), reverse=True)]


class Supervised(skeleton.Objective):
    """A multi-label classifier under BCE-with-logits, validated on macro AP with early stopping."""

    figures = ("loss",)
    can_accumulate = True
    config: TrainConfig

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.criterion = nn.BCEWithLogitsLoss()
        self.early: dict[str, Any] = {"best_score": -math.inf, "best_epoch": None, "epochs_without_improvement": 0}
        self.improved = False

    # --- set-up
    def resume_state(self, ctx: Distributed, given: set[str]) -> dict:
        return resume_state(self.config, ctx, given)

    def check(self, ctx: Distributed, resuming: bool) -> None:
        config = self.config
        self.accumulate = config.accumulate  # after a resume: the stored run's
        if not resuming and not config.archive:
            raise TrainingError("--archive is needed for a new run", all_processes=True)
        try:
            self.bands = resolve_bands(config.bands)
            class_names(config.class_order)
            build_model(config.model, self.bands, fusion=config.fusion, **config.model_kwargs)  # before reading data
            if config.mix not in MIX_MODES:
                raise ValueError(f"unknown --mix {config.mix!r}; expected one of {list(MIX_MODES)}")
            if not 0.0 <= config.mix_prob <= 1.0:
                raise ValueError(f"--mix-prob {config.mix_prob}: must lie in [0, 1]")
            config.mix_area = parse_area_range(config.mix_area)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.source = run_source(config.archive, config.metadata)  # recorded, so --resume and evaluate find it
        self.identity = archive_identity(self.source)

    def open_data(self, ctx: Distributed, batch: int, workers: int, cleanup: ExitStack):
        config, device = self.config, ctx.device
        self.batch, self.workers = batch, workers
        dataset = open_dataset(
            self.source,
            self.bands,
            config.class_order,
            config.include_snow_cloud,
            train_fraction=config.train_fraction,
            subset_seed=config.subset_seed,
            include_snowy=config.include_snowy,
            include_cloudy=config.include_cloudy,
        )
        cleanup.callback(dataset.archive.close)
        self.dataset = dataset
        train_indices = split_indices(dataset, "train")
        self.mixer = None
        if config.mix != "none":
            self.mixer = TrainMixer(config.mix, config.mix_prob, config.mix_area, config.class_order, device)
        if config.sampler == "shard-local":  # each node reads only its shards (learn.data.shard_sampler)
            validation = {"validation": split_indices(dataset, "validation")}
            sampler, evaluation = make_samplers(config.sampler, dataset, train_indices, validation, ctx, config.seed)
            val_sampler = evaluation["validation"]
            node_indices = np.asarray(sampler.indices, dtype=np.int64)  # its reference maps only: no other shard
        else:
            sampler = skeleton.train_sampler(train_indices, ctx, config.seed)
            val_sampler = EpochSampler(
                split_indices(dataset, "validation"), ctx.rank, ctx.world_size, shuffle=False, pad=False
            )
            node_indices = train_indices
        train_data = training_dataset(dataset, node_indices, self.mixer is not None and self.mixer.needs_reference_maps)
        loader = make_loader(train_data, sampler, batch, workers, device, config.seed)
        self.val_loader = make_loader(dataset, val_sampler, batch, workers, device, config.seed)
        self.preprocess = DevicePreprocess(dataset, device)
        return sampler, loader

    def build(self, ctx: Distributed, state: dict | None):
        config, device = self.config, ctx.device
        model: nn.Module = build_model(
            config.model,
            self.bands,
            fusion=config.fusion,
            dropout=config.dropout,
            drop_path=config.drop_path,
            **config.model_kwargs,
        )
        model = convert_batchnorm(model, ctx, config.sync_batchnorm).to(device)
        self.batchnorm = "sync" if any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) else "per_process"
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
        if state is None and config.init:
            try:
                init_encoders(model, config.init)
            except (ValueError, CheckpointError) as exc:
                raise TrainingError(f"--init: {exc}") from None
        self.model = model
        optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
        return model, optimizer

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.early = dict(state["early_stopping"])

    def run_record(self) -> tuple[dict, dict]:
        return {"bands": list(self.bands)}, {
            "archive_identity": self.identity,
            "source": self.source.record(),
            "batchnorm": self.batchnorm,
        }

    # --- steps
    def inputs(self, batch, generator: torch.Generator) -> tuple:
        images, labels = self.preprocess(batch)
        if self.mixer is not None:  # on the device, after upsampling/normalisation, before the flips
            images, labels = self.mixer(images, labels, batch, generator)
        return images, labels

    def forward(self, net: nn.Module, inputs: tuple, generator: torch.Generator):
        images, labels = inputs
        if self.config.flips:
            images = random_flips(images, generator)
        if self.config.compile:
            skeleton.mark_batch_dynamic(images)
        with autocast(self.ctx.device, self.precision):
            logits = net(images)
        loss = self.criterion(logits.float(), labels)
        return loss, loss.detach().reshape(1), labels.shape[0]

    # --- epochs
    def stopped(self) -> str | None:
        return "early_stopping" if self.early["epochs_without_improvement"] >= self.config.patience else None

    def end_of_epoch(self, net: nn.Module, model: nn.Module, epoch: int, common: dict, train: dict) -> dict:
        parts = self.ctx.gather(predict(model, self.val_loader, self.preprocess, self.precision, progress=False))
        logits, targets = merge_predictions(parts)
        if len(logits):
            val = multilabel_metrics(logits, targets, class_order=self.config.class_order)
            val["loss"] = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(targets)))
        else:
            val = {"samples": 0}
        record = {
            "epoch": common["epoch"],
            "step": common["step"],
            "lr": common["lr"],
            "train_loss": train["loss"],
            **{k: v for k, v in common.items() if k not in ("epoch", "step", "lr")},
            "validation": val,
        }
        score = val.get("average_precision_macro")
        self.improved = score is not None and score > self.early["best_score"]
        if self.improved:
            self.early.update(best_score=score, best_epoch=epoch + 1, epochs_without_improvement=0)
        else:
            self.early["epochs_without_improvement"] += 1
        return record

    def epoch_line(self, record: dict) -> str:
        return _epoch_line(record, self.config.epochs, self.early)

    # --- checkpoints and the end
    def checkpoint(self, model: nn.Module, common: dict) -> dict:
        config = self.config
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": model.config,
            "class_order": config.class_order,
            "normalisation": "published",
            "upsampling": "nearest",
            "train_config": {name: getattr(config, name) for name in TRAJECTORY_FIELDS},
            "model": model.state_dict(),
            **{k: common[k] for k in ("optimizer", "scheduler", "position", "accumulators")},
            "early_stopping": dict(self.early),
            **{k: common[k] for k in ("history", "rng", "world_size")},
            "archive": str(config.archive),
            "archive_identity": self.identity,
            "source": self.source.record(),
        }

    def save(self, snapshot: dict, record: dict | None, history: list[dict]) -> None:
        save_checkpoint(self.last_checkpoint, snapshot)
        if record is None:
            return
        if self.improved:
            best = {k: v for k, v in snapshot.items() if k not in ("optimizer", "scheduler", "rng")}
            save_checkpoint(self.out / "checkpoints" / BEST_CHECKPOINT, best)
        write_run_metrics(self.out, history, self.early, status="running")
        plot_curves(history, self.out / "curves.png")

    def finish(self, ctx: Distributed, result: dict, history: list[dict]) -> dict:
        config, early = self.config, self.early
        if result["status"] == "finished" and config.evaluate_test and early["best_epoch"] is not None:
            result["test"] = _evaluate_best(
                config, ctx, self.dataset, self.out, ctx.device, self.precision, self.batch, self.workers
            )
        if not ctx.is_main:
            return {}
        metrics = write_run_metrics(self.out, history, early, status=result["status"], extra=result)
        if history:
            plot_curves(history, self.out / "curves.png")
        return metrics


def _epoch_line(record: dict, epochs: int, early: dict) -> str:
    """One line per epoch on stderr: train loss, validation loss and AP, best so far, throughput."""
    val = record["validation"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    speed = record.get("train_samples_per_s")
    return (
        f"epoch {record['epoch']}/{epochs}: train loss {fmt(record['train_loss'])}, validation loss "
        f"{fmt(val.get('loss'))}, macro AP {fmt(val.get('average_precision_macro'))}, micro AP "
        f"{fmt(val.get('average_precision_micro'))} (best macro AP {fmt(early['best_score'] if early['best_epoch'] else None)}"
        f" at epoch {early['best_epoch']}), {speed or 0:.0f} samples/s"
    )


def _evaluate_best(config, ctx, dataset, out, device, precision, batch, workers) -> dict | None:
    splits = set(dataset.metadata.column("split").to_pylist())
    if "test" not in splits:
        return None
    state = load_checkpoint(out / "checkpoints" / BEST_CHECKPOINT)
    model = model_from_checkpoint(state, out / "checkpoints" / BEST_CHECKPOINT).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
    sampler = eval_sampler(
        config.sampler, dataset, split_indices(dataset, "test"), ctx, split_indices(dataset, "train")
    )
    loader = make_loader(dataset, sampler, batch, workers, device, config.seed)
    parts = ctx.gather(predict(model, loader, DevicePreprocess(dataset, device), precision))
    logits, targets = merge_predictions(parts)
    metrics = multilabel_metrics(logits, targets, class_order=config.class_order)
    metrics["prior_baseline"] = prior_baseline(train_label_frequency(dataset), targets, config.class_order)
    metrics["checkpoint_epoch"] = state["position"]["epoch"]
    if ctx.is_main:
        (out / "test").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "test" / "metrics.json", metrics)
        plot_per_class(metrics, out / "test" / "per_class.png", title=f"{config.model} on {config.bands}: test")
    return {k: metrics[k] for k in HEADLINE_METRICS}
