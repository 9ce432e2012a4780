"""Self-supervised CROMA pretraining on a reBEN archive (``reben pretrain``).

Pretrains a CROMA model (:mod:`reben_tools.learn.models.croma`) on the train split's paired S1/S2
patches, without labels: independent random masks per modality, symmetric InfoNCE between
the pooled radar and optical embeddings (negatives from every DDP rank) plus masked-patch
reconstruction of both modalities (:mod:`reben_tools.learn.models.croma_losses`).

It reuses the training infrastructure of ``reben train``: the native-resolution loaders and
device preprocessing, :class:`EpochSampler` (resumable mid-epoch), torchrun/DDP, bf16
autocast, ``torch.compile``, atomic checkpoints with RNG state, and the warm-up + cosine
schedule. The run directory::

    RUN/
      config.json                 the run's configuration
      checkpoints/last.pt         atomic; CROMA's published layout at the top level (the five
                                  parts load into the reference ``use_croma.py`` unchanged) plus
                                  decoder, contrastive head, optimiser, schedule, RNG, position
      croma_published.pt          the five published parts only (written with every last.pt)
      steps.jsonl                 per step: both losses, temperature, retrieval accuracy, lr
      metrics.json                per-epoch history (train and validation figures)
      curves.png                  per-step losses, temperature and retrieval accuracy

A non-finite loss stops the run at that step before the optimiser touches the weights; the
last checkpoint on disk stays the last good one.

Owns: PretrainConfig, pretrain, the pretraining checkpoint contents.
Does not own: the model and losses (croma, croma_losses), step logs and curves (pretrain_log),
loaders, devices, processes and checkpoint I/O (loaders, devices, distributed, checkpoints).
May import: numpy, torch; reben_tools.format; reben_tools.learn modules.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import BAND_GROUPS
from reben_tools.learn.data.augment import random_flips
from reben_tools.learn.data.loaders import (
    DevicePreprocess,
    default_workers,
    make_loader,
    open_dataset,
    run_source,
    split_indices,
)
from reben_tools.learn.models.croma import CONFIGS, CROMA, PUBLISHED_PARTS, croma_scale
from reben_tools.learn.models.croma_layout import CheckpointLayoutError, load_published, published_state
from reben_tools.learn.models.croma_losses import croma_losses
from reben_tools.learn.runtime.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.runtime.devices import autocast, is_out_of_memory, oom_error, resolve_precision
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler, init_distributed
from reben_tools.learn.runtime.rundir import LAST_CHECKPOINT
from reben_tools.learn.runtime.schedule import effective_warmup, lr_factor
from reben_tools.learn.training.pretrain_log import StepLog, plot_pretrain_curves

PUBLISHED_FILE = "croma_published.pt"
CHECKPOINT_KIND = "croma_pretrain"
PRETRAIN_BANDS = BAND_GROUPS["ALL"]
"""VV, VH, then the 12 S2 bands in ESA order: channels 0-1 are CROMA's radar input, 2-13 its optical input."""
STEP_FIGURES = (
    "loss",
    "contrastive",
    "reconstruction",
    "reconstruction_s1",
    "reconstruction_s2",
    "temperature",
    "acc_s1_to_s2",
    "acc_s2_to_s1",
)


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (fields in :data:`TRAJECTORY_FIELDS` are fixed on resume)."""

    archive: str
    model: str
    out: str
    metadata: list[str] = field(default_factory=list)
    """reBEN metadata files of a plain LMDB ``archive``; empty: its own, or found beside it."""
    mask_ratio: float = 0.75
    epochs: int = 100
    batch_size: int = 256
    lr: float = 4e-4
    weight_decay: float = 0.05
    warmup_steps: int = 1000
    min_lr_factor: float = 0.1
    seed: int = 0
    flips: bool = True
    include_snow_cloud: bool = False
    init: str | None = None
    # free to change between a run and its resumption
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    compile: bool = False
    max_steps: int | None = None
    checkpoint_every: int | None = None
    progress: bool = True


TRAJECTORY_FIELDS = (
    "model",
    "mask_ratio",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "min_lr_factor",
    "seed",
    "flips",
    "include_snow_cloud",
    "init",
)
DEFAULTS = {f.name: f.default for f in fields(PretrainConfig) if f.default is not MISSING}


class FullBatchSampler(EpochSampler):
    """:class:`EpochSampler` whose epoch share is cut to whole batches of ``batch`` samples.

    The contrastive loss takes its negatives from the batch, so a small last batch would
    make an easier, noisier step; like most contrastive recipes, pretraining drops it (the
    epoch's order changes every epoch, so every patch is still seen).
    """

    def __init__(self, indices, batch: int, **kwargs) -> None:
        super().__init__(indices, **kwargs)
        self.batch = batch

    def share(self) -> list[int]:
        share = super().share()
        return share[: len(share) // self.batch * self.batch]

    def __len__(self) -> int:
        return max(0, len(self.share()) - self.start)


def input_record(statistics: dict[str, tuple[float, float]]) -> dict:
    """What a CROMA checkpoint records about its input (see ``docs/pretraining.md``)."""
    return {
        "s1_bands": list(BAND_GROUPS["S1"]),
        "s2_bands": list(BAND_GROUPS["S2"]),
        "scaling": "croma_2std",
        "scaling_rule": "clip((x - (mean - 2 std)) / (4 std), 0, 1) per band",
        "statistics": {b: [float(m), float(s)] for b, (m, s) in statistics.items()},
        "upsampling": "nearest",
        "image_size": 120,
    }


def read_init(path: str, model: CROMA) -> None:
    """Load encoder weights for ``--init``: a published-layout CROMA file or a pretraining checkpoint.

    Raises:
        CheckpointError: unreadable file, or a part/key/shape that does not fit (one line, naming both).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a CROMA checkpoint (a {type(state).__name__}, not a dict)")
    try:
        load_published(model, state, str(path))
    except CheckpointLayoutError as exc:
        raise CheckpointError(str(exc)) from None


def _check_resume(stored: dict, config: PretrainConfig, given: set[str], path: Path) -> None:
    conflicts = [
        f"--{n.replace('_', '-')} {getattr(config, n)!r} (the run has {stored[n]!r})"
        for n in TRAJECTORY_FIELDS
        if n in given and getattr(config, n) != stored[n]
    ]
    if conflicts:
        raise CheckpointError(
            f"{path}: --resume continues the stored run, which differs in: "
            + "; ".join(conflicts)
            + ". Drop these flags to resume, or start a new run with another --out."
        )


def pretrain(
    config: PretrainConfig,
    resume: bool = False,
    given: set[str] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Pretrain (or resume) a CROMA run into ``config.out``; returns the run summary (main process).

    Args:
        config: the run's configuration.
        resume: continue from ``out/checkpoints/last.pt`` exactly where it stopped.
        given: config fields set explicitly by the user (checked against the stored run on resume).
        on_step: called on the main process after every step with (step, figures).

    Raises:
        TrainingError / CheckpointError: bad archive, model, checkpoint, memory or a non-finite
            loss; the message says what to change.
    """
    ctx = init_distributed(config.device)
    try:
        with ExitStack() as cleanup:
            return _pretrain(config, ctx, resume, given or set(), on_step, cleanup)
    finally:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _pretrain(
    config: PretrainConfig,
    ctx: Distributed,
    resume: bool,
    given: set[str],
    on_step: Callable[[int, dict], None] | None,
    cleanup: ExitStack,
) -> dict:
    out = Path(config.out)
    ckpt_path = out / "checkpoints" / LAST_CHECKPOINT
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        if state.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(
                f"{ckpt_path}: not a reben pretrain checkpoint (use reben train --resume for that run)"
            )
        _check_resume(state["pretrain_config"], config, given, ckpt_path)
        for name in TRAJECTORY_FIELDS:
            setattr(config, name, state["pretrain_config"][name])
        if state["world_size"] != ctx.world_size:
            raise CheckpointError(
                f"{ckpt_path}: run was trained with {state['world_size']} process(es); "
                f"resume it with the same number (now {ctx.world_size})"
            )
    elif ckpt_path.exists():
        raise TrainingError(f"{out} already holds a run (checkpoints/last.pt); pass --resume or choose another --out")
    if config.model not in CONFIGS:
        raise TrainingError(f"unknown model {config.model!r}; choose one of {sorted(CONFIGS)}")
    if not 0.0 < config.mask_ratio < 1.0 or int(CONFIGS[config.model].num_patches * (1 - config.mask_ratio)) < 1:
        raise TrainingError(f"--mask-ratio {config.mask_ratio} must be in (0, 1) and keep at least one patch")
    if config.batch_size % ctx.world_size:
        raise TrainingError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    if config.batch_size // ctx.world_size < 2:
        raise TrainingError("--batch-size must give each process at least 2 samples (contrastive negatives)")

    device = ctx.device
    precision = resolve_precision(config.precision, device)
    per_process = config.batch_size // ctx.world_size
    workers = default_workers(ctx.world_size) if config.workers is None else config.workers
    torch.manual_seed(config.seed + ctx.rank)
    np.random.seed(config.seed + ctx.rank)
    random.seed(config.seed + ctx.rank)

    model = CROMA(CONFIGS[config.model], pretraining=True)
    if config.init is not None and state is None:
        read_init(config.init, model)
    source = run_source(config.archive, config.metadata)  # recorded in config.json for --resume
    try:
        dataset = open_dataset(source, PRETRAIN_BANDS, include_snow_cloud=config.include_snow_cloud)
    except TrainingError as exc:
        raise TrainingError(
            str(exc).split("; choose --bands")[0].split(" -- choose --bands")[0]
            + "; CROMA pretraining needs both S1 (VV, VH) and all 12 S2 bands"
        ) from None
    cleanup.callback(dataset.archive.close)
    train_sampler = FullBatchSampler(
        split_indices(dataset, "train"),
        per_process,
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle=True,
        seed=config.seed,
    )
    splits = set(dataset.metadata.column("split").to_pylist())
    val_loader = None
    if "validation" in splits:
        val_sampler = EpochSampler(
            split_indices(dataset, "validation"), ctx.rank, ctx.world_size, shuffle=False, pad=True
        )
        val_loader = make_loader(dataset, val_sampler, per_process, workers, device, config.seed)
    if len(train_sampler) == 0:
        raise TrainingError(
            f"{config.archive}: the train split has fewer patches than one batch per process "
            f"({per_process}); lower --batch-size"
        )
    train_loader = make_loader(dataset, train_sampler, per_process, workers, device, config.seed)
    preprocess = DevicePreprocess(dataset, device)
    steps_per_epoch = math.ceil(len(train_sampler) / per_process)
    total_steps = steps_per_epoch * config.epochs
    warmup = effective_warmup(config.warmup_steps, total_steps)

    model = model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "mask_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "mask_token" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, config.min_lr_factor)
    )
    masks = torch.Generator(device=device).manual_seed(config.seed * 1000 + ctx.rank)

    position = {"epoch": 0, "batch_in_epoch": 0, "step": 0}
    acc = _fresh_accumulators()
    history: list[dict] = []
    if state is not None:
        try:
            load_published(model, state, str(ckpt_path))
            model.decoder.load_state_dict(state["decoder"])
            model.contrast.load_state_dict(state["contrast"])
        except (CheckpointLayoutError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_path}: weights do not fit {config.model} ({exc})") from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        position, acc, history = dict(state["position"]), dict(state["accumulators"]), list(state["history"])
        set_rng_state(state["rng"][ctx.rank], masks)

    statistics = dataset.statistics
    log = StepLog(out / "steps.jsonl") if ctx.is_main else None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        log.truncate(position["step"])
        write_json_atomic(
            out / "config.json",
            {
                **asdict(config),
                "world_size": ctx.world_size,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
                "warmup_steps_used": warmup,
                "precision_used": precision,
                "croma_config": model.config.to_dict(),
                "input": input_record(statistics),
                "source": source.record(),
            },
        )
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def checkpoint_state() -> dict:
        rng = ctx.gather(rng_state(masks))
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": CHECKPOINT_KIND,
            **published_state(model),
            "decoder": model.decoder.state_dict(),
            "contrast": model.contrast.state_dict(),
            "croma_config": model.config.to_dict(),
            "input": input_record(statistics),
            "pretrain_config": {n: getattr(config, n) for n in TRAJECTORY_FIELDS},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "position": dict(position),
            "accumulators": dict(acc),
            "history": history,
            "rng": rng,
            "world_size": ctx.world_size,
        }

    def save_last() -> None:
        snapshot = checkpoint_state()
        if ctx.is_main:
            save_checkpoint(ckpt_path, snapshot)
            save_checkpoint(out / PUBLISHED_FILE, {p: snapshot[p] for p in PUBLISHED_PARTS})
            log.flush()
        ctx.barrier()

    from tqdm import tqdm

    stopped_by = None
    while position["epoch"] < config.epochs and stopped_by is None:
        epoch = position["epoch"]
        train_sampler.set_epoch(epoch)
        train_sampler.set_position(position["batch_in_epoch"] * per_process)
        net.train()
        bar = tqdm(
            total=steps_per_epoch,
            initial=position["batch_in_epoch"],
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and ctx.is_main),
            leave=False,
        )
        batches = iter(train_loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            t1 = time.perf_counter()
            try:
                images, _ = preprocess(batch)
                if config.flips:
                    images = random_flips(images, masks)  # the same flip for S1 and S2: they are co-registered
                images = croma_scale(images.float())
                with autocast(device, precision):
                    outputs = net(images[:, :2].contiguous(), images[:, 2:].contiguous(), config.mask_ratio, masks)
                losses = croma_losses(outputs)
                figures = _global_figures(losses, ctx, device)
                if not all(math.isfinite(v) for v in figures.values()):
                    bad = next(k for k, v in figures.items() if not math.isfinite(v))
                    raise TrainingError(
                        f"{bad} became {figures[bad]} at step {position['step'] + 1}; stopped before updating the "
                        f"weights; {ckpt_path} (step {_saved_step(ckpt_path)}) is the last good checkpoint; lower --lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
            except TrainingError:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise oom_error(per_process, config.batch_size, device, precision) from None
                raise
            scheduler.step()
            t2 = time.perf_counter()
            position["batch_in_epoch"] += 1
            position["step"] += 1
            n = images.shape[0] * ctx.world_size
            acc["samples"] += n
            acc["wait_s"] += t1 - t0
            acc["step_s"] += t2 - t0
            for k in STEP_FIGURES:
                acc[k] = acc.get(k, 0.0) + figures[k] * n
            figures["lr"] = scheduler.get_last_lr()[0]
            if ctx.is_main:
                log.append({"step": position["step"], "epoch": epoch + 1, **figures})
                if on_step is not None:
                    on_step(position["step"], figures)
            bar.update(1)
            bar.set_postfix(
                loss=f"{figures['loss']:.3f}", acc=f"{figures['acc_s1_to_s2']:.2f}", T=f"{figures['temperature']:.3f}"
            )
            if config.max_steps is not None and position["step"] >= config.max_steps:
                stopped_by = "max_steps"
                break
            if config.checkpoint_every and position["step"] % config.checkpoint_every == 0:
                save_last()
        bar.close()
        if stopped_by is not None and position["batch_in_epoch"] < steps_per_epoch:
            save_last()
            break
        record = _epoch_record(epoch, position, acc, scheduler, ctx)
        if val_loader is not None:
            record["validation"] = _validate(net, model, val_loader, preprocess, precision, config, ctx, device)
        history.append(record)
        position.update(epoch=epoch + 1, batch_in_epoch=0)
        acc = _fresh_accumulators()
        save_last()
        if ctx.is_main:
            write_json_atomic(out / "metrics.json", {"status": "running", "epochs": history})
            plot_pretrain_curves(out / "steps.jsonl", history, out / "curves.png")

    result = {
        "status": "finished" if stopped_by is None else "stopped_at_max_steps",
        "steps": position["step"],
        "epochs_completed": position["epoch"],
    }
    if ctx.is_main:
        write_json_atomic(out / "metrics.json", {**result, "epochs": history})
        plot_pretrain_curves(out / "steps.jsonl", history, out / "curves.png")
    ctx.barrier()
    return result if ctx.is_main else {}


def _fresh_accumulators() -> dict:
    return {"samples": 0, "wait_s": 0.0, "step_s": 0.0}


def _saved_step(path: Path) -> int | str:
    if not path.exists():
        return "none yet"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["position"]["step"])
    except Exception:
        return "unknown"


def _global_figures(losses: dict, ctx: Distributed, device: torch.device) -> dict[str, float]:
    """Step figures averaged over ranks (one all-reduce; a NaN on any rank reaches every rank)."""
    values = torch.stack([losses[k].detach().float() for k in STEP_FIGURES])
    if ctx.enabled:
        values = values.to(device if device.type == "cuda" else "cpu")
        dist.all_reduce(values)
        values = values / ctx.world_size
    return dict(zip(STEP_FIGURES, values.tolist()))


def _epoch_record(epoch: int, position: dict, acc: dict, scheduler, ctx: Distributed) -> dict:
    step_s, wait_s = ctx.mean(acc["step_s"]), ctx.mean(acc["wait_s"])
    n = max(1, acc["samples"])
    return {
        "epoch": epoch + 1,
        "step": position["step"],
        "lr": scheduler.get_last_lr()[0],
        "train": {k: acc.get(k, 0.0) / n for k in STEP_FIGURES},
        "train_samples": acc["samples"],
        "train_samples_per_s": acc["samples"] / step_s if step_s else None,
        "data_wait_fraction": wait_s / step_s if step_s else None,
    }


@torch.no_grad()
def _validate(
    net,
    model: CROMA,
    loader,
    preprocess,
    precision: str,
    config: PretrainConfig,
    ctx: Distributed,
    device: torch.device,
) -> dict:
    """Mean step figures over the validation split, with masks from a fixed seed (comparable across epochs)."""
    net.eval()
    masks = torch.Generator(device=device).manual_seed(12345 + ctx.rank)
    total = dict.fromkeys(STEP_FIGURES, 0.0)
    count = 0
    for batch in loader:
        images, _ = preprocess(batch)
        if images.shape[0] < 2:
            continue
        images = croma_scale(images.float())
        with autocast(device, precision):
            outputs = model(images[:, :2].contiguous(), images[:, 2:].contiguous(), config.mask_ratio, masks)
        figures = croma_losses(outputs)
        for k in STEP_FIGURES:
            total[k] += float(figures[k]) * images.shape[0]
        count += images.shape[0]
    counts = ctx.gather((total, count))
    n = sum(c for _, c in counts)
    return {k: sum(t[k] for t, _ in counts) / n for k in STEP_FIGURES} if n else {"samples": 0}
