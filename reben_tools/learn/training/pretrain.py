"""Self-supervised CROMA pretraining on a reBEN archive (``reben pretrain``), as an objective of the
training skeleton (:mod:`.skeleton`, which owns epochs, steps, synchronisation, checkpoints and resume).

Pretrains a CROMA model (:mod:`reben_tools.learn.models.croma`) on the train split's paired S1/S2
patches, without labels: independent random masks per modality, symmetric InfoNCE between
the pooled radar and optical embeddings (negatives from every DDP rank) plus masked-patch
reconstruction of both modalities (:mod:`reben_tools.learn.models.croma_losses`).

The skeleton gives it what ``reben train`` has: the native-resolution loaders and device
preprocessing, a training sampler resumable mid-epoch, torchrun/DDP, bf16 autocast,
``torch.compile``, atomic checkpoints with every process's RNG state, the warm-up + cosine
schedule, step figures read back only at synchronisation points. The run directory::

    RUN/
      config.json                 the run's configuration
      checkpoints/last.pt         atomic; CROMA's published layout at the top level (the five
                                  parts load into the reference ``use_croma.py`` unchanged) plus
                                  decoder, contrastive head, optimiser, schedule, RNG, position
      croma_published.pt          the five published parts only (written with every last.pt)
      steps.jsonl                 per step: both losses, temperature, retrieval accuracy, lr
      metrics.json                per-epoch history (train and validation figures)
      curves.png                  per-step losses, temperature and retrieval accuracy

The masks are drawn inside the model from torch's global generator of the device (no generator
object, so ``torch.compile`` traces the whole forward as one graph); its state is in every
checkpoint, so a resumed run draws the same masks. The flips come from the skeleton's CPU
generator. A non-finite figure stops the run at the next synchronisation point (every step on a
CPU); the last checkpoint on disk stays the last good one.

Owns: PretrainConfig, pretrain, Croma (the objective), the pretraining checkpoint contents, read_init.
Does not own: the model and losses (croma, croma_losses), step logs and curves (pretrain_log),
the skeleton, loaders, devices, processes and checkpoint I/O (skeleton, loaders, devices, distributed, checkpoints).
May import: numpy, torch; reben_tools.format; reben_tools.learn modules.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import MISSING, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import BAND_GROUPS
from reben_tools.learn.data.augment import random_flips
from reben_tools.learn.data.loaders import DevicePreprocess, make_loader, open_dataset, run_source, split_indices
from reben_tools.learn.models.croma import CONFIGS, CROMA, PUBLISHED_PARTS, ContrastiveHead, Decoder, croma_scale
from reben_tools.learn.models.croma_layout import CheckpointLayoutError, load_published, published_state
from reben_tools.learn.models.croma_losses import croma_losses, gather_rows, patch_normalise
from reben_tools.learn.runtime.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from reben_tools.learn.runtime.config import RunSettings, TrainingError
from reben_tools.learn.runtime.devices import autocast
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler
from reben_tools.learn.runtime.weights import read_state_dict
from reben_tools.learn.training import skeleton
from reben_tools.learn.training.pretrain_log import StepLog, plot_pretrain_curves
from reben_tools.learn.training.skeleton import FullBatchSampler as FullBatchSampler  # re-exported

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
VALIDATION_SEED = 12345
"""Seed of the validation masks (the same masks every epoch, so epochs compare)."""


@dataclass
class PretrainConfig(RunSettings):
    """Everything that defines a pretraining run (fields in :data:`TRAJECTORY_FIELDS` are fixed on resume;
    those of :class:`RunSettings` may change)."""

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
    state = read_state_dict(path, "CROMA checkpoint")
    try:
        load_published(model, state, str(path))
    except CheckpointLayoutError as exc:
        raise CheckpointError(str(exc)) from None


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
    return skeleton.run(Croma(config), resume, given, on_step)


class Croma(skeleton.Objective):
    """CROMA's pretraining: contrastive + masked reconstruction, figures averaged over processes per step."""

    figures = STEP_FIGURES
    reduce_figures = True
    varying_batch = False  # whole batches only (FullBatchSampler)
    config: PretrainConfig
    model: CROMA
    statistics: dict[str, tuple[float, float]]
    val_sampler: EpochSampler | None
    val_loader: DataLoader | None

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.log: StepLog | None = None

    # --- set-up
    def resume_state(self, ctx: Distributed, given: set[str]) -> dict:
        config, path = self.config, self.last_checkpoint
        state = load_checkpoint(path)
        if state.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(
                f"{path}: not a reben pretrain checkpoint (use reben train --resume for that run)", all_processes=True
            )
        stored = state["pretrain_config"]
        conflicts = [
            f"--{n.replace('_', '-')} {getattr(config, n)!r} (the run has {stored[n]!r})"
            for n in TRAJECTORY_FIELDS
            if n in given and getattr(config, n) != stored[n]
        ]
        if conflicts:
            raise CheckpointError(
                f"{path}: --resume continues the stored run, which differs in: "
                + "; ".join(conflicts)
                + ". Drop these flags to resume, or start a new run with another --out.",
                all_processes=True,
            )
        for name in TRAJECTORY_FIELDS:
            setattr(config, name, stored[name])
        if state["world_size"] != ctx.world_size:
            raise CheckpointError(
                f"{path}: run was trained with {state['world_size']} process(es); "
                f"resume it with the same number (now {ctx.world_size})",
                all_processes=True,
            )
        return state

    def check(self, ctx: Distributed, resuming: bool) -> None:
        config = self.config
        if config.model not in CONFIGS:
            raise TrainingError(f"unknown model {config.model!r}; choose one of {sorted(CONFIGS)}", all_processes=True)
        if not 0.0 < config.mask_ratio < 1.0 or int(CONFIGS[config.model].num_patches * (1 - config.mask_ratio)) < 1:
            raise TrainingError(
                f"--mask-ratio {config.mask_ratio} must be in (0, 1) and keep at least one patch", all_processes=True
            )
        if config.batch_size % ctx.world_size == 0 and config.batch_size // ctx.world_size < 2:
            raise TrainingError(
                "--batch-size must give each process at least 2 samples (contrastive negatives)", all_processes=True
            )

    def open_data(self, ctx: Distributed, batch: int, workers: int, cleanup: ExitStack):
        config, device = self.config, ctx.device
        try:
            self.source = run_source(config.archive, config.metadata)  # recorded in config.json for --resume
            dataset = open_dataset(self.source, PRETRAIN_BANDS, include_snow_cloud=config.include_snow_cloud)
        except TrainingError as exc:
            raise TrainingError(
                str(exc).split("; choose --bands")[0].split(" -- choose --bands")[0]
                + "; CROMA pretraining needs both S1 (VV, VH) and all 12 S2 bands"
            ) from None
        cleanup.callback(dataset.archive.close)
        assert dataset.statistics is not None, "open_dataset normalises with the published statistics"
        self.statistics = dataset.statistics
        sampler = skeleton.train_sampler(split_indices(dataset, "train"), ctx, config.seed, whole_batches_of=batch)
        self.val_loader = self.val_sampler = None
        if "validation" in set(dataset.metadata.column("split").to_pylist()):
            # padded so that every process takes part in every batch's collectives; the padding is masked
            self.val_sampler = EpochSampler(
                split_indices(dataset, "validation"), ctx.rank, ctx.world_size, shuffle=False, pad=True
            )
            self.val_loader = make_loader(dataset, self.val_sampler, batch, workers, device, config.seed)
        if len(sampler) == 0:
            raise TrainingError(
                f"{config.archive}: the train split has fewer patches than one batch per process "
                f"({batch}); lower --batch-size"
            )
        self.preprocess = DevicePreprocess(dataset, device)
        return sampler, make_loader(dataset, sampler, batch, workers, device, config.seed)

    def build(self, ctx: Distributed, state: dict | None):
        config = self.config
        model = CROMA(CONFIGS[config.model], pretraining=True)
        if config.init is not None and state is None:
            read_init(config.init, model)
        self.model = model = model.to(ctx.device)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "mask_token" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "mask_token" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.95),
        )
        return model, optimizer

    def restore(self, state: dict) -> None:
        try:
            load_published(self.model, state, str(self.last_checkpoint))
            decoder, contrast = _pretraining_heads(self.model)
            decoder.load_state_dict(state["decoder"])
            contrast.load_state_dict(state["contrast"])
        except (CheckpointLayoutError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.last_checkpoint}: weights do not fit {self.config.model} ({exc})", all_processes=True
            ) from None

    def begin(self, position: dict) -> None:
        self.log = StepLog(self.out / "steps.jsonl")
        self.log.truncate(position["step"])

    def run_record(self) -> tuple[dict, dict]:
        return {}, {
            "croma_config": self.model.config.to_dict(),
            "input": input_record(self.statistics),
            "source": self.source.record(),
        }

    # --- steps
    def inputs(self, batch, generator: torch.Generator) -> tuple:
        images, _ = self.preprocess(batch)
        return (images,)

    def forward(self, net: nn.Module, inputs: tuple, generator: torch.Generator):
        (images,) = inputs
        if self.config.flips:
            images = random_flips(images, generator)  # the same flip for S1 and S2: they are co-registered
        images = croma_scale(images.float())
        with autocast(self.ctx.device, self.precision):  # masks from the device's global generator (no object)
            outputs = net(images[:, :2].contiguous(), images[:, 2:].contiguous(), self.config.mask_ratio)
        losses = croma_losses(outputs)
        figures = torch.stack([losses[k].detach().float() for k in STEP_FIGURES])
        return losses["loss"], figures, images.shape[0]

    def nonfinite(self, figure: str, value: float, step: int, saved_step: int | None) -> str:
        if saved_step is None:
            return f"{figure} became {value} at step {step}; no checkpoint was written before it; lower --lr"
        return (
            f"{figure} became {value} at step {step}; {self.last_checkpoint} (step {saved_step}) is the last good "
            "checkpoint; lower --lr"
        )

    def report(self, step: int, epoch: int, values: dict, lr: float, on_step: Callable | None) -> None:
        figures = {**values, "lr": lr}
        assert self.log is not None, "begin() opened the step log (only the main process reports)"
        self.log.append({"step": step, "epoch": epoch, **figures})
        if on_step is not None:
            on_step(step, figures)

    def postfix(self, values: dict, lr: float) -> dict:
        return {
            "loss": f"{values['loss']:.3f}",
            "acc": f"{values['acc_s1_to_s2']:.2f}",
            "T": f"{values['temperature']:.3f}",
        }

    # --- epochs
    def end_of_epoch(self, net: nn.Module, model: nn.Module, epoch: int, common: dict, train: dict) -> dict:
        record = {"epoch": common["epoch"], "step": common["step"], "lr": common["lr"], "train": train}
        record.update({k: v for k, v in common.items() if k not in record})
        if self.val_loader is not None:
            record["validation"] = self.validate(net)
        return record

    def epoch_line(self, record: dict) -> str:
        train, val = record["train"], record.get("validation") or {}
        line = (
            f"epoch {record['epoch']}/{self.config.epochs}: loss {train['loss']:.4f} (contrastive "
            f"{train['contrastive']:.4f}, reconstruction {train['reconstruction']:.4f}), retrieval S1->S2 "
            f"{train['acc_s1_to_s2']:.2f}"
        )
        if "loss" in val:
            line += f", validation loss {val['loss']:.4f}"
        return line + f", {record.get('train_samples_per_s') or 0:.0f} samples/s"

    @torch.no_grad()
    def validate(self, net: nn.Module) -> dict:
        """Mean step figures over the validation split, each patch counted once, with masks from a fixed seed
        (comparable across epochs); padded duplicates take part in the batch collectives but not in the sums."""
        ctx, model, device = self.ctx, self.model, self.ctx.device
        assert self.val_sampler is not None and self.val_loader is not None, "called only with a validation split"
        net.eval()
        masks = torch.Generator(device=device).manual_seed(VALIDATION_SEED + ctx.rank)
        real, seen = self.val_sampler.real_samples(), 0
        total = dict.fromkeys(STEP_FIGURES, 0.0)
        count = 0
        for batch in self.val_loader:
            images, _ = self.preprocess(batch)
            b = images.shape[0]
            if b < 2:  # the same on every process: padded shares are equally long
                seen += b
                continue
            images = croma_scale(images.float())
            with autocast(device, self.precision):
                outputs = model(images[:, :2].contiguous(), images[:, 2:].contiguous(), self.config.mask_ratio, masks)
            rows = row_figures(outputs)
            keep = (torch.arange(b, device=images.device) + seen < real).to(torch.float64)
            for k in STEP_FIGURES:
                total[k] += float((rows[k].double() * keep).sum())
            count += int(keep.sum())
            seen += b
        counts = ctx.gather((total, count))
        n = sum(c for _, c in counts)
        return {k: sum(t[k] for t, _ in counts) / n for k in STEP_FIGURES} | {"samples": n} if n else {"samples": 0}

    # --- checkpoints and the end
    def checkpoint(self, model: nn.Module, common: dict) -> dict:
        assert isinstance(model, CROMA), "the skeleton passes the model build() made"
        decoder, contrast = _pretraining_heads(model)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": CHECKPOINT_KIND,
            **published_state(model),
            "decoder": decoder.state_dict(),
            "contrast": contrast.state_dict(),
            "croma_config": model.config.to_dict(),
            "input": input_record(self.statistics),
            "pretrain_config": {n: getattr(self.config, n) for n in TRAJECTORY_FIELDS},
            **common,
        }

    def save(self, snapshot: dict, record: dict | None, history: list[dict]) -> None:
        save_checkpoint(self.last_checkpoint, snapshot)
        save_checkpoint(self.out / PUBLISHED_FILE, {p: snapshot[p] for p in PUBLISHED_PARTS})
        assert self.log is not None, "begin() opened the step log (only the main process saves and finishes)"
        self.log.flush()
        if record is not None:
            write_json_atomic(self.out / "metrics.json", {"status": "running", "epochs": history})
            plot_pretrain_curves(self.out / "steps.jsonl", history, self.out / "curves.png")

    def finish(self, ctx: Distributed, result: dict, history: list[dict]) -> dict:
        if not ctx.is_main:
            return {}
        assert self.log is not None, "begin() opened the step log (only the main process saves and finishes)"
        self.log.flush()
        write_json_atomic(self.out / "metrics.json", {**result, "epochs": history})
        plot_pretrain_curves(self.out / "steps.jsonl", history, self.out / "curves.png")
        return result


def _pretraining_heads(model: CROMA) -> tuple[Decoder, ContrastiveHead]:
    """``model``'s decoder and contrastive head (a pretraining CROMA has both)."""
    if model.decoder is None or model.contrast is None:
        raise RuntimeError("this CROMA was built without pretraining heads (pretraining=False)")
    return model.decoder, model.contrast


def row_figures(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The figures of :func:`croma_losses` per sample of this process, float (b,) each.

    Their mean over the rows equals ``croma_losses(outputs)`` (every sample has the same number of
    masked patches, so the masked-patch mean is the mean of the per-sample means); the validation
    uses them to leave the padded rows out. Negatives come from every process, as in training.
    """
    s1, s2, scale = outputs["s1_proj"], outputs["s2_proj"], outputs["logit_scale"]
    all_s1, offset = gather_rows(s1)
    all_s2, _ = gather_rows(s2)
    labels = torch.arange(s1.shape[0], device=s1.device) + offset
    logits_s1 = scale * s1.float() @ all_s2.float().t()
    logits_s2 = scale * s2.float() @ all_s1.float().t()
    contrastive = (
        F.cross_entropy(logits_s2, labels, reduction="none") + F.cross_entropy(logits_s1, labels, reduction="none")
    ) / 2
    pred, target = outputs["pred"].float(), patch_normalise(outputs["target"].float())
    b, n, p = pred.shape
    error = ((pred - target) ** 2).reshape(b, n, 14, p // 14)
    per_patch_s2, per_patch_s1 = error[:, :, :12].mean(dim=(-2, -1)), error[:, :, 12:].mean(dim=(-2, -1))
    mask_s1, mask_s2 = outputs["mask_s1"], outputs["mask_s2"]
    recon_s1 = (per_patch_s1 * mask_s1).sum(1) / mask_s1.sum(1)
    recon_s2 = (per_patch_s2 * mask_s2).sum(1) / mask_s2.sum(1)
    return {
        "loss": contrastive + recon_s1 + recon_s2,
        "contrastive": contrastive,
        "reconstruction": recon_s1 + recon_s2,
        "reconstruction_s1": recon_s1,
        "reconstruction_s2": recon_s2,
        "temperature": (1.0 / scale).detach().float().expand(b),
        "acc_s1_to_s2": (logits_s1.argmax(dim=1) == labels).float(),
        "acc_s2_to_s1": (logits_s2.argmax(dim=1) == labels).float(),
    }
