"""The training loop: training (or resuming) a multi-label classifier on a reBEN archive.

The loop reproduces reBEN's published recipe by default: AdamW (weight
decay 0.01), lr 1e-3, global batch 512, dropout and drop-path 0.15, linear warm-up over
1,000 steps from lr/10 then cosine to lr/10, BCE-with-logits, random horizontal and vertical
flips (optionally CutMix or CutMix with label propagation first, ``--mix``), up to 100 epochs, early stopping (patience 5) and model selection on validation macro
average precision. On a GPU the model runs channels-last under bf16 autocast;
``torch.compile`` is optional. The run directory it fills is described in :mod:`.rundir`.

Under torchrun, BatchNorm becomes SyncBatchNorm on GPUs, rank 0's buffers are broadcast
before every validation and checkpoint, and a non-finite loss on any process stops every
process at the same step (agreed through a collective). A process that fails alone (out of
memory) prints its message and leaves without waiting for the others; a process whose
collective then fails stops without a message of its own, and torchrun stops the rest.

The loss stays on the device between synchronisation points (every step on a CPU, every
``SYNC_EVERY`` steps on a GPU, and before every checkpoint and validation), so the host does
not wait for the GPU after each step.

Owns: train, sync_interval, SYNC_EVERY (and the per-epoch validation, resume checks, end-of-run test evaluation).
Does not own: configuration (config.py), devices (devices.py), processes and sampling (distributed.py),
loaders (loaders.py), augmentation (augment.py), checkpoint I/O (checkpoints.py), prediction (evaluation.py),
run-directory files (rundir.py), plots (plots.py), models (models.py).
May import: numpy, torch; reben_tools.format; any reben_tools.learn module except probes.
"""

from __future__ import annotations

import math
import random
import sys
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
from reben_tools.learn.data.augment import TrainMixer, random_flips
from reben_tools.learn.data.loaders import (
    DevicePreprocess,
    archive_identity,
    default_workers,
    make_loader,
    open_dataset,
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
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from reben_tools.learn.runtime.config import (
    TRAJECTORY_FIELDS,
    StoppedByPeer,
    TrainConfig,
    TrainingError,
    check_numbers,
)
from reben_tools.learn.runtime.devices import (
    autocast,
    is_out_of_memory,
    oom_error,
    resolve_precision,
    set_deterministic,
)
from reben_tools.learn.runtime.distributed import (
    Distributed,
    convert_batchnorm,
    init_distributed,
    is_peer_failure,
)
from reben_tools.learn.runtime.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT, write_run_metrics
from reben_tools.learn.runtime.schedule import effective_warmup, layer_decay_multipliers, lr_factor
from reben_tools.learn.training.plots import plot_curves
from reben_tools.learn.training.resume import resume_state


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


SYNC_EVERY = 50
"""On GPUs, steps between reading the losses back to the host (checks, progress bar)."""


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
    check_numbers(asdict(config))
    ctx = init_distributed(config.device)
    together = False  # whether every process leaves at this point (then the process group can be shut down)
    try:
        with ExitStack() as cleanup:
            result = _train(config, ctx, resume, given or set(), on_step, cleanup)
        together = True
        return result
    except TrainingError as exc:
        together = exc.all_processes
        raise
    except Exception as exc:
        if ctx.enabled and is_peer_failure(exc):  # another process failed alone (it printed why) and left
            raise StoppedByPeer(f"stopped: another process of the run failed ({type(exc).__name__})") from None
        raise
    finally:
        # a process failing alone must not wait in destroy_process_group for the others (NCCL would
        # hang): it exits, and torchrun stops the other processes
        if ctx.enabled and dist.is_initialized() and together:
            dist.destroy_process_group()


def sync_interval(device: torch.device, per_step_callback: bool) -> int:
    """Steps between reading the losses back to the host: every step on a CPU (free there) or when a
    per-step callback wants each loss, else :data:`SYNC_EVERY` (the host does not wait for the GPU)."""
    return 1 if device.type == "cpu" or per_step_callback else SYNC_EVERY


def _train(
    config: TrainConfig,
    ctx: Distributed,
    resume: bool,
    given: set[str],
    on_step: Callable[[int, float], None] | None,
    cleanup: ExitStack,
) -> dict:
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    ctx.check_shared_directory(out)  # every process reads the checkpoints rank 0 writes
    state = None
    if resume:
        state = resume_state(config, ctx, given)
    elif (ckpt_dir / LAST_CHECKPOINT).exists():
        raise TrainingError(
            f"{out} already holds a run (checkpoints/last.pt); pass --resume or choose another --out",
            all_processes=True,
        )
    elif not config.archive:
        raise TrainingError("--archive is needed for a new run", all_processes=True)
    set_deterministic(config.deterministic)

    device = ctx.device
    precision = resolve_precision(config.precision, device)
    try:
        bands = resolve_bands(config.bands)
        class_names(config.class_order)
        build_model(config.model, bands, fusion=config.fusion, **config.model_kwargs)  # fail before reading data
        if config.mix not in MIX_MODES:
            raise ValueError(f"unknown --mix {config.mix!r}; expected one of {list(MIX_MODES)}")
        if not 0.0 <= config.mix_prob <= 1.0:
            raise ValueError(f"--mix-prob {config.mix_prob}: must lie in [0, 1]")
        config.mix_area = parse_area_range(config.mix_area)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if config.batch_size % ctx.world_size:
        raise TrainingError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    per_process_batch = config.batch_size // ctx.world_size
    workers = default_workers(ctx.local_world_size) if config.workers is None else config.workers
    identity = archive_identity(config.archive)

    torch.manual_seed(config.seed + ctx.rank)
    np.random.seed(config.seed + ctx.rank)
    random.seed(config.seed + ctx.rank)

    dataset = open_dataset(
        config.archive,
        bands,
        config.class_order,
        config.include_snow_cloud,
        train_fraction=config.train_fraction,
        subset_seed=config.subset_seed,
        include_snowy=config.include_snowy,
        include_cloudy=config.include_cloudy,
    )
    cleanup.callback(dataset.archive.close)
    train_indices = split_indices(dataset, "train")
    mixer = None
    if config.mix != "none":
        mixer = TrainMixer(config.mix, config.mix_prob, config.mix_area, config.class_order, device)
    train_data = training_dataset(dataset, train_indices, mixer is not None and mixer.needs_reference_maps)
    train_sampler, evaluation = make_samplers(  # --sampler global | shard-local; fetches a store's shards
        config.sampler, dataset, train_indices, {"validation": split_indices(dataset, "validation")}, ctx, config.seed
    )
    val_sampler = evaluation["validation"]
    train_loader = make_loader(train_data, train_sampler, per_process_batch, workers, device, config.seed)
    val_loader = make_loader(dataset, val_sampler, per_process_batch, workers, device, config.seed)
    preprocess = DevicePreprocess(dataset, device)
    steps_per_epoch = math.ceil(len(train_sampler) / per_process_batch)
    total_steps = steps_per_epoch * config.epochs
    warmup = effective_warmup(config.warmup_steps, total_steps)

    model = build_model(
        config.model,
        bands,
        fusion=config.fusion,
        dropout=config.dropout,
        drop_path=config.drop_path,
        **config.model_kwargs,
    )
    model = convert_batchnorm(model, ctx, config.sync_batchnorm).to(device)
    batchnorm = "sync" if any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) else "per_process"
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if state is None and config.init:
        try:
            init_encoders(model, config.init)
        except (ValueError, FileNotFoundError) as exc:
            raise TrainingError(f"--init: {exc}") from None
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, config.min_lr_factor)
    )
    # a CPU generator on every device: its state is the same kind on CPU and GPU, so --device may change on resume
    augment = torch.Generator().manual_seed(config.seed * 1000 + ctx.rank)

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
        write_json_atomic(
            out / "config.json",
            {
                **asdict(config),
                "bands": list(bands),
                "world_size": ctx.world_size,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
                "warmup_steps_used": warmup,
                "precision_used": precision,
                "archive_identity": identity,
                "batchnorm": batchnorm,
            },
        )
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def checkpoint_state() -> dict:
        ctx.broadcast_buffers(model)  # one model on every process: rank 0's BatchNorm statistics
        rng = ctx.gather(rng_state(augment))
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": model.config,
            "class_order": config.class_order,
            "normalisation": "published",
            "upsampling": "nearest",
            "train_config": {name: getattr(config, name) for name in TRAJECTORY_FIELDS},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "position": dict(progress_state),
            "accumulators": dict(accumulators),
            "early_stopping": dict(early),
            "history": history,
            "rng": rng,
            "world_size": ctx.world_size,
            "archive": str(config.archive),
            "archive_identity": identity,
        }

    def save_last() -> None:
        snapshot = checkpoint_state()  # every process takes part in gathering RNG states
        if ctx.is_main:
            save_checkpoint(ckpt_dir / LAST_CHECKPOINT, snapshot)
        ctx.barrier()

    criterion = nn.BCEWithLogitsLoss()
    stopped_by = "early_stopping" if early["epochs_without_improvement"] >= config.patience else None
    from tqdm import tqdm

    sync_every = sync_interval(device, on_step is not None)
    window: list[tuple[int, torch.Tensor, int]] = []  # (step, loss on the device, samples) since the last sync
    bar = None

    def synchronise() -> None:
        """Read the window's losses back, add them up, and stop every process if one of them saw a non-finite loss."""
        message = None
        if window:
            values = torch.stack([loss for _, loss, _ in window]).double().cpu().tolist()
            for (step, _, n), value in zip(window, values):
                if message is None and not math.isfinite(value):
                    message = f"loss became {value} at step {step}; lower --lr"
                accumulators["loss_sum"] += value * n
                if on_step is not None and ctx.is_main and message is None:
                    on_step(step, value)
            if bar is not None:
                bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            window.clear()
        failure = ctx.first_failure(message)
        if failure is not None:
            raise TrainingError(failure, all_processes=True)

    while progress_state["epoch"] < config.epochs and stopped_by is None:
        epoch = progress_state["epoch"]
        train_sampler.set_epoch(epoch)
        train_sampler.set_position(progress_state["batch_in_epoch"] * per_process_batch)
        net.train()
        bar = tqdm(
            total=steps_per_epoch,
            initial=progress_state["batch_in_epoch"],
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and ctx.is_main),
            leave=False,
        )
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
                if mixer is not None:  # on the device, after upsampling/normalisation, before the flips
                    images, labels = mixer(images, labels, batch, augment)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise oom_error(per_process_batch, config.batch_size, device, precision) from None
                raise
            t1b = time.perf_counter()
            try:
                if config.flips:
                    images = random_flips(images, augment)
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
            n = labels.shape[0]
            window.append((progress_state["step"] + 1, loss.detach(), n))
            if (progress_state["step"] + 1) % sync_every == 0:
                synchronise()
            t2 = time.perf_counter()
            accumulators["samples"] += n
            accumulators["wait_s"] += t1 - t0
            accumulators["preprocess_s"] += t1b - t1
            accumulators["step_s"] += t2 - t0
            progress_state["batch_in_epoch"] += 1
            progress_state["step"] += 1
            bar.update(1)
            if config.max_steps is not None and progress_state["step"] >= config.max_steps:
                stopped_by = "max_steps"
                break
            if config.checkpoint_every and progress_state["step"] % config.checkpoint_every == 0:
                synchronise()
                save_last()
        t_sync = time.perf_counter()
        synchronise()  # the epoch's (or the run's) last losses, before any checkpoint or validation
        accumulators["step_s"] += time.perf_counter() - t_sync  # the device work still queued belongs to the steps
        bar.close()
        if stopped_by is not None and progress_state["batch_in_epoch"] < steps_per_epoch:
            save_last()  # mid-epoch: the position lets --resume continue from the next batch
            break

        record = _end_of_epoch(
            model, val_loader, preprocess, precision, ctx, config, epoch, progress_state, accumulators, scheduler
        )
        history.append(record)
        score = record["validation"].get("average_precision_macro")
        improved = score is not None and score > early["best_score"]
        if improved:
            early.update(best_score=score, best_epoch=epoch + 1, epochs_without_improvement=0)
        else:
            early["epochs_without_improvement"] += 1
        if config.progress and ctx.is_main:
            print(_epoch_line(record, config.epochs, early), file=sys.stderr, flush=True)
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
    result = {
        "status": "finished" if finished else "stopped_at_max_steps",
        "stopped_by": stopped_by or "epochs",
        "steps": progress_state["step"],
        "epochs_completed": progress_state["epoch"],
    }
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


def _end_of_epoch(
    model, val_loader, preprocess, precision, ctx, config, epoch, progress_state, accumulators, scheduler
) -> dict:
    ctx.broadcast_buffers(
        model
    )  # validate rank 0's model on every process (DDP syncs buffers only at the next forward)
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
        "epoch": epoch + 1,
        "step": progress_state["step"],
        "lr": scheduler.get_last_lr()[0],
        "train_loss": loss,
        "train_samples": samples,
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
