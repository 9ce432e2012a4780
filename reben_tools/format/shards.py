"""Shards: one plain LMDB environment per directory, written atomically and reproducibly.

A shard is written into a temporary directory and renamed into place, so a
shard directory under ``shards/`` is always complete. Keys are inserted in
sorted order and the map size is derived from the content, so the same items
give a byte-identical ``data.mdb``.

Owns: :class:`ShardInfo`, :class:`ContentDigest`, file digests of a shard's files, LMDB map
sizing, writing an LMDB environment and a shard (with ``shard.json``, ``keys.parquet``,
``rows.parquet``), reading ``shard.json``, removing an interrupted writer's temporaries.
Does not own: reading values (``format.reader``), the manifest (``format.manifest``),
metadata files (``format.metadata``), value encoding (``format.codec``).
May import: ``format.layout``, ``format.atomic``, lmdb, pyarrow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.format.atomic import fsync_dir, write_json_atomic
from reben_tools.format.layout import (
    ARCHIVE_FILES,
    SHARD_INFO_FILE,
    SHARD_KEYS_FILE,
    SHARD_ROWS_FILE,
    ArchiveError,
)

LMDB_PAGE = 4096


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of a shard.

    Attributes:
        name: directory name under ``shards/``.
        entries: number of keys.
        value_bytes: sum of the value sizes in bytes.
        sha256: hex digest over the sorted (key, value) stream, see :func:`content_digest`.
        file_bytes: size of ``data.mdb`` in bytes.
        files: ``{file name: {"bytes": size, "sha256": hex digest of the file}}`` of every file of
            the shard directory but ``shard.json`` (``data.mdb``, ``keys.parquet``, ``rows.parquet``
            when written); what an upload and a node-local copy are checked against before use
            (see ``format.object_store``, ``format.shard_cache``). None in shards written before
            it was recorded.
    """

    name: str
    entries: int
    value_bytes: int
    sha256: str
    file_bytes: int
    files: dict[str, dict[str, int | str]] | None = None

    __hash__ = None  # type: ignore[assignment]  # holds a dict: unhashable on purpose, as for any dataclass(eq=True)


class ContentDigest:
    """sha256 over ``len(key) u32 | key | len(value) u64 | value`` for keys in sorted order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, key: bytes, value: bytes | memoryview) -> None:
        self._hash.update(struct.pack("<I", len(key)))
        self._hash.update(key)
        self._hash.update(struct.pack("<Q", len(value)))
        self._hash.update(value)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_digest(path: Path, chunk: int = 1 << 22) -> dict[str, int | str]:
    """``{"bytes": size, "sha256": hex}`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def shard_file_digests(shard_dir: Path) -> dict[str, dict[str, int | str]]:
    """:func:`file_digest` of every file of a shard directory but ``shard.json``, by name (sorted)."""
    return {
        p.name: file_digest(p)
        for p in sorted(shard_dir.iterdir())
        if p.is_file() and p.name != SHARD_INFO_FILE and not p.name.startswith(".")
    }


def map_size_for(items: Iterable[tuple[bytes, bytes | memoryview]]) -> int:
    """A deterministic LMDB map size that fits ``items`` (values go to overflow pages)."""
    pages = 0
    for key, value in items:
        pages += (len(key) + len(value) + 64) // LMDB_PAGE + 2
    return max(pages * LMDB_PAGE * 2, 1 << 24)


def _sorted_encoded(items: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> list[tuple[bytes, bytes]]:
    pairs = items.items() if isinstance(items, Mapping) else items
    encoded: dict[bytes, bytes] = {}
    for key, value in pairs:
        raw_key = key.encode("utf-8")
        if not 0 < len(raw_key) <= 511:
            raise ArchiveError(f"key {key[:80]!r} is {len(raw_key)} bytes; LMDB keys must be 1..511 bytes")
        if raw_key in encoded and encoded[raw_key] != bytes(value):
            raise ArchiveError(f"key {key!r} given twice with different values")
        encoded[raw_key] = bytes(value)
    return sorted(encoded.items())


def write_lmdb(
    path: Path, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], keys_file: str | None = None
) -> ShardInfo:
    """Write ``items`` into a new LMDB environment directory ``path`` in sorted key order.

    ``path`` must not exist. Not atomic on its own: see :func:`write_shard`.
    With ``keys_file``, also writes ``path/keys_file``: a parquet table of
    ``key, value_bytes, crc32`` (CRC-32 of each value) in key order.
    """
    pairs = _sorted_encoded(items)
    path.mkdir(parents=True)
    digest = ContentDigest()
    checksums = []
    env = lmdb.open(str(path), map_size=map_size_for(pairs), subdir=True, lock=False, sync=True, metasync=True)
    try:
        with env.begin(write=True) as txn:
            cursor = txn.cursor()
            for key, value in pairs:
                cursor.put(key, value, append=True)
                digest.update(key, value)
                if keys_file:
                    checksums.append(zlib.crc32(value))
        env.sync(True)
    finally:
        env.close()
    if keys_file:
        keys_table = pa.table(
            {
                "key": pa.array([k.decode("utf-8") for k, _ in pairs], pa.string()),
                "value_bytes": pa.array([len(v) for _, v in pairs], pa.int64()),
                "crc32": pa.array(checksums, pa.int64()),
            }
        )
        pq.write_table(keys_table, path / keys_file)
    return ShardInfo(
        name=path.name,
        entries=len(pairs),
        value_bytes=sum(len(v) for _, v in pairs),
        sha256=digest.hexdigest(),
        file_bytes=(path / "data.mdb").stat().st_size,
    )


def write_shard(
    shards_dir: Path,
    name: str,
    items: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    rows: pa.Table | None = None,
) -> ShardInfo:
    """Write one shard atomically: into ``shards_dir/.tmp-*`` first, then rename to ``shards_dir/name``.

    Also writes ``shard.json`` (the returned :class:`ShardInfo`, with the size and sha256 of
    every other file of the shard), ``keys.parquet`` (per-key
    size and CRC-32, see :func:`write_lmdb`) and, when given,
    ``rows.parquet`` (the patch rows this shard's writer produced) inside the shard
    directory, so a shard and its rows appear together or not at all. An existing
    shard of that name is replaced.
    """
    if "/" in name or name.startswith(".") or not name:
        raise ArchiveError(f"invalid shard name {name!r}")
    shards_dir.mkdir(parents=True, exist_ok=True)
    tmp = shards_dir / f".tmp-{name}-{uuid.uuid4().hex}"
    try:
        info = write_lmdb(tmp, items, keys_file=SHARD_KEYS_FILE)
        if rows is not None:
            pq.write_table(rows, tmp / SHARD_ROWS_FILE)
        info = ShardInfo(**{**asdict(info), "name": name, "files": shard_file_digests(tmp)})
        write_json_atomic(tmp / SHARD_INFO_FILE, asdict(info))
        final = shards_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(shards_dir)
    except (OSError, lmdb.Error, pa.ArrowException) as exc:
        # a full disk (ENOSPC, or EFBIG past a file-size limit) or an I/O error: nothing of
        # the shard is left in place, and the message names the shard
        full = isinstance(exc, lmdb.Error) or getattr(exc, "errno", None) in (
            errno.ENOSPC,
            errno.EFBIG,
            errno.EDQUOT,
            errno.EIO,
        )
        hint = "; is the disk full?" if full else ""
        raise ArchiveError(f"{shards_dir / name}: cannot write shard ({type(exc).__name__}: {exc}{hint})") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def read_shard_info(shard_dir: Path) -> ShardInfo:
    """The ShardInfo a finished shard carries; raises ArchiveError naming the file if unreadable."""
    path = shard_dir / SHARD_INFO_FILE
    try:
        return ShardInfo(**json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ArchiveError(f"{path}: cannot read shard info ({exc})") from None


def remove_stale_temporaries(shards_dir: Path) -> list[Path]:
    """Delete ``.tmp-*`` shard directories an interrupted writer left behind; returns them.

    Also deletes (without returning them) the temporary files of interrupted atomic writes
    of the archive-level files next to ``shards_dir`` (``.manifest.json.tmp-*`` etc.), so a
    resumed run leaves no trace of the interrupted one."""
    removed = []
    if shards_dir.is_dir():
        for tmp in sorted(shards_dir.glob(".tmp-*")):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    for name in ARCHIVE_FILES:
        for tmp in shards_dir.parent.glob(f".{name}.tmp-*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
    return removed
