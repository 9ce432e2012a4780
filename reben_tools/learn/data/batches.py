"""Batches of reBEN samples: the batch protocol of ``ReBENDataset.__getitems__`` and its memory.

Owns: SampleBatch (B samples backed by one contiguous batch), collate (the DataLoader
``collate_fn``), empty_batch (batch memory: shared memory in DataLoader workers, this process's
pool of reused buffers in the main process).
Does not own: reading samples (dataset.py), the buffer pool's reuse rule (buffers.py).
May import: numpy, torch; reben_tools.learn.data.buffers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from numpy.typing import DTypeLike
from torch.utils.data import default_collate

from reben_tools.learn.data.buffers import BufferPool


class SampleBatch(Sequence):
    """What :meth:`ReBENDataset.__getitems__` returns: B samples backed by one contiguous batch.

    It behaves as the list of B sample dicts PyTorch's ``__getitems__`` protocol expects
    (so ``default_collate`` still works), but :func:`collate` returns :attr:`collated`
    -- the batch already stacked -- without copying.

    Attributes:
        collated: ``{"image": float32 (B, C, 120, 120), "label": float32 (B, 19),
            "patch_id": list[str], "mask"?: (B, 120, 120)}`` (native mode: the native
            group tensors ``(B, k, size, size)`` instead of ``"image"``).
    """

    def __init__(self, collated: dict, size: int) -> None:
        self.collated = collated
        self._size = size

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._size))]
        if not -self._size <= index < self._size:
            raise IndexError(f"sample {index} out of range for a batch of {self._size}")
        return {key: value[index] for key, value in self.collated.items()}


def collate(samples: SampleBatch | Sequence[Mapping]) -> dict:
    """DataLoader ``collate_fn`` for :class:`ReBENDataset`.

    A :class:`SampleBatch` (what ``__getitems__`` returns) is handed over as is; a list of
    sample dicts (``dataset[i]`` results) is stacked with ``default_collate``. Either way
    the result is ``{"image" or native groups: tensors with a leading batch axis,
    "label": (B, 19), "patch_id": list[str], "mask"?: (B, 120, 120)}``.
    """
    if isinstance(samples, SampleBatch):
        return samples.collated
    return default_collate(list(samples))


_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.uint16): torch.uint16,
    np.dtype(np.uint8): torch.uint8,
}


_POOL = BufferPool()
"""This process's reused batch buffers (main process only; see ``learn.buffers``)."""


def empty_batch(shape: tuple[int, ...], dtype: DTypeLike) -> tuple[np.ndarray, torch.Tensor]:
    """An uninitialised batch array and the tensor sharing its memory.

    In a DataLoader worker the memory is shared memory from the start (as
    ``default_collate`` does), so handing the batch to the main process copies nothing.
    In the main process it comes from a small pool of reused buffers (:class:`BufferPool`):
    a buffer is reused only once no tensor or view of an earlier batch holds it, so no
    page faults for fresh memory on every batch.
    """
    dtype = np.dtype(dtype)
    if torch.utils.data.get_worker_info() is not None:
        numel = int(np.prod(shape))
        template = torch.empty(0, dtype=_TORCH_DTYPES[dtype])
        tensor = template.new(template._typed_storage()._new_shared(numel)).resize_(shape)
        return tensor.numpy(), tensor
    return _POOL.take(shape, dtype)
