"""The one training skeleton: epochs, steps and checkpoints of a run, whatever it optimises.

``reben train`` (:mod:`.loop`, a supervised classifier) and ``reben pretrain`` (:mod:`.pretrain`,
CROMA) are :class:`Objective` subclasses: what a batch becomes on the device, what the loss and the
logged figures of a step are, what an epoch's validation is, and what a checkpoint holds. This
module runs them and owns everything else:

- the process group (:func:`run`): every process leaves together, or a process that fails alone
  (out of memory) leaves without ``destroy_process_group`` (NCCL would wait for the others) and
  torchrun stops the rest, which raise :class:`StoppedByPeer`;
- the run directory's start: a shared ``--out`` across nodes, refusing an existing run without
  ``--resume``, seeding, DataLoader workers from the processes of *this node*
  (``LOCAL_WORLD_SIZE``), the training sampler (:func:`train_sampler`), the warm-up + cosine
  schedule over optimiser steps, DDP, ``torch.compile``;
- epochs and steps: the sampler's position (a resumed run skips the batches already done),
  progress bar, timing (data wait, preprocessing, step), gradient accumulation over
  ``accumulate`` micro-batches (DDP's ``no_sync`` on all but the last), out-of-memory messages;
- synchronisation points: the step figures stay on the device and are read back every
  :data:`SYNC_EVERY` steps on a GPU (every step on a CPU or with a per-step callback), before
  every checkpoint and at the end of every epoch; a non-finite figure on any process stops every
  process at the same synchronisation point, naming the earliest step and its process;
- checkpoints every ``checkpoint_every`` steps, at ``max_steps`` and after every epoch, with the
  position, every process's accumulators and RNG states, and the per-epoch history.

Owns: run, Objective, ObjectiveConfig, SYNC_EVERY, sync_interval, loader_workers, train_sampler, FullBatchSampler, mark_batch_dynamic.
Does not own: what is optimised and validated (loop.py, pretrain.py), checkpoint I/O (runtime/checkpoints.py),
collectives (runtime/distributed.py), the schedule's shape (runtime/schedule.py).
May import: numpy, torch, tqdm; reben_tools.learn.runtime, reben_tools.learn.data.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from tqdm import tqdm

from reben_tools.format.atomic import write_json_atomic
from reben_tools.learn.data.loaders import default_workers
from reben_tools.learn.runtime.checkpoints import rng_state, set_rng_state
from reben_tools.learn.runtime.config import StoppedByPeer, TrainingError
from reben_tools.learn.runtime.devices import is_out_of_memory, oom_error, resolve_precision, set_deterministic
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler, init_distributed, is_peer_failure
from reben_tools.learn.runtime.rundir import LAST_CHECKPOINT
from reben_tools.learn.runtime.schedule import effective_warmup, lr_factor

SYNC_EVERY = 50
"""On GPUs, steps between reading the step figures back to the host (checks, progress bar, logs)."""


def sync_interval(device: torch.device, per_step_callback: bool) -> int:
    """Steps between reading the step figures back: every step on a CPU (free there) or when a per-step
    callback wants each one, else :data:`SYNC_EVERY` (the host does not wait for the GPU)."""
    return 1 if device.type == "cpu" or per_step_callback else SYNC_EVERY


def loader_workers(config: ObjectiveConfig, ctx: Distributed) -> int:
    """DataLoader workers per process: ``--workers``, or this process's share of its node's cores
    (:func:`default_workers` of torchrun's ``LOCAL_WORLD_SIZE``, not of the global process count)."""
    return default_workers(ctx.local_world_size) if config.workers is None else config.workers


def train_sampler(indices, ctx: Distributed, seed: int, whole_batches_of: int | None = None) -> EpochSampler:
    """The sampler of a run's training split: this process's share of every epoch, resumable mid-epoch.

    ``whole_batches_of`` cuts each process's share to whole batches of that size (contrastive
    pretraining drops the last incomplete batch). The one place a training sampler is made.
    """
    if whole_batches_of is None:
        return EpochSampler(indices, ctx.rank, ctx.world_size, shuffle=True, seed=seed)
    return FullBatchSampler(
        indices, whole_batches_of, rank=ctx.rank, world_size=ctx.world_size, shuffle=True, seed=seed
    )


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


def mark_batch_dynamic(tensor: torch.Tensor) -> torch.Tensor:
    """Mark dim 0 of a compiled model's input as dynamic: the smaller last batch of an epoch (and the last
    micro-batch under accumulation) reuses the one graph instead of compiling a second one. A size of 1
    stays specialised (torch's rule); then that one batch compiles its own graph."""
    torch._dynamo.maybe_mark_dynamic(tensor, 0)
    return tensor


class ObjectiveConfig(Protocol):
    """What the skeleton reads of a run's configuration: :class:`RunSettings` and the fields every objective's
    configuration has (``TrainConfig``, ``PretrainConfig``)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # a dataclass (``asdict`` writes it to config.json)
    device: str
    precision: str
    workers: int | None
    compile: bool
    max_steps: int | None
    checkpoint_every: int | None
    progress: bool
    deterministic: bool
    out: str
    epochs: int
    batch_size: int
    seed: int
    warmup_steps: int
    min_lr_factor: float

    def check(self) -> None: ...


class Objective:
    """One kind of training, as :func:`run` runs it: subclasses fill in the hooks below.

    Attributes:
        figures: names of the per-step figures :meth:`forward` returns; the first is the loss
            that is backpropagated.
        reduce_figures: average the per-step figures over processes before they are logged
            (else the main process logs its own).
        varying_batch: the last batch of an epoch may be smaller (marked dynamic under compile).
        accumulate: micro-batches per optimiser step (``can_accumulate``: whether the objective's loss allows it).
        out: the run directory.
        ctx, precision, micro_batch: set by the skeleton before :meth:`check` / :meth:`open_data`.
    """

    figures: tuple[str, ...] = ("loss",)
    reduce_figures: bool = False
    varying_batch: bool = True
    can_accumulate: bool = False
    ctx: Distributed
    precision: str
    micro_batch: int

    def __init__(self, config: ObjectiveConfig) -> None:
        self.config = config
        self.accumulate = 1
        self.out = Path(config.out)
        self.last_checkpoint = self.out / "checkpoints" / LAST_CHECKPOINT

    # --- set-up, in this order
    def resume_state(self, ctx: Distributed, given: set[str]) -> dict:
        """The run's last checkpoint, checked against the configuration (the trajectory is taken from it)."""
        raise NotImplementedError

    def check(self, ctx: Distributed, resuming: bool) -> None:
        """Check the configuration before any data is read (one-line :class:`TrainingError`)."""

    def open_data(self, ctx: Distributed, batch: int, workers: int, cleanup: ExitStack):
        """Open the data; return the training sampler (from :func:`train_sampler`) and its loader of ``batch``."""
        raise NotImplementedError

    def build(self, ctx: Distributed, state: dict | None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model on the device and its optimiser (weights from ``--init`` when ``state`` is None)."""
        raise NotImplementedError

    def restore(self, state: dict) -> None:
        """Load the model and the objective's own entries from a checkpoint."""

    def begin(self, position: dict) -> None:
        """Main process, once the position is known (after a resume): open the objective's own logs."""

    def run_record(self) -> tuple[dict, dict]:
        """``config.json``: entries replacing the configuration's, and entries after the run's figures."""
        return {}, {}

    # --- steps
    def inputs(self, batch, generator: torch.Generator) -> tuple:
        """A host batch as the step's inputs on the device (copied, preprocessed, mixed)."""
        raise NotImplementedError

    def forward(self, net: nn.Module, inputs: tuple, generator: torch.Generator):
        """``(loss, figures, samples)``: the loss to backpropagate, the detached figures (K,) on the device."""
        raise NotImplementedError

    def oom(self) -> TrainingError:
        """The one-line error of a batch that does not fit in memory: what to change."""
        accumulate = self.accumulate if self.can_accumulate else None
        return oom_error(self.micro_batch, self.config.batch_size, self.ctx.device, self.precision, accumulate)

    def nonfinite(self, figure: str, value: float, step: int, saved_step: int | None) -> str:
        """The message of a non-finite figure (the process is added when there are several)."""
        return f"{figure} became {value} at step {step}; lower --lr"

    def report(self, step: int, epoch: int, values: dict, lr: float, on_step: Callable | None) -> None:
        """Main process, at a synchronisation point, once per step in order: log it, call ``on_step``."""
        if on_step is not None:
            on_step(step, values[self.figures[0]])

    def postfix(self, values: dict, lr: float) -> dict:
        return {"loss": f"{values[self.figures[0]]:.4f}", "lr": f"{lr:.2e}"}

    # --- epochs
    def stopped(self) -> str | None:
        """Why the run is over before its next epoch (``"early_stopping"``), or None."""
        return None

    def end_of_epoch(self, net: nn.Module, model: nn.Module, epoch: int, common: dict, train: dict) -> dict:
        """The epoch's history record (with validation; a collective on every process)."""
        raise NotImplementedError

    def epoch_line(self, record: dict) -> str:
        raise NotImplementedError

    # --- checkpoints and the end
    def checkpoint(self, model: nn.Module, common: dict) -> dict:
        """Everything a checkpoint holds, the skeleton's ``common`` entries included."""
        raise NotImplementedError

    def save(self, snapshot: dict, record: dict | None, history: list[dict]) -> None:
        """Main process: write ``snapshot`` (``record``: the epoch just ended, or None mid-epoch)."""
        raise NotImplementedError

    def finish(self, ctx: Distributed, result: dict, history: list[dict]) -> dict:
        """After the last epoch: final files; the run's summary on the main process, ``{}`` elsewhere."""
        raise NotImplementedError


def run(objective: Objective, resume: bool, given: set[str] | None, on_step: Callable | None) -> dict:
    """Run (or resume) ``objective``'s training into ``objective.out``; returns its summary (main process).

    Raises:
        TrainingError / CheckpointError: the message says what to change; :class:`StoppedByPeer` when another
            process failed alone (it printed why).
    """
    objective.config.check()
    ctx = init_distributed(objective.config.device)
    together = False  # whether every process leaves at this point (then the process group can be shut down)
    try:
        with ExitStack() as cleanup:
            result = _Run(objective, ctx, on_step, cleanup).run(resume, given or set())
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


def _fresh_accumulators(figures: tuple[str, ...]) -> dict:
    return {**{f"{k}_sum": 0.0 for k in figures}, "samples": 0, "wait_s": 0.0, "preprocess_s": 0.0, "step_s": 0.0}


class _Run:
    """One process's run of an objective (the state the loop carries between steps and epochs)."""

    def __init__(self, objective: Objective, ctx: Distributed, on_step: Callable | None, cleanup: ExitStack):
        self.objective, self.ctx, self.on_step, self.cleanup = objective, ctx, on_step, cleanup
        objective.ctx = ctx
        self.config = objective.config
        self.position = {"epoch": 0, "batch_in_epoch": 0, "step": 0}
        self.accumulators = _fresh_accumulators(objective.figures)
        self.history: list[dict] = []
        self.window: list[tuple[int, int, torch.Tensor, int, float]] = []  # (step, epoch, figures, samples, lr)
        self.saved_step: int | None = None
        self.bar: tqdm[Any] | None = None

    # ------------------------------------------------------------------ set-up
    def run(self, resume: bool, given: set[str]) -> dict:
        objective, ctx, config = self.objective, self.ctx, self.config
        out = objective.out
        ctx.check_shared_directory(out)  # every process reads the checkpoints rank 0 writes
        state = None
        if resume:
            state = objective.resume_state(ctx, given)
        elif objective.last_checkpoint.exists():
            raise TrainingError(
                f"{out} already holds a run (checkpoints/last.pt); pass --resume or choose another --out",
                all_processes=True,
            )
        objective.check(ctx, state is not None)
        set_deterministic(config.deterministic)
        self.device = device = ctx.device
        self.precision = objective.precision = resolve_precision(config.precision, device)
        if config.batch_size % ctx.world_size:
            raise TrainingError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes")
        self.per_process = config.batch_size // ctx.world_size
        if self.per_process % objective.accumulate:
            raise TrainingError(
                f"--batch-size {config.batch_size} gives {self.per_process} samples per process, which "
                f"--accumulate {objective.accumulate} cannot split into equal micro-batches",
                all_processes=True,
            )
        self.micro = objective.micro_batch = self.per_process // objective.accumulate
        workers = loader_workers(config, ctx)
        torch.manual_seed(config.seed + ctx.rank)
        np.random.seed(config.seed + ctx.rank)  # noqa: NPY002 (the global generator is the one library code draws from; checkpoints keep its state)
        random.seed(config.seed + ctx.rank)

        self.sampler, self.loader = objective.open_data(ctx, self.micro, workers, self.cleanup)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.per_process)
        total_steps = self.steps_per_epoch * config.epochs
        warmup = effective_warmup(config.warmup_steps, total_steps)
        self.model, self.optimizer = model, optimizer = objective.build(ctx, state)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, total_steps, config.min_lr_factor)
        )
        # a CPU generator on every device: its state is the same kind on CPU and GPU, so --device may change on resume
        self.augment = torch.Generator().manual_seed(config.seed * 1000 + ctx.rank)
        if state is not None:
            objective.restore(state)
            optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.position = dict(state["position"])
            saved = state["accumulators"]  # a list per process; one dict in checkpoints before that
            self.accumulators = {**self.accumulators, **(saved[ctx.rank] if isinstance(saved, list) else saved)}
            self.history = list(state["history"])
            set_rng_state(state["rng"][ctx.rank], self.augment)
            self.saved_step = self.position["step"]
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            objective.begin(self.position)
            replaced, extra = objective.run_record()
            write_json_atomic(
                out / "config.json",
                {
                    **asdict(config),
                    **replaced,
                    "world_size": ctx.world_size,
                    "steps_per_epoch": self.steps_per_epoch,
                    "total_steps": total_steps,
                    "warmup_steps_used": warmup,
                    "precision_used": self.precision,
                    **extra,
                },
            )
        self.net = net = model
        self.ddp = None
        if ctx.enabled:
            self.ddp = net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            net = cast(nn.Module, torch.compile(net))  # compiling a Module gives an OptimizedModule (a Module)
        self.net = net
        return self.epochs()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        self.ctx.broadcast_buffers(self.model)  # one model on every process: rank 0's BatchNorm statistics
        rng = self.ctx.gather(rng_state(self.augment))
        common = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": dict(self.position),
            "accumulators": self.ctx.gather(dict(self.accumulators)),  # per process, as the RNG states
            "history": self.history,
            "rng": rng,
            "world_size": self.ctx.world_size,
        }
        return self.objective.checkpoint(self.model, common)

    def save(self, record: dict | None = None) -> None:
        snapshot = self.checkpoint_state()  # every process takes part in gathering RNG states
        if self.ctx.is_main:
            self.objective.save(snapshot, record, self.history)
        self.saved_step = self.position["step"]
        self.ctx.barrier()

    # ------------------------------------------------------------------ synchronisation
    def synchronise(self) -> None:
        """Read the window's figures back, add them up, report them, and stop every process if one of them
        saw a non-finite figure (the earliest step, and its process)."""
        objective, ctx = self.objective, self.ctx
        message, failed_step, values, shown = None, None, [], []
        if self.window:
            stacked = torch.stack([figures for _, _, figures, _, _ in self.window]).double()
            values = stacked.cpu().tolist()
            for (step, _, _, _, _), row in zip(self.window, values, strict=True):
                bad = next((i for i, v in enumerate(row) if not math.isfinite(v)), None)
                if bad is not None:
                    failed_step = step
                    message = objective.nonfinite(objective.figures[bad], row[bad], step, self.saved_step)
                    break
            shown = values
            if objective.reduce_figures and ctx.enabled:
                stacked = stacked.to(self.device if self.device.type == "cuda" else "cpu")
                dist.all_reduce(stacked)
                shown = (stacked / ctx.world_size).cpu().tolist()
        failure = ctx.first_failure(message, failed_step)
        if failure is not None:
            self.window.clear()
            raise TrainingError(failure, all_processes=True)
        for (step, epoch, _, n, lr), row, seen in zip(self.window, values, shown, strict=True):
            for name, value in zip(objective.figures, row, strict=True):
                self.accumulators[f"{name}_sum"] += value * n
            if ctx.is_main:
                objective.report(step, epoch, dict(zip(objective.figures, seen, strict=True)), lr, self.on_step)
        if self.window and self.bar is not None:
            self.bar.set_postfix(
                objective.postfix(dict(zip(objective.figures, shown[-1], strict=True)), self.window[-1][4])
            )
        self.window.clear()

    # ------------------------------------------------------------------ epochs and steps
    def epochs(self) -> dict:
        from tqdm import tqdm

        objective, ctx, config, position = self.objective, self.ctx, self.config, self.position
        sync_every = sync_interval(self.device, self.on_step is not None)
        stopped_by = objective.stopped()
        while position["epoch"] < config.epochs and stopped_by is None:
            epoch = position["epoch"]
            self.sampler.set_epoch(epoch)
            self.sampler.set_position(position["batch_in_epoch"] * self.per_process)
            self.net.train()
            self.bar = bar = tqdm(
                total=self.steps_per_epoch,
                initial=position["batch_in_epoch"],
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not (config.progress and ctx.is_main),
                leave=False,
            )
            stopped_by = self.steps(epoch, sync_every)
            t_sync = time.perf_counter()
            self.synchronise()  # the epoch's (or the run's) last figures, before any checkpoint or validation
            self.accumulators["step_s"] += time.perf_counter() - t_sync  # device work still queued belongs to steps
            bar.close()
            if stopped_by is not None and position["batch_in_epoch"] < self.steps_per_epoch:
                self.save()  # mid-epoch: the position lets --resume continue from the next batch
                break
            record = self.end_of_epoch(epoch)
            if config.progress and ctx.is_main:
                print(objective.epoch_line(record), file=sys.stderr, flush=True)
            position.update(epoch=epoch + 1, batch_in_epoch=0)
            self.accumulators = _fresh_accumulators(objective.figures)
            self.save(record)
            stopped_by = objective.stopped() or stopped_by
        finished = stopped_by in (None, "early_stopping")
        result = {
            "status": "finished" if finished else "stopped_at_max_steps",
            "stopped_by": stopped_by or "epochs",
            "steps": position["step"],
            "epochs_completed": position["epoch"],
        }
        summary = objective.finish(ctx, result, self.history)
        ctx.barrier()
        return summary if ctx.is_main else {}

    def steps(self, epoch: int, sync_every: int) -> str | None:
        """One epoch's optimiser steps from the sampler's position; why the run stops, or None."""
        objective, config, position, acc = self.objective, self.config, self.position, self.accumulators
        optimizer, accumulate, bar = self.optimizer, objective.accumulate, self.bar
        assert bar is not None, "epochs() opened this epoch's progress bar"
        remaining = len(self.sampler)  # this process's samples left in the epoch
        micro_left = math.ceil(remaining / self.micro)
        micro_index = 0  # micro-batches done in this epoch (from the position)
        step_samples = min(self.per_process, remaining)
        step_figures = None
        batches = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                inputs = objective.inputs(batch, self.augment)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise objective.oom() from None
                raise
            t1b = time.perf_counter()
            first = micro_index % accumulate == 0
            last = (micro_index + 1) % accumulate == 0 or micro_index + 1 == micro_left
            try:
                if first:
                    optimizer.zero_grad(set_to_none=True)
                # no gradient all-reduce before the last micro-batch
                with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                    loss, figures, n = objective.forward(self.net, inputs, self.augment)
                    if accumulate == 1:
                        loss.backward()
                    else:  # each micro-batch's share of this step's samples: the mean over the whole step
                        (loss * (n / step_samples)).backward()
                        figures = figures * (n / step_samples)
                if last:
                    optimizer.step()
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise objective.oom() from None
                raise
            micro_index += 1
            step_figures = figures if step_figures is None else step_figures + figures
            acc["samples"] += n
            acc["wait_s"] += t1 - t0
            acc["preprocess_s"] += t1b - t1
            if not last:
                acc["step_s"] += time.perf_counter() - t0
                continue
            self.scheduler.step()
            step = position["step"] + 1
            self.window.append((step, epoch + 1, step_figures, step_samples, float(self.scheduler.get_last_lr()[0])))
            step_figures = None
            remaining -= step_samples
            step_samples = min(self.per_process, remaining)
            if step % sync_every == 0:
                self.synchronise()
            acc["step_s"] += time.perf_counter() - t0
            position["batch_in_epoch"] += 1
            position["step"] = step
            bar.update(1)
            if config.max_steps is not None and step >= config.max_steps:
                return "max_steps"
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                self.synchronise()
                self.save()
        return None

    def end_of_epoch(self, epoch: int) -> dict:
        """The epoch's record: the skeleton's figures (summed over processes) and the objective's validation."""
        ctx = self.ctx
        parts = ctx.gather(self.accumulators)
        samples = sum(p["samples"] for p in parts)
        step_s = sum(p["step_s"] for p in parts) / ctx.world_size
        wait_s = sum(p["wait_s"] for p in parts) / ctx.world_size
        preprocess_s = sum(p["preprocess_s"] for p in parts) / ctx.world_size
        train = {k: sum(p[f"{k}_sum"] for p in parts) / max(1, samples) for k in self.objective.figures}
        common = {
            "epoch": epoch + 1,
            "step": self.position["step"],
            "lr": self.scheduler.get_last_lr()[0],
            "train_samples": samples,
            "train_samples_per_s": samples / step_s if step_s else None,
            "data_wait_fraction": wait_s / step_s if step_s else None,
            "preprocess_fraction": preprocess_s / step_s if step_s else None,
        }
        ctx.broadcast_buffers(
            self.model
        )  # validate rank 0's model on every process (DDP syncs buffers at the next forward)
        record = self.objective.end_of_epoch(self.net, self.model, epoch, common, train)
        self.history.append(record)
        return record
