"""Training, evaluation and linear probing of multi-label classifiers on a reBEN archive.

The loop reproduces reBEN's published recipe (SPEC section 10) by default: AdamW (weight
decay 0.01), lr 1e-3, global batch 512, dropout and drop-path 0.15, linear warm-up over
1,000 steps from lr/10 then cosine to lr/10, BCE-with-logits, random horizontal and vertical
flips, up to 100 epochs, early stopping (patience 5) and model selection on validation macro
average precision.

Data move at native resolution (uint16 S2 at 10/20/60 m, float32 S1) through a DataLoader
with pinned memory; upsampling to 120x120 and normalisation run on the training device.
On a GPU the model runs channels-last under bf16 autocast; ``torch.compile`` is optional.
Under ``torchrun`` every process trains one replica (DistributedDataParallel; NCCL on GPUs,
gloo on CPUs) on its share of each epoch; ``batch_size`` is the global batch.

A run directory holds::

    RUN_DIR/
      config.json               the run's configuration
      checkpoints/last.pt       written after every epoch (and at --max-steps / every N steps)
      checkpoints/best.pt       the epoch with the best validation macro AP
      metrics.json              per-epoch history, rewritten after every epoch and at the end
      curves.png                training loss, learning rate, validation AP per epoch
      test/metrics.json         the best checkpoint on the test split (end of training)
      test/per_class.png

Checkpoints are written to a temporary file in the same directory, flushed and renamed over
the old one, so ``last.pt`` is always a complete checkpoint. A checkpoint stores the model
name, bands, fusion and class order, and loading one for another model or band set fails
with a message naming both.
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.layout import ArchiveError, SPLITS
from reben_tools.format.bands import resolve_bands
from reben_tools.format.codec import ValueDecodeError
from reben_tools.learn.dataset import ReBENDataset, collate
from reben_tools.format.labels import NUM_CLASSES, class_names
from reben_tools.learn.metrics import HEADLINE_METRICS, multilabel_metrics, plot_per_class
from reben_tools.learn.models import ReBENClassifier, build_model, build_model_from_config

CHECKPOINT_FORMAT = "reben-tools-checkpoint"
CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


class TrainingError(RuntimeError):
    """A run cannot start or go on; the message says what to change."""


class CheckpointError(TrainingError):
    """A checkpoint is unreadable or does not match the requested model, bands or run."""


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
    model_kwargs: dict = field(default_factory=dict)
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
)
DEFAULTS = {
    f.name: f.default if f.default is not MISSING else f.default_factory()
    for f in fields(TrainConfig)
    if f.default is not MISSING or f.default_factory is not MISSING
}
"""Default value of every TrainConfig field that has one (the recipe)."""


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise TrainingError(f"unknown precision {precision!r}; use bf16 or fp32")
    return precision


def default_workers(world_size: int = 1) -> int:
    """DataLoader workers per process: the process's share of the CPU cores, minus one for the loop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, world_size) - 1))


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


# --------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj: object) -> list:
        """Every process's ``obj`` as a list indexed by rank (on every process)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


def init_distributed(device: str) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (WORLD_SIZE > 1).

    CUDA runs use NCCL and one GPU per local rank; CPU runs use gloo and split the CPU threads.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Distributed(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Distributed(rank=rank, world_size=world, local_rank=local, device=dev)


# --------------------------------------------------------------------------- sampling


class EpochSampler(Sampler[int]):
    """Dataset indices of one process's share of an epoch, reproducible from (seed, epoch), resumable.

    The epoch's order is a permutation of ``indices`` seeded by ``seed + epoch`` (or
    ``indices`` as given without shuffling). With ``pad=True`` it is padded by wrapping
    around to a multiple of ``world_size`` so every process gets the same number of samples
    (needed in training, where all processes must take the same number of steps); each
    process takes every ``world_size``-th entry from its rank. :meth:`set_position` skips
    the first samples of the share, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, indices, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 pad: bool = True) -> None:
        self.indices = [int(i) for i in indices]
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_position(self, samples_done: int) -> None:
        self.start = samples_done

    def share(self) -> list[int]:
        """The full list of this process's dataset indices for the current epoch (before skipping)."""
        size = len(self.indices)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(size, generator=g).tolist()
        else:
            order = list(range(size))
        if self.pad and size % self.world_size:
            extra = self.world_size - size % self.world_size
            order += (order * math.ceil(extra / max(1, size)))[:extra]
        return [self.indices[i] for i in order[self.rank :: self.world_size]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.share()[self.start :])

    def __len__(self) -> int:
        size = len(self.indices)
        n = math.ceil(size / self.world_size) if self.pad else len(range(self.rank, size, self.world_size))
        return max(0, n - self.start)


# --------------------------------------------------------------------------- data



def open_dataset(archive: str | os.PathLike, bands: tuple[str, ...], class_order: str = "alphabetical",
                 include_snow_cloud: bool = False) -> ReBENDataset:
    """The native-resolution :class:`ReBENDataset` of all splits, checked to hold ``bands``.

    One dataset per process serves every split (through :func:`split_indices`): an LMDB
    environment can be open only once per process.

    Raises:
        TrainingError: the archive cannot be opened or lacks values for some of the bands
            (e.g. an S2-only archive asked for S1); the message says what to change.
    """
    try:
        dataset = ReBENDataset(archive, split=None, bands=bands, include_snow_cloud=include_snow_cloud,
                               class_order=class_order, native=True)
    except (ArchiveError, ValueError, OSError) as exc:
        raise TrainingError(f"cannot read archive {archive}: {exc}") from None
    try:
        _check_dataset(dataset, archive, bands)
    except TrainingError:
        dataset.archive.close()
        raise
    return dataset


def _check_dataset(dataset: ReBENDataset, archive, bands: tuple[str, ...]) -> None:
    manifest = dataset.archive.manifest
    if manifest is not None:
        stored = {b["name"] for b in manifest.get("bands", [])}
        missing = [b for b in bands if b not in stored]
        if missing:
            raise TrainingError(f"{archive}: the archive holds no band(s) {missing}; choose --bands from {sorted(stored)}")
    if len(dataset) == 0:
        raise TrainingError(f"{archive}: the archive's metadata lists no patches")
    try:
        dataset.__getitems__([0])
    except (KeyError, ValueDecodeError) as exc:
        modality = "S1" if any(b in ("VV", "VH") for b in bands) else "S2"
        raise TrainingError(
            f"{archive}: cannot read the requested bands {list(bands)} ({exc}); the archive may lack "
            f"{modality} values -- choose --bands for the modalities it holds"
        ) from None


def split_indices(dataset: ReBENDataset, split: str) -> np.ndarray:
    """Dataset indices (int64, ascending = patch-id order) of the patches of ``split``.

    Raises:
        TrainingError: unknown split, or the archive has no patch in it.
    """
    if split not in SPLITS:
        raise TrainingError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    splits = np.asarray(dataset.metadata.column("split").to_pylist(), dtype=object)
    indices = np.flatnonzero(splits == split)
    if indices.size == 0:
        raise TrainingError(
            f"{dataset.root}: no patches in split {split!r} (the archive has {sorted(set(splits.tolist()))}); "
            "use an archive with train, validation and test patches"
        )
    return indices


class CollateToImages:
    """``collate_fn`` that also upsamples and normalises, for CPU training with DataLoader workers.

    On a CPU the "device" step would otherwise run in the training process; in the workers
    it overlaps with the training step. Output: the batch dict with ``image`` (B, C, 120, 120)
    float32 in place of the native groups.
    """

    def __init__(self, dataset: ReBENDataset) -> None:
        self.transform = dataset.native_transform()

    def __call__(self, samples) -> dict:
        batch = collate(samples)
        native = {g.name for g in self.transform.layout.groups}
        images = self.transform(batch)
        return {"image": images, **{k: v for k, v in batch.items() if k not in native}}


def make_loader(dataset, sampler: Sampler, batch_size: int, workers: int, device: torch.device,
                seed: int) -> DataLoader:
    """DataLoader over native-resolution samples: pinned memory on CUDA, persistent workers.

    Batches stay at native resolution (uint16 S2, about a third of the float32 bytes) for the
    host-to-device copy; on a CPU with workers, the workers upsample and normalise instead
    (:class:`CollateToImages`). The loader has its own random generator, so creating an
    iterator never draws from the global torch generator (part of what makes a resumed run
    continue exactly).
    """
    generator = torch.Generator().manual_seed(seed)
    collate_fn = CollateToImages(dataset) if device.type == "cpu" and workers > 0 else collate
    kwargs = dict(persistent_workers=True, prefetch_factor=4) if workers > 0 else {}
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=False, generator=generator,
        collate_fn=collate_fn, **kwargs,
    )


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of ``(B, C, H, W)`` left-right and/or up-down with probability 1/2 each."""
    b = images.shape[0]
    flips = torch.rand((2, b), generator=generator, device=generator.device) < 0.5
    flips = flips.to(images.device)
    images = torch.where(flips[0].view(b, 1, 1, 1), images.flip(-1), images)
    return torch.where(flips[1].view(b, 1, 1, 1), images.flip(-2), images)


class DevicePreprocess:
    """Native batch on the host -> ``(images (B, C, 120, 120) float32 normalised, labels (B, 19))`` on ``device``.

    Copies with ``non_blocking=True`` (from pinned memory on CUDA), then upsamples and
    normalises on the device through the dataset module; channels-last on CUDA.
    """

    def __init__(self, dataset: ReBENDataset, device: torch.device) -> None:
        self.device = device
        self.transform = dataset.native_transform().to(device)
        self.channels_last = device.type == "cuda"

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "image" in batch:  # already upsampled by CollateToImages in a CPU worker
            images = batch["image"].to(self.device, non_blocking=True)
        else:
            images = self.transform(batch)  # moves the native groups with non_blocking copies
        labels = batch["label"].to(self.device, non_blocking=True).float()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels


# --------------------------------------------------------------------------- checkpoints


def _rng_state(aug: torch.Generator | None) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": _python_state_to_tensors(random.getstate()),
        "augment": aug.get_state() if aug is not None else None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _python_state_to_tensors(state: tuple) -> list:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _set_rng_state(state: dict, aug: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    if aug is not None and state.get("augment") is not None:
        aug.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, flush + fsync, rename.

    A crash at any point leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loading: tensors and plain data only).

    Raises:
        CheckpointError: missing, unreadable or not a reben-tools checkpoint (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a reben-tools checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not supported")
    return state


def check_checkpoint_matches(state: dict, path: Path | str, model: str | None = None, bands=None,
                             fusion: str | None = None, class_order: str | None = None) -> None:
    """Raise :class:`CheckpointError` when the checkpoint was trained for another model, band set,
    fusion or class order than the one asked for (``None`` = not asked)."""
    cfg = state["model_config"]
    problems = []
    if model is not None and model != cfg["name"]:
        problems.append(f"model {cfg['name']!r}, not {model!r}")
    if bands is not None and list(resolve_bands(bands)) != list(cfg["bands"] or []):
        problems.append(f"bands {cfg['bands']}, not {list(resolve_bands(bands))}")
    if fusion is not None and fusion != cfg["fusion"]:
        problems.append(f"{cfg['fusion']} fusion, not {fusion}")
    if class_order is not None and class_order != state["class_order"]:
        problems.append(f"class order {state['class_order']!r}, not {class_order!r}")
    if problems:
        raise CheckpointError(
            f"{path}: checkpoint was trained with " + "; ".join(problems)
            + ". Use a checkpoint of that model and band set, or drop/adjust the flags to match it."
        )


def model_from_checkpoint(state: dict, path: Path | str) -> ReBENClassifier:
    """Rebuild the checkpoint's model and load its weights (strict)."""
    model = build_model_from_config(state["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {state['model_config']['name']!r} ({exc})") from None
    return model


# --------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, preprocess: DevicePreprocess, precision: str,
            progress: bool = False, desc: str = "predict", features: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (or encoder features) ``(N, K)`` float32, targets ``(N, 19)`` and dataset indices ``(N,)``.

    Indices come from the loader's sampler order, so predictions of several processes can be
    merged and de-duplicated.
    """
    from tqdm import tqdm

    model.eval()
    outs, targets = [], []
    device = preprocess.device
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, labels = preprocess(batch)
        with _autocast(device, precision):
            out = model.forward_features(images) if features else model(images)
        outs.append(out.float().cpu())
        targets.append(labels.cpu())
    indices = np.asarray(list(iter(loader.sampler)), dtype=np.int64)
    width = model.num_features if features else NUM_CLASSES
    out = torch.cat(outs).numpy() if outs else np.zeros((0, width), np.float32)
    tgt = torch.cat(targets).numpy() if targets else np.zeros((0, NUM_CLASSES), np.float32)
    return out, tgt, indices


def _merge_predictions(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    out = np.concatenate([p[0] for p in parts])
    tgt = np.concatenate([p[1] for p in parts])
    idx = np.concatenate([p[2] for p in parts])
    _, first = np.unique(idx, return_index=True)
    order = first[np.argsort(idx[first])]
    return out[order], tgt[order]


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "Cannot allocate memory" in text)


def _oom_error(per_process_batch: int, global_batch: int, device: torch.device, precision: str) -> TrainingError:
    hint = f"lower --batch-size (now {global_batch}), e.g. --batch-size {max(1, global_batch // 2)}"
    if precision != "bf16" and device.type == "cuda":
        hint += ", or use --precision bf16"
    return TrainingError(f"a batch of {per_process_batch} samples does not fit in memory on {device}: {hint}")


# --------------------------------------------------------------------------- the loop


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
        _set_rng_state(state["rng"][ctx.rank], augment)

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
        rng = ctx.gather(_rng_state(augment))
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
                if _is_out_of_memory(exc):
                    raise _oom_error(per_process_batch, config.batch_size, device, precision) from None
                raise
            t1b = time.perf_counter()
            if config.flips:
                images = random_flips(images, augment)
            try:
                with _autocast(device, precision):
                    logits = net(images)
                loss = criterion(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            except Exception as exc:
                if _is_out_of_memory(exc):
                    raise _oom_error(per_process_batch, config.batch_size, device, precision) from None
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
            _write_run_metrics(out, history, early, status="running")
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
        metrics = _write_run_metrics(out, history, early, status=result["status"], extra=result)
        if history:
            plot_curves(history, out / "curves.png")
    else:
        metrics = {}
    ctx.barrier()
    return metrics  # empty on processes other than the main one


def _end_of_epoch(model, val_loader, preprocess, precision, ctx, config, epoch, progress_state, accumulators,
                  scheduler) -> dict:
    parts = ctx.gather(predict(model, val_loader, preprocess, precision, progress=False))
    logits, targets = _merge_predictions(parts)
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
    logits, targets = _merge_predictions(parts)
    metrics = multilabel_metrics(logits, targets, class_order=config.class_order)
    metrics["checkpoint_epoch"] = state["position"]["epoch"]
    if ctx.is_main:
        (out / "test").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "test" / "metrics.json", metrics)
        plot_per_class(metrics, out / "test" / "per_class.png", title=f"{config.model} on {config.bands}: test")
    return {k: metrics[k] for k in HEADLINE_METRICS}


def _write_run_metrics(out: Path, history: list[dict], early: dict, status: str, extra: dict | None = None) -> dict:
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


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, validation loss, validation macro/micro AP and learning rate per epoch (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    axes[0].plot(epochs, [h["validation"].get("loss") for h in history], "o-", label="validation")
    axes[0].set(title="BCE loss", xlabel="epoch")
    axes[0].legend()
    for key, label in (("average_precision_macro", "macro AP"), ("average_precision_micro", "micro AP"),
                       ("f1_macro", "macro F1")):
        axes[1].plot(epochs, [h["validation"].get(key) for h in history], "o-", label=label)
    axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1))
    axes[1].legend()
    axes[2].plot(epochs, [h["lr"] for h in history], "o-")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{uuid.uuid4().hex}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- evaluation and probing


def _checked_model(checkpoint: str | os.PathLike, model: str | None, bands, fusion: str | None):
    state = load_checkpoint(checkpoint)
    check_checkpoint_matches(state, checkpoint, model=model, bands=bands, fusion=fusion)
    return state, model_from_checkpoint(state, checkpoint)


def _split_config(archive: str, state: dict) -> TrainConfig:
    cfg = state["model_config"]
    return TrainConfig(archive=str(archive), bands=cfg["bands"], model=cfg["name"], out="",
                       class_order=state["class_order"],
                       include_snow_cloud=state.get("train_config", {}).get("include_snow_cloud", False))


def evaluate(archive: str | os.PathLike, checkpoint: str | os.PathLike, split: str = "test",
             out: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
             batch_size: int = 512, workers: int | None = None, model: str | None = None, bands=None,
             threshold: float = 0.5, progress: bool = True) -> dict:
    """Metrics of a checkpoint on one split of an archive; writes ``metrics.json`` and
    ``per_class.png`` into ``out`` when given.

    Raises:
        CheckpointError: the checkpoint does not match ``model`` / ``bands`` when given.
        TrainingError: the archive lacks the split or the checkpoint's bands.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    state, net = _checked_model(checkpoint, model, bands, None)
    net = net.to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    config = _split_config(str(archive), state)
    dataset = open_dataset(archive, tuple(state["model_config"]["bands"]), state["class_order"],
                           config.include_snow_cloud)
    try:
        indices = split_indices(dataset, split)
        workers = default_workers() if workers is None else workers
        loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), batch_size, workers, dev, 0)
        try:
            logits, targets, _ = predict(net, loader, DevicePreprocess(dataset, dev), prec, progress,
                                         desc=f"evaluate {split}")
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise _oom_error(batch_size, batch_size, dev, prec) from None
            raise
    finally:
        dataset.archive.close()
    metrics = multilabel_metrics(logits, targets, threshold=threshold, class_order=state["class_order"])
    metrics.update(split=split, checkpoint=str(checkpoint), model=state["model_config"]["name"],
                   bands=state["model_config"]["bands"], fusion=state["model_config"]["fusion"])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", metrics)
        plot_per_class(metrics, out / "per_class.png",
                       title=f"{metrics['model']} on {split} (macro AP {metrics['average_precision_macro']:.3f})")
    return metrics


PROBES = ("linear", "mlp", "random_forest")


def _fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier

    if kind == "linear":
        estimator = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=1.0))
    elif kind == "mlp":
        # no early stopping: scikit-learn would stop on exact-match accuracy, which collapses multi-label fits
        estimator = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-2, max_iter=200, early_stopping=False,
                                  random_state=seed)
    elif kind == "random_forest":
        estimator = RandomForestClassifier(n_estimators=200, min_samples_leaf=1, n_jobs=-1, random_state=seed)
    else:
        raise ValueError(f"unknown probe {kind!r}; expected one of {list(PROBES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant label columns, convergence notes
        estimator.fit(x_train, y_train.astype(int))
    return estimator


def _probe_scores(estimator, x: np.ndarray, k: int) -> np.ndarray:
    """(N, K) probabilities of the positive class from any of the fitted probes."""
    proba = estimator.predict_proba(x)
    if isinstance(proba, list):  # random forest: one (N, classes seen) array per output
        out = np.zeros((x.shape[0], k))
        for j, (p, classes) in enumerate(zip(proba, estimator.classes_)):
            classes = list(classes)
            out[:, j] = p[:, classes.index(1)] if 1 in classes else 0.0
        return out
    return np.asarray(proba, dtype=np.float64)


def probe(archive: str | os.PathLike, checkpoint: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          model: str | None = None, bands=None, fusion: str = "early", probes: tuple[str, ...] = PROBES,
          train_split: str = "train", test_split: str = "test", max_train_samples: int | None = None,
          device: str = "auto", precision: str = "auto", batch_size: int = 256, workers: int | None = None,
          seed: int = 0, progress: bool = True) -> dict:
    """Frozen-encoder representation probing.

    Features (the classifier's input, before dropout and head) are extracted with the
    checkpoint's encoder -- or a randomly initialised ``model`` on ``bands`` when no checkpoint
    is given, the usual baseline -- for ``train_split`` and ``test_split``, standardised with
    the train statistics, and a linear probe (one-vs-rest logistic regression, C=1), a small MLP
    (one hidden layer of 256, L2 1e-2, 200 Adam epochs) and a random forest (200 trees) are
    fitted on train. Returns
    (and writes to ``out/metrics.json``, with ``out/probes.png``) the test metrics of each.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if checkpoint is not None:
        state, net = _checked_model(checkpoint, model, bands, None)
        config = _split_config(str(archive), state)
        source = {"checkpoint": str(checkpoint)}
    else:
        if model is None or bands is None:
            raise TrainingError("probe needs --checkpoint, or --model and --bands for a randomly initialised encoder")
        torch.manual_seed(seed)
        net = build_model(model, bands, fusion=fusion)
        config = TrainConfig(archive=str(archive), bands=list(resolve_bands(bands)), model=model, out="")
        source = {"random_init": model}
    net = net.to(dev)
    band_list = tuple(net.config["bands"])
    workers = default_workers() if workers is None else workers
    feats = {}
    dataset = open_dataset(archive, band_list, config.class_order, config.include_snow_cloud)
    try:
        for split in (train_split, test_split):
            indices = split_indices(dataset, split)
            if split == train_split and max_train_samples is not None and max_train_samples < len(indices):
                rng = np.random.default_rng(seed)
                indices = np.sort(rng.choice(indices, size=max_train_samples, replace=False))
            loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), batch_size, workers, dev,
                                 seed)
            x, y, _ = predict(net, loader, DevicePreprocess(dataset, dev), prec, progress, desc=f"features {split}",
                              features=True)
            feats[split] = (x.astype(np.float64), y)
    finally:
        dataset.archive.close()
    x_train, y_train = feats[train_split]
    x_test, y_test = feats[test_split]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    results: dict = {"source": source, "features": int(x_train.shape[1]), "train_samples": int(len(x_train)),
                     "test_samples": int(len(x_test)), "probes": {}}
    for kind in probes:
        t0 = time.perf_counter()
        estimator = _fit_probe(kind, x_train, y_train, seed)
        scores = _probe_scores(estimator, x_test, y_test.shape[1])
        m = multilabel_metrics(scores, y_test, logits=False, class_order=config.class_order)
        m["fit_seconds"] = time.perf_counter() - t0
        results["probes"][kind] = m
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", results)
        _plot_probes(results, out / "probes.png")
    return results


def _plot_probes(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["probes"])
    keys = ("average_precision_macro", "average_precision_micro", "f1_macro", "f1_micro")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        vals = [results["probes"][kind][k] or 0.0 for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=kind)
    ax.set_xticks(np.arange(len(keys)) + width * (len(kinds) - 1) / 2, keys, fontsize=8)
    ax.set(ylim=(0, 1), title="probes on frozen features (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
