"""Processes of a (possibly one-process) run under ``torchrun``, and each one's share of an epoch.

Under ``torchrun`` every process trains one replica (DistributedDataParallel; NCCL on GPUs,
gloo on CPUs) on its share of each epoch; a run's ``batch_size`` is the global batch.

Owns: is_peer_failure, earliest_failure, Distributed (rank, world size, collectives: gather, broadcast, mean, agreeing on a stop, broadcasting
module buffers, checking a shared directory), init_distributed, convert_batchnorm, EpochSampler.
Does not own: device choice (devices.py), DataLoaders (loaders.py), the DDP wrapping of a model (loop.py).
May import: numpy, torch; reben_tools.learn.runtime.config, .devices.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.runtime.devices import resolve_device

T = TypeVar("T")

# --------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_world_size: int = 1
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE): they share the node's CPU cores."""

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

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box: list[T] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def first_failure(self, message: str | None, step: int | None = None) -> str | None:
        """Agree on stopping: every process passes its failure (or ``None``); all get the same answer.

        Returns ``None`` when no process failed, else the message of the failure at the earliest
        ``step`` (the lowest rank among those that failed at that step; a failure without a step
        counts as the latest), followed by its process when there are several, on every process, so
        that every process stops at the same point and only one message needs printing. A
        collective: every process must call it at the same point.
        """
        if not self.enabled:
            return message
        flag = torch.tensor(
            [0 if message is None else 1],
            dtype=torch.int32,
            device=self.device if self.device.type == "cuda" else "cpu",
        )
        dist.all_reduce(flag)
        if int(flag.item()) == 0:
            return None
        reports = self.gather(None if message is None else (step, message))
        rank = earliest_failure(reports)
        return f"{reports[rank][1]} (process {rank} of {self.world_size})"

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics ...) into every process's ``module``.

        DDP broadcasts buffers only at the start of the next training forward, so after an
        epoch each process holds the running statistics of its own last batches; validation
        and checkpoints must see one model.
        """
        if not self.enabled:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def check_shared_directory(self, directory: Path) -> None:
        """Every process must see the files rank 0 writes under ``directory`` (checkpoints are
        written by rank 0 and read by all on resume): a multi-node run needs a shared run directory.

        Rank 0 writes a marker into ``directory`` (or its nearest existing parent) and every
        process looks for it. Raises :class:`TrainingError` on every process when one cannot.
        """
        if not self.enabled:
            return
        place = Path(directory)
        while not place.exists() and place != place.parent:
            place = place.parent
        place = Path(self.broadcast(str(place)))  # rank 0's view of where to write
        marker = place / f".reben-shared-check-{self.broadcast(uuid.uuid4().hex)}"
        if self.is_main:
            marker.write_text("written by rank 0\n")
        self.barrier()
        seen = self.gather(marker.is_file())
        self.barrier()
        if self.is_main:
            marker.unlink(missing_ok=True)
        if not all(seen):
            missing = [r for r, ok in enumerate(seen) if not ok]
            raise TrainingError(
                f"{directory}: process(es) {missing} cannot see files that rank 0 writes there; a run over "
                "several nodes needs --out on a file system every node shares",
                all_processes=True,
            )


def earliest_failure(reports: list[tuple[int | None, str] | None]) -> int:
    """The rank whose failure comes first: earliest step, then lowest rank (``reports[rank]`` is
    ``(step, message)`` or ``None`` for a process that did not fail; a step of ``None`` counts as last).

    On a GPU the step figures are read back every few steps, so a NaN on one process at step 3 has
    spread through the all-reduced gradients to every process by step 4: the lowest failing rank
    alone could name the wrong process and step.
    """
    failed = [(math.inf if r[0] is None else r[0], rank) for rank, r in enumerate(reports) if r is not None]
    return min(failed)[1]


def init_distributed(device: str) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (WORLD_SIZE > 1).

    CUDA runs use NCCL and one GPU per local rank; CPU runs use gloo and split the CPU threads.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Distributed(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if dev.type == "cuda":
        # a launcher may show each process only its own GPU (CUDA_VISIBLE_DEVICES): then index 0
        index = local % torch.cuda.device_count()
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cpu":  # the cores this process may run on (a launcher or cgroup may pin it), shared on the node
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world))
    return Distributed(rank=rank, world_size=world, local_rank=local, device=dev, local_world_size=local_world)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process went away (gloo or NCCL)."""
    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if isinstance(k, type))
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in (
            "Connection closed by peer",
            "Connection reset by peer",
            "NCCL error",
            "ncclRemoteError",
            "Broken pipe",
            "gloo/transport",
        )
    )


def convert_batchnorm(model: nn.Module, ctx: Distributed, enabled: bool = True) -> nn.Module:
    """BatchNorm -> SyncBatchNorm when several processes train on GPUs (``enabled``, the default).

    Each GPU would otherwise normalise over its share of the global batch (512 / processes),
    whereas reBEN's recipe normalises over 512: with SyncBatchNorm the batch statistics are
    those of the global batch, whatever the process count. SyncBatchNorm runs only on GPUs,
    so gloo (CPU) runs keep per-process BatchNorm.
    """
    if enabled and ctx.enabled and ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


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

    def __init__(
        self, indices, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0, pad: bool = True
    ) -> None:
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

    def real_samples(self) -> int:
        """How many entries of this process's full share are not padding: the first ones (the wrap-around
        padding of an epoch's order lands at the end of the shares it reaches)."""
        return len(range(self.rank, len(self.indices), self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.share()[self.start :])

    def __len__(self) -> int:
        size = len(self.indices)
        n = math.ceil(size / self.world_size) if self.pad else len(range(self.rank, size, self.world_size))
        return max(0, n - self.start)
