"""Size checks of an LMDB data file before it is memory-mapped.

LMDB maps ``data.mdb`` into memory; reading a page past the end of a truncated file raises
SIGBUS and kills the process (or a DataLoader worker) with no message. So every read-only
environment is checked before it is opened:

* the file must hold both meta pages, and one of them must be valid (magic ``0xBEEFC0DE``,
  version 1, a power-of-two page size);
* the file must hold every page the newest valid meta page says is used:
  ``(last_used_page + 1) * page_size`` bytes;
* for an archive's shard, also the ``file_bytes`` the manifest recorded.

Meta page layout (``mdb.c``, 64-bit builds, little-endian): a 16-byte page header, then
``MDB_meta``: magic (u32) at +0, version (u32) +4, address (8) +8, map size (8) +16,
two ``MDB_db`` records of 48 bytes from +24 (the first one's ``md_pad`` u32 holds the page
size), last used page number (u64) +120, transaction id (u64) +128. Meta page 0 starts at
byte 0, meta page 1 at byte ``page_size``; LMDB uses the one with the higher transaction id.

Owns: :class:`TruncatedEnvironmentError`, :func:`lmdb_required_bytes`, :func:`check_data_file`.
Does not own: opening environments (``format.reader``), the manifest (``format.manifest``).
May import: ``format.layout`` and the standard library.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from reben_tools.format.layout import ArchiveError

LMDB_MAGIC = 0xBEEFC0DE
"""``MDB_MAGIC``: the first word of a valid meta page."""

_PAGE_HEADER = 16
_MIN_PAGE, _MAX_PAGE = 512, 65536
_META_BYTES = _PAGE_HEADER + 136


class TruncatedEnvironmentError(ArchiveError):
    """An LMDB data file is shorter than it must be (opening it would fault with SIGBUS).

    Attributes:
        path: the ``data.mdb`` file.
        size: its size in bytes.
        required: the bytes it must hold (None when not even its meta pages are readable).
    """

    def __init__(self, path: Path, size: int, required: int | None, why: str) -> None:
        self.path = Path(path)
        self.size = size
        self.required = required
        super().__init__(f"{path}: truncated LMDB data file ({size} bytes; {why})")

    def __reduce__(self) -> tuple[Callable[..., TruncatedEnvironmentError], tuple[str, int, int | None, str]]:
        # picklable, so a DataLoader worker can hand it to the main process
        return (_rebuild, (str(self.path), self.size, self.required, str(self)))


def _rebuild(path: str, size: int, required: int | None, message: str) -> TruncatedEnvironmentError:
    error = TruncatedEnvironmentError.__new__(TruncatedEnvironmentError)
    ArchiveError.__init__(error, message)
    error.path, error.size, error.required = Path(path), size, required
    return error


def _read_meta(head: bytes, offset: int) -> tuple[int, int, int] | None:
    """(page size, last used page, txn id) of the meta page at ``offset``, or None if invalid."""
    if len(head) < offset + _META_BYTES:
        return None
    magic, version = struct.unpack_from("<II", head, offset + _PAGE_HEADER)
    page_size = struct.unpack_from("<I", head, offset + _PAGE_HEADER + 24)[0]
    last_page, txn_id = struct.unpack_from("<QQ", head, offset + _PAGE_HEADER + 120)
    if magic != LMDB_MAGIC or version != 1:
        return None
    if not _MIN_PAGE <= page_size <= _MAX_PAGE or page_size & (page_size - 1):
        return None
    return page_size, last_page, txn_id


def lmdb_required_bytes(data_file: str | os.PathLike[str]) -> int:
    """Bytes an LMDB data file must hold: ``(last used page + 1) * page size`` of its current meta page.

    Args:
        data_file: path of a ``data.mdb`` file.

    Returns:
        The required size in bytes (>= 2 pages).

    Raises:
        TruncatedEnvironmentError: the file is too short to hold its two meta pages, or
            holds no valid meta page.
        ArchiveError: the file cannot be read.
    """
    path = Path(data_file)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            first = fh.read(_META_BYTES)
            meta0 = _read_meta(first, 0)
            page_size = meta0[0] if meta0 is not None else None
            candidates = [meta0] if meta0 is not None else []
            sizes = [page_size] if page_size else [1 << k for k in range(9, 17)]
            for psize in sizes:  # meta page 1 lies one page further
                fh.seek(psize)
                meta1 = _read_meta(fh.read(_META_BYTES), 0)
                if meta1 is not None and meta1[0] == psize:
                    candidates.append(meta1)
                    break
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read LMDB data file ({exc})") from None
    if not candidates:
        raise TruncatedEnvironmentError(path, size, None, "no valid LMDB meta page")
    page_size, last_page, _ = max(candidates, key=lambda m: m[2])
    required = max(last_page + 1, 2) * page_size
    return required


def check_data_file(env_dir: str | os.PathLike[str], recorded_bytes: int | None = None) -> int:
    """Refuse an LMDB environment whose ``data.mdb`` is shorter than it must be.

    Args:
        env_dir: the environment directory (holding ``data.mdb``).
        recorded_bytes: the file size a manifest recorded (``file_bytes``), if any.

    Returns:
        The file's size in bytes.

    Raises:
        TruncatedEnvironmentError: the file is shorter than its meta pages require, or than
            ``recorded_bytes``; the message names the file and both sizes.
        ArchiveError: there is no readable ``data.mdb``.
    """
    path = Path(env_dir) / "data.mdb"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read LMDB data file ({exc})") from None
    if recorded_bytes is not None and size < recorded_bytes:
        raise TruncatedEnvironmentError(path, size, recorded_bytes, f"the manifest records {recorded_bytes} bytes")
    required = lmdb_required_bytes(path)
    if size < required:
        raise TruncatedEnvironmentError(path, size, required, f"its LMDB meta page needs {required} bytes")
    return size
