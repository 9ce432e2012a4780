"""Where a command may write: never into an existing archive's own files.

An archive directory is recognised by its ``manifest.json``, or, while a build or encode
is still writing it, by its ``shards/`` folder next to ``metadata.parquet`` or
``patches.parquet``. Its own files are the names in :data:`ARCHIVE_FILES`, everything under
``shards/`` and the lock file; a new file or folder elsewhere inside the archive directory
(e.g. ``ARCHIVE/audit/``) is not one of them.

Every command output that is not the archive the command is made to write (``reben build``,
``reben encode``) goes through :func:`check_output_path`, so ``reben split --out
ARCHIVE/metadata.parquet`` or ``reben audit ARCHIVE --out ARCHIVE`` is refused with one line
instead of replacing the archive's metadata or report.

Owns: :func:`find_archive`, :func:`check_output_path`, :class:`ArchiveOverwriteError`.
Does not own: the archive layout names (``format.layout``), the writer lock (``format.locking``).
May import: ``format.layout``, ``format.locking`` and the standard library.
"""

from __future__ import annotations

from pathlib import Path

from reben_tools.format.layout import ARCHIVE_FILES, MANIFEST_FILE, METADATA_FILE, PATCHES_FILE, SHARDS_DIR
from reben_tools.format.locking import LOCK_FILE

_OWN_ENTRIES = frozenset((*ARCHIVE_FILES, SHARDS_DIR, LOCK_FILE))


class ArchiveOverwriteError(ValueError):
    """An output path names an existing archive or one of its files; the message names both."""


def is_archive_dir(path: Path) -> bool:
    """Whether ``path`` is an archive directory (finished, or being written)."""
    if not path.is_dir():
        return False
    if (path / MANIFEST_FILE).is_file():
        return True
    return (path / SHARDS_DIR).is_dir() and ((path / METADATA_FILE).is_file() or (path / PATCHES_FILE).is_file())


def find_archive(path: str | Path) -> tuple[Path, Path | None] | None:
    """The archive directory that ``path`` is, or holds ``path`` among its own files.

    Returns:
        ``(archive_dir, own_entry)``: ``own_entry`` is the archive's top-level entry that
        ``path`` lies in (``metadata.parquet``, ``shards``, ...), None when ``path`` is the
        archive directory itself; None when ``path`` is no archive's own file.
    """
    path = Path(path).expanduser().resolve()
    if is_archive_dir(path):
        return path, None
    for depth, parent in enumerate(path.parents):
        if is_archive_dir(parent):
            entry = path.relative_to(parent).parts[0]
            return (parent, parent / entry) if entry in _OWN_ENTRIES else None
        if depth > 64:
            break
    return None


def check_output_path(path: str | Path, what: str = "output") -> None:
    """Refuse an output that is an existing archive directory or one of its own files.

    Args:
        path: the file or directory a command is about to write.
        what: how the message names the output (``"--out"``).

    Raises:
        ArchiveOverwriteError: one line naming the path and the archive.
    """
    found = find_archive(path)
    if found is None:
        return
    archive, entry = found
    if entry is None:
        raise ArchiveOverwriteError(
            f"{path}: {what} is the archive {archive} itself; refusing to write into it (choose a new path)"
        )
    raise ArchiveOverwriteError(
        f"{path}: {what} is the archive {archive}'s own {entry.name}; refusing to overwrite it (choose a path outside the archive)"
    )
