"""Reading a weights file: the one reader behind checkpoints, ``--init`` weights and encoder specs.

Every ``.pt``/``.pth`` file the learning side reads goes through :func:`read_state_dict`: a
``reben train`` or ``reben pretrain`` checkpoint, published CROMA or DOFA weights. It loads
with ``torch.load(weights_only=True)`` (tensors and plain data only, never arbitrary code) and
turns every way a file can fail into one :class:`CheckpointError` whose one-line message names
the file and says what it is instead:

- missing: ``PATH: no such file``; a directory: ``PATH: is a directory, not a KIND``;
- unreadable: ``PATH: cannot be read (Permission denied)``;
- another kind of file, recognised by its first bytes before torch sees it:
  ``PATH: not a KIND: it is a Parquet file`` (PNG, JSON/text, NumPy, HDF5, safetensors, a zip
  without torch's ``data.pkl``, compressed files ...);
- a torch file cut short or damaged: ``PATH: not a readable checkpoint: the torch file is
  damaged or cut short (...)``;
- a pickle of Python objects (a whole ``nn.Module``, NumPy arrays ...): ``PATH: not a readable
  checkpoint: it holds Python objects beyond tensors and plain data (GLOBAL numpy...)`` in
  place of torch's advice to load with ``weights_only=False``;
- not a dict: ``PATH: not a KIND: it holds a list, not a dict``.

Owns: CheckpointError, read_state_dict, check_weights_file, describe_file.
Does not own: what a checkpoint must hold (checkpoints.load_checkpoint, croma_layout, dofa).
May import: torch; reben_tools.learn.runtime.config.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

from reben_tools.learn.runtime.config import TrainingError


class CheckpointError(TrainingError):
    """A weights or checkpoint file is missing, unreadable, not a weights file, or does not fit (one line)."""


_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PAR1", "a Parquet file"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy array file (.npy)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
    (b"ARROW1", "an Arrow IPC file"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_ZIP = b"PK\x03\x04"
_PICKLE = 0x80  # pickle protocol 2+ (torch's legacy format too)


def describe_file(path: str | os.PathLike, head: bytes | None = None) -> str | None:
    """What ``path`` looks like when it is not a torch file (``"a Parquet file"`` ...); ``None`` when
    it may be one (a torch zip archive, a pickle) and only loading it can tell."""
    if head is None:
        with open(path, "rb") as fh:
            head = fh.read(64)
    if not head:
        return "an empty file"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head.startswith(_ZIP):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None  # a zip cut short: torch names the damage
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return None
        if names and all(n.endswith(".npy") for n in names):
            return "a NumPy archive (.npz)"
        return "a zip archive without torch's data.pkl"
    if head[0] == _PICKLE:
        return None
    if len(head) >= 10:
        (header,) = struct.unpack("<Q", head[:8])
        if 2 <= header < 100_000_000 and head[8:10] == b'{"':
            return "a safetensors file (read it with safetensors.torch.load_file)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "a JSON file"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return f"a file of another kind (first bytes {head[:8].hex(' ')})"


def _refused_global(exc: BaseException) -> str | None:
    """The Python object a weights-only load refused (``GLOBAL numpy...``), from torch's message (never its advice)."""
    found = re.search(r"Unsupported global: (GLOBAL [\w.]+)", str(exc))
    return found.group(1) if found else None


def _damage(exc: BaseException) -> str:
    """The first sentence of a load failure that is not a refused object (truncation, bad records)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    if found:
        text = found.group(1)
    first = " ".join(text.split()).split(". ")[0].strip()
    return first or type(exc).__name__


def check_weights_file(path: str | os.PathLike, kind: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` (one line) when ``path`` is missing, a folder, unreadable or
    plainly another kind of file; the checks :func:`read_state_dict` makes before loading, without loading."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a {kind}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
        foreign = describe_file(path, head)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if foreign is not None:
        raise CheckpointError(f"{path}: not a {kind}: it is {foreign}")


def read_state_dict(path: str | os.PathLike, kind: str = "checkpoint") -> dict:
    """The dict a weights file holds, read safely (``weights_only=True``) onto the CPU.

    Args:
        path: the file.
        kind: what the caller expects, for the messages (``"reben-tools checkpoint"``,
            ``"DOFA checkpoint"`` ...).

    Raises:
        CheckpointError: missing, unreadable, another kind of file, damaged, a pickle of Python
            objects, or not a dict; one line naming ``path`` (see the module docstring).
    """
    import torch

    path = Path(path)
    check_weights_file(path, kind)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError ... for a damaged file
        refused = _refused_global(exc) if isinstance(exc, pickle.UnpicklingError) else None
        if refused is not None:
            raise CheckpointError(
                f"{path}: not a readable checkpoint: it holds Python objects beyond tensors and plain data "
                f"({refused}), which are not unpickled here; save the model's state_dict() instead"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint: the torch file is damaged or cut short ({_damage(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a {kind}: it holds a {type(state).__name__}, not a dict")
    return state
