"""Reused batch buffers: a small pool of arrays handed out again once nobody holds them.

A fresh (256, 14, 120, 120) float32 batch is 206 MB; the kernel hands every fresh page over
with a page fault, which costs about as much as writing the batch. A training loop holds at
most a batch or two at a time, so a few buffers, reused, serve every batch.

A buffer is free when no tensor, storage or numpy view made from it is alive: the pool
keeps the only other reference, and ``sys.getrefcount`` tells. A caller that keeps a batch
(or a view into it) simply keeps its buffer out of the pool; nothing it holds is ever
overwritten. Only for the main process: a DataLoader worker's batches go to another
process, which the worker cannot see release them (workers use shared memory instead).

Owns: :class:`BufferPool`.
Does not own: what is written into the buffers (``learn.dataset``, ``learn.transforms``).
May import: numpy, torch and the standard library.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from numpy.typing import DTypeLike


def _free_refcount() -> int:
    """``sys.getrefcount`` of a pooled array nobody else holds, seen from :meth:`BufferPool.take`'s
    loop (the list, the loop variable, the call's argument; measured, not assumed, since
    interpreters count borrowed references differently)."""
    for array in [np.empty(1)]:
        return sys.getrefcount(array)
    raise AssertionError("unreachable")


_FREE = _free_refcount()


class BufferPool:
    """Up to ``per_shape`` reusable arrays per (shape, dtype), handed out as (array, tensor).

    Args:
        per_shape: buffers kept per (shape, dtype); when all are held, a fresh untracked
            array is returned.
    """

    def __init__(self, per_shape: int = 3) -> None:
        self.per_shape = per_shape
        self._pid = os.getpid()
        self._buffers: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...], dtype: DTypeLike) -> tuple[np.ndarray, torch.Tensor]:
        """An uninitialised array of ``shape``/``dtype`` nobody else holds, and a tensor sharing it."""
        if os.getpid() != self._pid:  # inherited through fork: the parent's buffers are not ours
            self._buffers, self._pid = {}, os.getpid()
        dtype = np.dtype(dtype)
        key = (tuple(int(s) for s in shape), dtype.str)
        pool = self._buffers.setdefault(key, [])
        for array in pool:
            # any tensor, storage or numpy view made from the array adds a reference
            if sys.getrefcount(array) == _FREE:
                return array, torch.from_numpy(array)
        array = np.empty(key[0], dtype)
        if len(pool) < self.per_shape:
            pool.append(array)
        return array, torch.from_numpy(array)

    def clear(self) -> None:
        """Drop every buffer (held batches stay valid)."""
        self._buffers = {}

    def __getstate__(self) -> dict:
        return {"per_shape": self.per_shape}

    def __setstate__(self, state: dict) -> None:
        # a fresh, empty pool in the receiving process (buffers are never pickled)
        self.per_shape = state["per_shape"]
        self._pid = os.getpid()
        self._buffers = {}


__all__ = ["BufferPool"]
