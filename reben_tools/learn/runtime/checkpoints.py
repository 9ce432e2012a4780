"""Checkpoint files of a run: atomic writes, safe loading, matching checks, RNG state.

Checkpoints are written to a temporary file in the same directory, flushed and renamed over
the old one, so ``last.pt`` is always a complete checkpoint. A checkpoint stores the model
name, bands, fusion and class order, and loading one for another model or band set fails
with a message naming both.

Owns: CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint, load_checkpoint, checked_checkpoint,
check_checkpoint_matches, rng_state, set_rng_state.
Does not own: rebuilding a model from a checkpoint (models/restore.py), what goes into a training checkpoint
and when (training/loop.py), the run directory layout (rundir.py).
May import: numpy, torch; reben_tools.format; reben_tools.learn.runtime.config, .weights (CheckpointError is
re-exported from there).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from reben_tools.format.atomic import replaced_atomically
from reben_tools.format.bands import resolve_bands
from reben_tools.learn.runtime.weights import CheckpointError as CheckpointError  # re-exported
from reben_tools.learn.runtime.weights import read_state_dict

CHECKPOINT_FORMAT = "reben-tools-checkpoint"
CHECKPOINT_VERSION = 1


def rng_state(aug: torch.Generator | None) -> dict:
    """This process's torch, numpy, Python (and CUDA) RNG states plus the augmentation generator's, as tensors."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global generator is the state a resume restores)
    assert isinstance(np_state, tuple), "get_state() is legacy (a tuple) by default"
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": _python_state_to_tensors(random.getstate()),
        "augment": aug.get_state() if aug is not None else None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _python_state_to_tensors(state: tuple) -> list:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_state(state: dict, aug: torch.Generator | None) -> None:
    """Restore the RNG states :func:`rng_state` captured (``aug`` too, when both have one)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(  # noqa: NPY002 (the legacy global generator is the state a resume restores)
        (state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    if aug is not None and state.get("augment") is not None:
        saved = state["augment"]
        if saved.numel() != aug.get_state().numel():  # e.g. a CUDA (Philox) state into a CPU generator
            raise CheckpointError(
                f"the checkpoint's flip-generator state ({saved.numel()} bytes) was saved on another kind of "
                f"generator ({aug.get_state().numel()} bytes here): resume it with the --device it was trained on"
            )
        aug.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, flush + fsync, rename.

    A crash at any point leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loading: tensors and plain data only).

    Raises:
        CheckpointError: missing, unreadable or not a reben-tools checkpoint (one line naming the file and,
            for another kind of file, what it is; see :func:`read_state_dict`).
    """
    return checked_checkpoint(read_state_dict(path, "reben-tools checkpoint"), path)


def checked_checkpoint(state: dict, path: str | os.PathLike) -> dict:
    """``state`` (read from ``path``) when it is a reben-tools checkpoint of a supported version.

    Raises:
        CheckpointError: no format marker, or another version.
    """
    if state.get("format") != CHECKPOINT_FORMAT:
        keys = ", ".join(map(str, list(state)[:4])) + (", ..." if len(state) > 4 else "")
        raise CheckpointError(
            f"{path}: not a reben-tools checkpoint (a dict without its format marker; keys: {keys or 'none'})"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not supported")
    return state


def check_checkpoint_matches(
    state: dict,
    path: Path | str,
    model: str | None = None,
    bands=None,
    fusion: str | None = None,
    class_order: str | None = None,
) -> None:
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
            f"{path}: checkpoint was trained with "
            + "; ".join(problems)
            + ". Use a checkpoint of that model and band set, or drop/adjust the flags to match it."
        )
