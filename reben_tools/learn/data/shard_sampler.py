"""Shard-local distributed sampling: each node reads only the shards assigned to it.

Under ``torchrun`` with N nodes (``WORLD_SIZE / LOCAL_WORLD_SIZE``), the global sampler
(:class:`~reben_tools.learn.runtime.distributed.EpochSampler`) deals every process samples
from every shard, so every node needs the whole archive. With ``--sampler shard-local``:

- **Assignment, balanced by entry count.** The archive's shards are dealt to nodes by
  decreasing number of training samples, each to the node with the fewest so far (ties: the
  lower node); shards without training samples are then dealt the same way by their
  validation and test samples. Node totals differ by at most one shard's samples.
- **Fixed for the whole run** (the documented choice): a node's cache then holds its shards
  only and every epoch after the first reads from local disk; reassigning shards each epoch
  would make every node download most of the archive within a few epochs. The gradient of
  every step still averages all nodes' batches, so each global batch draws from every
  node's shards; what a fixed assignment changes is which samples one *process* sees.
- **Shuffled within and across shards, per epoch, with a seed**: each epoch is a
  permutation of all the training samples of the node's shards, seeded by
  ``(seed, epoch, node)``; the node's processes take every ``LOCAL_WORLD_SIZE``-th sample
  of it. For the training split every process is padded (wrapping around its own share) to
  the longest share of any process, so all processes take the same number of steps.
- **Exact mid-epoch resume**: the order is a function of (seed, epoch, node, local rank),
  and :meth:`ShardLocalSampler.set_position` skips what was done, as the global sampler does
  (the run must resume on the same nodes x processes layout).
- **Validation and test** take every sample of the node's shards, split over the node's
  processes without padding: each sample is evaluated exactly once across all processes.

:func:`make_samplers` also fetches, before the first epoch, the shards this node will read
into the cache of an archive read from a store (``format.shard_cache``): all shards under
the global sampler, the node's shards under the shard-local one.

Owns: SAMPLERS, node_layout, assign_shards, ShardLocalSampler, make_samplers, eval_sampler,
label_drift.
Does not own: the global sampler and the process group (runtime.distributed), the dataset
(dataset.py), the cache (reben_tools.format.shard_cache).
May import: numpy, torch; reben_tools.learn.runtime.config, .distributed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler

SAMPLERS = ("global", "shard-local")


def node_layout(ctx: Distributed) -> tuple[int, int, int, int]:
    """``(node, nodes, local_rank, local_world_size)`` of this process (torchrun numbers ranks node by node).

    Raises:
        TrainingError: the world size is not a multiple of the processes per node.
    """
    local_world = max(1, ctx.local_world_size)
    if ctx.world_size % local_world:
        raise TrainingError(
            f"--sampler shard-local needs the same number of processes on every node "
            f"({ctx.world_size} processes, {local_world} on this node)",
            all_processes=True,
        )
    return ctx.rank // local_world, ctx.world_size // local_world, ctx.rank % local_world, local_world


def _deal(weights: dict[int, int], loads: list[int], out: list[list[int]]) -> None:
    for shard in sorted(weights, key=lambda s: (-weights[s], s)):
        node = min(range(len(loads)), key=lambda n: (loads[n], n))
        out[node].append(shard)
        loads[node] += weights[shard]


def assign_shards(train_counts: dict[int, int], other_counts: dict[int, int], nodes: int) -> list[list[int]]:
    """Shards (indices) per node: balanced by training samples, then shards without any by their other samples.

    Deterministic: the same counts give the same assignment on every process.
    """
    out: list[list[int]] = [[] for _ in range(nodes)]
    _deal({s: n for s, n in train_counts.items() if n > 0}, [0] * nodes, out)
    rest = {s: n for s, n in other_counts.items() if train_counts.get(s, 0) == 0 and n > 0}
    loads = [sum(other_counts.get(s, 0) for s in shards) for shards in out]
    _deal(rest, loads, out)
    return [sorted(shards) for shards in out]


class ShardLocalSampler(Sampler[int]):
    """Dataset indices of one process's share of an epoch, read from its node's shards only (see the module docstring).

    Args:
        indices: the split's dataset indices (all nodes).
        sample_shards: (N,) shard index of every dataset index (``ReBENDataset.sample_shards``).
        assignment: shards per node (:func:`assign_shards`).
        node, local_rank, local_world_size: this process's place.
        shuffle: permute each epoch (training) or keep index order (evaluation).
        seed: the run's seed.
        pad: pad every process to the longest share of any process (training).
    """

    def __init__(
        self,
        indices: Sequence[int] | np.ndarray,
        sample_shards: np.ndarray,
        assignment: list[list[int]],
        node: int,
        local_rank: int = 0,
        local_world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
    ) -> None:
        chosen = np.asarray(indices, dtype=np.int64)
        shards_of = np.asarray(sample_shards)[chosen]
        self.assignment = assignment
        self.node, self.local_rank, self.local_world_size = node, local_rank, local_world_size
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.indices = [int(i) for i in chosen[np.isin(shards_of, assignment[node])]]
        sizes = [int(np.isin(shards_of, shards).sum()) for shards in assignment]
        self.longest = max(math.ceil(n / local_world_size) for n in sizes) if sizes else 0
        self.epoch = 0
        self.start = 0

    @property
    def shards(self) -> list[int]:
        """The shards this node reads."""
        return list(self.assignment[self.node])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_position(self, samples_done: int) -> None:
        self.start = samples_done

    def share(self) -> list[int]:
        """This process's dataset indices for the current epoch (before skipping)."""
        size = len(self.indices)
        if self.shuffle:
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 65_537 + self.node) % 2**63)
            order = torch.randperm(size, generator=g).tolist()
        else:
            order = list(range(size))
        mine = [self.indices[i] for i in order[self.local_rank :: self.local_world_size]]
        if self.pad and mine and len(mine) < self.longest:
            mine = (mine * math.ceil(self.longest / len(mine)))[: self.longest]
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self.share()[self.start :])

    def __len__(self) -> int:
        if self.pad:
            return max(0, self.longest - self.start) if self.indices else 0
        return max(0, len(range(self.local_rank, len(self.indices), self.local_world_size)) - self.start)


DistSampler = EpochSampler | ShardLocalSampler
"""What :func:`make_samplers` and :func:`eval_sampler` return: both have set_epoch, set_position and share."""


def _counts(sample_shards: np.ndarray, indices: np.ndarray) -> dict[int, int]:
    shards, counts = np.unique(np.asarray(sample_shards)[np.asarray(indices, dtype=np.int64)], return_counts=True)
    return {int(s): int(c) for s, c in zip(shards, counts, strict=True)}


def shard_plan(dataset, train_indices: np.ndarray, nodes: int) -> list[list[int]]:
    """The run's shard assignment (:func:`assign_shards`): training samples per shard first, then every
    other sample of the dataset (validation, test), so training and every evaluation agree."""
    shards = dataset.sample_shards
    rest = np.setdiff1d(np.arange(len(shards)), np.asarray(train_indices, dtype=np.int64))
    return assign_shards(_counts(shards, train_indices), _counts(shards, rest), nodes)


def make_samplers(
    kind: str,
    dataset,
    train_indices: np.ndarray,
    eval_indices: dict[str, np.ndarray],
    ctx: Distributed,
    seed: int,
    progress: bool = False,
) -> tuple[DistSampler, dict[str, DistSampler]]:
    """The training sampler and one evaluation sampler per split of ``eval_indices``, of ``kind``;
    fetches the shards this node reads when the archive is read from a store.

    Raises:
        TrainingError: unknown ``kind``, an uneven layout, or the node's shards do not fit in the
            bounded cache (the message says how much they need).
    """
    if kind not in SAMPLERS:
        raise TrainingError(f"unknown --sampler {kind!r}; expected one of {list(SAMPLERS)}", all_processes=True)
    train: DistSampler
    evaluation: dict[str, DistSampler]
    if kind == "global":
        train = EpochSampler(train_indices, ctx.rank, ctx.world_size, shuffle=True, seed=seed)
        evaluation = {
            split: EpochSampler(idx, ctx.rank, ctx.world_size, shuffle=False, pad=False)
            for split, idx in eval_indices.items()
        }
        needed = np.unique(dataset.sample_shards[np.concatenate([train_indices, *eval_indices.values()])])
    else:
        node, nodes, local_rank, local_world = node_layout(ctx)
        assignment = shard_plan(dataset, train_indices, nodes)
        train = ShardLocalSampler(
            train_indices, dataset.sample_shards, assignment, node, local_rank, local_world, shuffle=True, seed=seed
        )
        evaluation = {
            split: ShardLocalSampler(
                idx, dataset.sample_shards, assignment, node, local_rank, local_world, shuffle=False, pad=False
            )
            for split, idx in eval_indices.items()
        }
        if len(train) == 0:
            raise TrainingError(
                f"--sampler shard-local: node {node} of {nodes} got no training samples "
                f"({len(dataset.archive.shard_names)} shard(s) for {nodes} node(s)); use fewer nodes or the global sampler",
                all_processes=True,
            )
        needed = np.asarray(assignment[node], dtype=np.int64)
    _prefetch(dataset, needed, progress)
    if getattr(dataset.archive, "cache", None) is not None and len(train_indices):
        from reben_tools.learn.data.loaders import check_sample

        # open_dataset left this check to now: one sample of this node's own (fetched) shards
        first = next(iter(train.share()), int(train_indices[0]))
        check_sample(dataset, dataset.archive.source, tuple(dataset.bands), first)
    return train, evaluation


def eval_sampler(kind: str, dataset, indices: np.ndarray, ctx: Distributed, train_indices: np.ndarray) -> DistSampler:
    """One evaluation sampler (e.g. the test split after training) under the run's ``kind``: every
    sample exactly once across processes; shard-local: from this node's shards (same assignment)."""
    if kind != "shard-local":
        return EpochSampler(indices, ctx.rank, ctx.world_size, shuffle=False, pad=False)
    node, nodes, local_rank, local_world = node_layout(ctx)
    assignment = shard_plan(dataset, train_indices, nodes)
    return ShardLocalSampler(
        indices, dataset.sample_shards, assignment, node, local_rank, local_world, shuffle=False, pad=False
    )


def _prefetch(dataset, shards: np.ndarray, progress: bool) -> None:
    from reben_tools.format.layout import ArchiveError

    try:
        dataset.archive.prefetch(sorted(int(s) for s in shards), progress=progress)
    except ArchiveError as exc:
        raise TrainingError(str(exc)) from None


def label_drift(labels: np.ndarray, share: Sequence[int], reference: Sequence[int]) -> float:
    """How far the label distribution of ``share`` is from ``reference``'s: the largest absolute difference,
    over the classes, between the share of samples holding the class (0 = the same distribution)."""
    a = np.asarray(labels)[np.asarray(share, dtype=np.int64)].mean(axis=0)
    b = np.asarray(labels)[np.asarray(reference, dtype=np.int64)].mean(axis=0)
    return float(np.abs(a - b).max())


__all__ = [
    "SAMPLERS",
    "ShardLocalSampler",
    "assign_shards",
    "eval_sampler",
    "label_drift",
    "make_samplers",
    "node_layout",
    "shard_plan",
]
