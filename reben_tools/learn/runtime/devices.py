"""The training device and its numerics: device and precision choice, autocast, out-of-memory reporting.

Owns: resolve_device, resolve_precision, autocast, host_to_device, is_out_of_memory, oom_error, set_deterministic.
Does not own: process groups and sampling (distributed.py), moving batches to the device (loaders.py).
May import: torch; reben_tools.learn.runtime.config.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from reben_tools.learn.runtime.config import TrainingError


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return dev


BF16_MIN_CAPABILITY = (8, 0)
"""GPUs below compute capability 8.0 (V100, T4) only emulate bf16: slower than fp32 there."""


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on CUDA GPUs of compute capability 8.0 or higher (A100, H100 ...), fp32 elsewhere."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY else "fp32"
    if precision not in ("bf16", "fp32"):
        raise TrainingError(f"unknown precision {precision!r}; use bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast | nullcontext:
    """bf16 autocast on ``device`` for ``precision="bf16"``; a no-op context for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (drawn on the host) on ``device`` without the host waiting for the device.

    From pageable memory a host-to-GPU copy is synchronous (the host waits for the stream); from pinned
    memory with ``non_blocking=True`` it is queued like a kernel. So a small tensor drawn on the CPU
    (flips, CutMix boxes: drawn there so that a resumed run replays them) is pinned first. On a CPU, or
    for a tensor already on a device, a plain ``.to``.
    """
    if device.type == "cpu" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _oom_classes() -> tuple[type, ...]:
    # torch.OutOfMemoryError exists from torch 2.5; torch.cuda.OutOfMemoryError from 1.13 (same class later)
    found = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None), MemoryError}
    return tuple(c for c in found if isinstance(c, type))


_OOM_CLASSES = _oom_classes()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (CUDA) or the host (CPU allocator) ran out of memory."""
    if isinstance(exc, _OOM_CLASSES):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "Cannot allocate memory" in text
    )


def oom_error(
    per_process_batch: int, global_batch: int, device: torch.device, precision: str, accumulate: int | None = None
) -> TrainingError:
    """The one-line :class:`TrainingError` for a batch that does not fit: what to try.

    ``accumulate`` (the run's ``--accumulate``, or None where gradient accumulation does not apply):
    when the batch halves evenly, the hint is twice the accumulation, which keeps the recipe's global
    batch; otherwise a smaller ``--batch-size``.
    """
    if accumulate is not None and per_process_batch % 2 == 0:
        hint = (
            f"add --accumulate {2 * accumulate} (micro-batches of {per_process_batch // 2}; the global batch "
            f"stays {global_batch}), or lower --batch-size"
        )
    else:
        hint = f"lower --batch-size (now {global_batch}), e.g. --batch-size {max(1, global_batch // 2)}"
    if precision != "bf16" and device.type == "cuda":
        hint += ", or use --precision bf16"
    return TrainingError(f"a batch of {per_process_batch} samples does not fit in memory on {device}: {hint}")


def set_deterministic(enabled: bool) -> None:
    """Use only deterministic algorithms (``--deterministic``), or leave torch's defaults.

    On CPUs the loop is bit-exact on resume anyway. On GPUs cuDNN picks algorithms by timing
    and some kernels accumulate with atomics, so a resumed run drifts in the last bits unless
    this is on: it sets ``torch.use_deterministic_algorithms(True)``, turns off cuDNN
    benchmarking and sets ``CUBLAS_WORKSPACE_CONFIG`` (needed by cuBLAS for deterministic
    matrix products; it must be set before the first cuBLAS call, so it is set here, at start).
    """
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
