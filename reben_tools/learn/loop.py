"""The training loop: training (or resuming) a multi-label classifier on a reBEN archive.

The loop reproduces reBEN's published recipe by default: AdamW (weight
decay 0.01), lr 1e-3, global batch 512, dropout and drop-path 0.15, linear warm-up over
1,000 steps from lr/10 then cosine to lr/10, BCE-with-logits, random horizontal and vertical
flips, up to 100 epochs, early stopping (patience 5) and model selection on validation macro
average precision. On a GPU the model runs channels-last under bf16 autocast;
``torch.compile`` is optional. The run directory it fills is described in :mod:`.rundir`.

Owns: train (and its per-epoch validation, resume checks, end-of-run test evaluation).
Does not own: configuration (config.py), devices (devices.py), processes and sampling (distributed.py),
loaders (loaders.py), augmentation (augment.py), checkpoint I/O (checkpoints.py), prediction (evaluation.py),
run-directory files (rundir.py), plots (plots.py), models (models.py).
May import: numpy, torch; reben_tools.format; any reben_tools.learn module except probes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import resolve_bands
from reben_tools.format.labels import class_names
from reben_tools.learn.augment import random_flips
from reben_tools.learn.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from reben_tools.learn.config import TRAJECTORY_FIELDS, TrainConfig, TrainingError
from reben_tools.learn.devices import autocast, is_out_of_memory, oom_error, resolve_precision
from reben_tools.learn.distributed import Distributed, EpochSampler, init_distributed
from reben_tools.learn.evaluation import merge_predictions, predict
from reben_tools.learn.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices
from reben_tools.learn.metrics import HEADLINE_METRICS, multilabel_metrics, plot_per_class
from reben_tools.learn.models import build_model
from reben_tools.learn.plots import plot_curves
from reben_tools.learn.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT, write_run_metrics
from reben_tools.learn.schedule import effective_warmup, lr_factor


def _check_resume_config(stored: dict, config: TrainConfig, given: set[str]) -> None:
    conflicts = [
        f"--{name.replace('_', '-')} {getattr(config, name)!r} (the run has {stored[name]!r})"
        for name in TRAJECTORY_FIELDS
        if name in given and _norm(getattr(config, name)) != _norm(stored[name])
    ]
    if conflicts:
        raise CheckpointError(
            "--resume continues the stored run, which differs in: " + "; ".join(conflicts)
            + ". Drop these flags to resume, or start a new run with another --out."
        )


def _norm(value):
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        try:
            return list(resolve_bands(value))
        except ValueError:
            return value
    return value


def train(config: TrainConfig, resume: bool = False, given: set[str] | None = None,
          on_step: Callable[[int, float], None] | None = None) -> dict:
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
    ctx = init_distributed(config.device)
    try:
        with ExitStack() as cleanup:
            return _train(config, ctx, resume, given or set(), on_step, cleanup)
    finally:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: Distributed, resume: bool, given: set[str],
           on_step: Callable[[int, float], None] | None, cleanup: ExitStack) -> dict:
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    state = None
    if resume:
        state = load_checkpoint(ckpt_dir / LAST_CHECKPOINT)
        _check_resume_config(state["train_config"], config, given)
        for name in TRAJECTORY_FIELDS:
            setattr(config, name, state["train_config"][name])
        if state["world_size"] != ctx.world_size:
            raise CheckpointError(
                f"{ckpt_dir / LAST_CHECKPOINT}: run was trained with {state['world_size']} process(es); "
                f"resume it with the same number (now {ctx.world_size})"
            )
    elif (ckpt_dir / LAST_CHECKPOINT).exists():
        raise TrainingError(f"{out} already holds a run (checkpoints/last.pt); pass --resume or choose another --out")

    device = ctx.device
    precision = resolve_precision(config.precision, device)
    try:
        bands = resolve_bands(config.bands)
        class_names(config.class_order)
        build_model(config.model, bands, fusion=config.fusion, **config.model_kwargs)  # fail before reading data
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if config.batch_size % ctx.world_size:
        raise TrainingError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    per_process_batch = config.batch_size // ctx.world_size
    workers = default_workers(ctx.world_size) if config.workers is None else config.workers

    torch.manual_seed(config.seed + ctx.rank)
    np.random.seed(config.seed + ctx.rank)
    random.seed(config.seed + ctx.rank)

    dataset = open_dataset(config.archive, bands, config.class_order, config.include_snow_cloud)
    cleanup.callback(dataset.archive.close)
    train_sampler = EpochSampler(split_indices(dataset, "train"), ctx.rank, ctx.world_size, shuffle=True,
                                 seed=config.seed)
    val_sampler = EpochSampler(split_indices(dataset, "validation"), ctx.rank, ctx.world_size, shuffle=False,
                               pad=False)
    train_loader = make_loader(dataset, train_sampler, per_process_batch, workers, device, config.seed)
    val_loader = make_loader(dataset, val_sampler, per_process_batch, workers, device, config.seed)
    preprocess = DevicePreprocess(dataset, device)
    steps_per_epoch = math.ceil(len(train_sampler) / per_process_batch)
    total_steps = steps_per_epoch * config.epochs
    warmup = effective_warmup(config.warmup_steps, total_steps)

    model = build_model(config.model, bands, fusion=config.fusion, dropout=config.dropout,
                        drop_path=config.drop_path, **config.model_kwargs).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, config.min_lr_factor)
    )
    augment = torch.Generator(device=device).manual_seed(config.seed * 1000 + ctx.rank)

    progress_state = {"epoch": 0, "batch_in_epoch": 0, "step": 0}
    accumulators = {"loss_sum": 0.0, "samples": 0, "wait_s": 0.0, "preprocess_s": 0.0, "step_s": 0.0}
    early = {"best_score": -math.inf, "best_epoch": None, "epochs_without_improvement": 0}
    history: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress_state = dict(state["position"])
        accumulators = dict(state["accumulators"])
        early = dict(state["early_stopping"])
        history = list(state["history"])
        set_rng_state(state["rng"][ctx.rank], augment)

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", {**asdict(config), "bands": list(bands), "world_size": ctx.world_size,
                                                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                                "warmup_steps_used": warmup, "precision_used": precision})
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def checkpoint_state() -> dict:
        rng = ctx.gather(rng_state(augment))
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_config": model.config, "class_order": config.class_order,
            "normalisation": "published", "upsampling": "nearest",
            "train_config": {name: getattr(config, name) for name in TRAJECTORY_FIELDS},
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "position": dict(progress_state), "accumulators": dict(accumulators), "early_stopping": dict(early),
            "history": history, "rng": rng, "world_size": ctx.world_size,
        }

    def save_last() -> None:
        snapshot = checkpoint_state()  # every process takes part in gathering RNG states
        if ctx.is_main:
            save_checkpoint(ckpt_dir / LAST_CHECKPOINT, snapshot)
        ctx.barrier()

    criterion = nn.BCEWithLogitsLoss()
    stopped_by = "early_stopping" if early["epochs_without_improvement"] >= config.patience else None
    from tqdm import tqdm

    while progress_state["epoch"] < config.epochs and stopped_by is None:
        epoch = progress_state["epoch"]
        train_sampler.set_epoch(epoch)
        train_sampler.set_position(progress_state["batch_in_epoch"] * per_process_batch)
        net.train()
        bar = tqdm(total=steps_per_epoch, initial=progress_state["batch_in_epoch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not (config.progress and ctx.is_main), leave=False)
        batches = iter(train_loader)
        while True:
            t0 = time.perf_counter()
            try:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                images, labels = preprocess(batch)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise oom_error(per_process_batch, config.batch_size, device, precision) from None
                raise
            t1b = time.perf_counter()
            if config.flips:
                images = random_flips(images, augment)
            try:
                with autocast(device, precision):
                    logits = net(images)
                loss = criterion(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise oom_error(per_process_batch, config.batch_size, device, precision) from None
                raise
            scheduler.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss became {loss_value} at step {progress_state['step'] + 1}; lower --lr")
            t2 = time.perf_counter()
            n = labels.shape[0]
            accumulators["loss_sum"] += loss_value * n
            accumulators["samples"] += n
            accumulators["wait_s"] += t1 - t0
            accumulators["preprocess_s"] += t1b - t1
            accumulators["step_s"] += t2 - t0
            progress_state["batch_in_epoch"] += 1
            progress_state["step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if on_step is not None and ctx.is_main:
                on_step(progress_state["step"], loss_value)
            if config.max_steps is not None and progress_state["step"] >= config.max_steps:
                stopped_by = "max_steps"
                break
            if config.checkpoint_every and progress_state["step"] % config.checkpoint_every == 0:
                save_last()
        bar.close()
        if stopped_by is not None and progress_state["batch_in_epoch"] < steps_per_epoch:
            save_last()  # mid-epoch: the position lets --resume continue from the next batch
            break

        record = _end_of_epoch(model, val_loader, preprocess, precision, ctx, config, epoch, progress_state,
                               accumulators, scheduler)
        history.append(record)
        score = record["validation"].get("average_precision_macro")
        improved = score is not None and score > early["best_score"]
        if improved:
            early.update(best_score=score, best_epoch=epoch + 1, epochs_without_improvement=0)
        else:
            early["epochs_without_improvement"] += 1
        progress_state.update(epoch=epoch + 1, batch_in_epoch=0)
        accumulators = {"loss_sum": 0.0, "samples": 0, "wait_s": 0.0, "preprocess_s": 0.0, "step_s": 0.0}
        snapshot = checkpoint_state()
        if ctx.is_main:
            save_checkpoint(ckpt_dir / LAST_CHECKPOINT, snapshot)
            if improved:
                best = {k: v for k, v in snapshot.items() if k not in ("optimizer", "scheduler", "rng")}
                save_checkpoint(ckpt_dir / BEST_CHECKPOINT, best)
            write_run_metrics(out, history, early, status="running")
            plot_curves(history, out / "curves.png")
        ctx.barrier()
        if early["epochs_without_improvement"] >= config.patience:
            stopped_by = "early_stopping"

    finished = stopped_by in (None, "early_stopping")
    result = {"status": "finished" if finished else "stopped_at_max_steps", "stopped_by": stopped_by or "epochs",
              "steps": progress_state["step"], "epochs_completed": progress_state["epoch"]}
    if finished and config.evaluate_test and early["best_epoch"] is not None:
        result["test"] = _evaluate_best(config, ctx, dataset, out, device, precision, per_process_batch, workers)
    if ctx.is_main:
        metrics = write_run_metrics(out, history, early, status=result["status"], extra=result)
        if history:
            plot_curves(history, out / "curves.png")
    else:
        metrics = {}
    ctx.barrier()
    return metrics  # empty on processes other than the main one


def _end_of_epoch(model, val_loader, preprocess, precision, ctx, config, epoch, progress_state, accumulators,
                  scheduler) -> dict:
    parts = ctx.gather(predict(model, val_loader, preprocess, precision, progress=False))
    logits, targets = merge_predictions(parts)
    if len(logits):
        val = multilabel_metrics(logits, targets, class_order=config.class_order)
        val["loss"] = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(targets)))
    else:
        val = {"samples": 0}
    step_s, wait_s = ctx.mean(accumulators["step_s"]), ctx.mean(accumulators["wait_s"])
    preprocess_s = ctx.mean(accumulators["preprocess_s"])
    loss = ctx.mean(accumulators["loss_sum"] / max(1, accumulators["samples"]))
    samples = accumulators["samples"] * ctx.world_size
    return {
        "epoch": epoch + 1, "step": progress_state["step"], "lr": scheduler.get_last_lr()[0],
        "train_loss": loss, "train_samples": samples,
        "train_samples_per_s": samples / step_s if step_s else None,
        "data_wait_fraction": wait_s / step_s if step_s else None,
        "preprocess_fraction": preprocess_s / step_s if step_s else None,
        "validation": val,
    }


def _evaluate_best(config, ctx, dataset, out, device, precision, batch, workers) -> dict | None:
    splits = set(dataset.metadata.column("split").to_pylist())
    if "test" not in splits:
        return None
    state = load_checkpoint(out / "checkpoints" / BEST_CHECKPOINT)
    model = model_from_checkpoint(state, out / "checkpoints" / BEST_CHECKPOINT).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    sampler = EpochSampler(split_indices(dataset, "test"), ctx.rank, ctx.world_size, shuffle=False, pad=False)
    loader = make_loader(dataset, sampler, batch, workers, device, config.seed)
    parts = ctx.gather(predict(model, loader, DevicePreprocess(dataset, device), precision))
    logits, targets = merge_predictions(parts)
    metrics = multilabel_metrics(logits, targets, class_order=config.class_order)
    metrics["checkpoint_epoch"] = state["position"]["epoch"]
    if ctx.is_main:
        (out / "test").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "test" / "metrics.json", metrics)
        plot_per_class(metrics, out / "test" / "per_class.png", title=f"{config.model} on {config.bands}: test")
    return {k: metrics[k] for k in HEADLINE_METRICS}
