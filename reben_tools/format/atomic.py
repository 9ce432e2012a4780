"""Atomic file writes: a temporary sibling file, then a rename onto the final path.

A reader never sees a half-written file; an interrupted write leaves at most a
``.<name>.tmp-<uuid>`` file (see :func:`reben_tools.format.shards.remove_stale_temporaries`).

Owns: :func:`replaced_atomically`, :func:`write_json_atomic`, :func:`write_parquet_atomic`,
:func:`save_figure_atomic`, :func:`fsync_dir`.
Does not own: what is written (archive layout, schemas: the other ``format`` modules).
May import: the standard library and pyarrow (matplotlib for type hints only).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def fsync_dir(path: Path) -> None:
    """Flush the directory entry of ``path`` (a directory) to disk, so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling ``.<name>.tmp-<uuid>`` of ``path`` to write; when the block
    exits normally, rename it onto ``path``. The temporary file never outlives the block.

    The clean-up never raises on top of the block's own error: in a folder that cannot be
    written (read-only file system) removing the temporary file fails too, and the first error
    (which names the folder's problem) is the one to report.
    """
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write a parquet file through a temporary file and a rename."""
    with replaced_atomically(path) as tmp:
        pq.write_table(table, tmp)


def save_figure_atomic(figure: Figure, path: Path, **savefig_options: Any) -> None:
    """Save a matplotlib Figure to ``path`` through a temporary file and a rename.

    The image format follows ``path``'s suffix (PNG when it has none); ``savefig_options`` go
    to ``Figure.savefig`` (e.g. ``dpi``). The caller still owns (and closes) the figure.
    """
    path = Path(path)
    with replaced_atomically(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_options)
