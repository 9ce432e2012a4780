"""Read access to archives and plain reBEN LMDB directories (:class:`Archive`, :class:`BatchReader`).

Owns: opening LMDB environments read-only (shared per process, fork-safe, each shard on its
first use) after checking their data file's size (``format.envcheck``: a truncated
``data.mdb`` is refused with an error naming it instead of faulting with SIGBUS), iterating an
environment, key-to-shard resolution from ``patches.parquet`` and zero-copy batch reads.
An archive given as a store URL (``s3://...``) is read through its node-local image
(``format.shard_cache``): each shard is fetched and checked before its first use.
Does not own: writing anything (``format.shards``, ``format.metadata``, ``format.manifest``),
decoding values (``format.codec``).
May import: ``format.layout``, ``format.manifest``, ``format.envcheck``, ``format.object_store``,
``format.shard_cache``, lmdb, pyarrow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lmdb
import pyarrow.parquet as pq

from reben_tools.format.envcheck import check_data_file
from reben_tools.format.layout import (
    FLAGGED_METADATA_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    PATCHES_FILE,
    SHARDS_DIR,
    ArchiveError,
)
from reben_tools.format.manifest import read_manifest
from reben_tools.format.object_store import is_remote, is_url, local_path


def open_lmdb_readonly(path: Path, recorded_bytes: int | None = None) -> lmdb.Environment:
    """Open an LMDB environment the way reBEN readers do: read-only, no locks, no readahead.

    The data file is checked first (:func:`reben_tools.format.envcheck.check_data_file`):
    it must hold every page its meta page names, and ``recorded_bytes`` when given.

    Raises:
        TruncatedEnvironmentError: ``data.mdb`` is shorter than it must be (names the file).
        ArchiveError: no ``data.mdb``, or LMDB cannot open it.
    """
    if not (Path(path) / "data.mdb").is_file():
        raise ArchiveError(f"{path}: no data.mdb; not an LMDB environment directory")
    check_data_file(path, recorded_bytes)
    try:
        return lmdb.open(
            str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=True, max_readers=1024
        )
    except lmdb.Error as exc:
        raise ArchiveError(f"{path}: cannot open LMDB environment ({exc})") from None


@dataclass
class _SharedEnvironment:
    pid: int  # the process that opened it
    env: lmdb.Environment
    users: int = 0


_SHARED_ENVIRONMENTS: dict[str, _SharedEnvironment] = {}
"""Open read-only environments of this process, by resolved path.
py-lmdb refuses to open one environment twice in a process, so Archives over the same
files (e.g. a train and a validation dataset) share one handle."""


def _acquire_environment(path: Path, recorded_bytes: int | None = None) -> lmdb.Environment:
    key = str(Path(path).resolve())
    entry = _SHARED_ENVIRONMENTS.get(key)
    if entry is not None and entry.pid != os.getpid():
        # inherited through fork: LMDB handles must not cross a fork, and py-lmdb refuses a
        # second open while this process's copy is open, so close the copy (the parent's
        # handle is unaffected) and open afresh
        entry.env.close()
        entry = None
    if entry is None:
        entry = _SharedEnvironment(os.getpid(), open_lmdb_readonly(path, recorded_bytes))
        _SHARED_ENVIRONMENTS[key] = entry
    entry.users += 1
    return entry.env


def _release_environment(path: Path) -> None:
    key = str(Path(path).resolve())
    entry = _SHARED_ENVIRONMENTS.get(key)
    if entry is not None and entry.pid == os.getpid():
        entry.users -= 1
        if entry.users <= 0:
            entry.env.close()
            del _SHARED_ENVIRONMENTS[key]


@contextmanager
def shared_environment(path: Path, recorded_bytes: int | None = None) -> Iterator[lmdb.Environment]:
    """This process's read-only environment of ``path`` for the duration of the block.

    Shares the handle any :class:`Archive` (or dataset) of this process holds, so a verify or
    merge next to an open dataset works; the size check runs when it is first opened.
    """
    env = _acquire_environment(path, recorded_bytes)
    try:
        yield env
    finally:
        _release_environment(path)


def iter_lmdb(path: Path) -> Iterator[tuple[str, bytes]]:
    """Every (key, value) of an LMDB environment in key order."""
    env = _acquire_environment(path)  # shares a handle an Archive of this process may hold
    try:
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                yield key.decode("utf-8"), value
    finally:
        _release_environment(path)


class Archive:
    """Read access to a reben-tools archive or to a plain reBEN LMDB directory.

    Environments are opened lazily, read-only and without locks, once per process:
    an ``Archive`` built before a DataLoader forks opens fresh handles in each worker.

    Args:
        path: an archive directory (with ``manifest.json``), an LMDB directory (with ``data.mdb``),
            or the URL of an archive in a store (``s3://bucket/prefix``; read through the
            node-local cache, see ``format.shard_cache``).
        cache_dir: the cache folder for a URL (default: ``--cache-dir`` / ``$REBEN_CACHE_DIR`` /
            the user cache folder).
        cache_size: the cache bound in bytes or ``"50G"`` for a URL (default: unbounded).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: int | str | None = None,
    ) -> None:
        self.source = str(path)
        """What the archive was opened from: its folder or its URL."""
        if isinstance(path, str) and is_url(path):
            if is_remote(path):
                from reben_tools.format.shard_cache import localise_archive

                path = localise_archive(path, cache_dir, max_bytes=cache_size)
            else:
                path = local_path(path)
        self.path = Path(path)
        if (self.path / MANIFEST_FILE).is_file():
            self.manifest: dict[str, Any] | None = read_manifest(self.path)
            self.shard_names = [s["name"] for s in self.manifest["shards"]]
            self.shard_paths = [self.path / SHARDS_DIR / n for n in self.shard_names]
            self.shard_bytes: list[int | None] = [s.get("file_bytes") for s in self.manifest["shards"]]
        elif (self.path / "data.mdb").is_file():
            self.manifest = None
            self.shard_names = [self.path.name]
            self.shard_paths = [self.path]
            self.shard_bytes = [None]
        else:
            raise ArchiveError(
                f"{self.path}: neither a reben-tools archive (manifest.json) nor an LMDB directory (data.mdb)"
            )
        from reben_tools.format.shard_cache import cache_for

        self.cache = cache_for(self.path, cache_size) if self.manifest is not None else None
        """The :class:`~reben_tools.format.shard_cache.ShardCache` of an archive read from a store, else None."""
        self._pid: int | None = None
        self._envs: list[lmdb.Environment | None] = []
        self._key_shard: dict[str, int] | None = None

    @property
    def is_sharded(self) -> bool:
        return self.manifest is not None

    def metadata_paths(self, include_flagged: bool = True) -> list[Path]:
        """The reBEN metadata files inside an archive directory."""
        names = [METADATA_FILE] + ([FLAGGED_METADATA_FILE] if include_flagged else [])
        return [self.path / n for n in names]

    def _ensure_open(self) -> None:
        """This process's environments: a local archive opens (and checks) all of them on first use;
        one read from a store opens each shard on its own first use (so only shards read are fetched)."""
        if self._pid != os.getpid():
            envs: list[lmdb.Environment | None] = [None] * len(self.shard_paths)
            if self.cache is None:
                opened = 0
                try:
                    for i, (p, recorded) in enumerate(zip(self.shard_paths, self.shard_bytes, strict=True)):
                        envs[i] = _acquire_environment(p, recorded)
                        opened += 1
                except BaseException:
                    for p in self.shard_paths[:opened]:
                        _release_environment(p)
                    raise
            self._envs = envs
            self._pid = os.getpid()

    def _env(self, i: int) -> lmdb.Environment:
        """The environment of shard ``i``, opened (and, from a store, fetched and checked) on first use."""
        self._ensure_open()
        env = self._envs[i]
        if env is None:
            if self.cache is not None:
                self.cache.ensure(self.shard_names[i])
            env = self._envs[i] = _acquire_environment(self.shard_paths[i], self.shard_bytes[i])
        return env

    def prefetch(self, shards: list[int] | None = None, progress: bool = False) -> dict[str, Any] | None:
        """Fetch shards (indices into :attr:`shard_names`; None = all) of an archive read from a store
        into the cache before they are read (no-op for a local archive); returns the cache's counts.

        Raises:
            CacheFullError: they do not fit in the bounded cache.
        """
        if self.cache is None:
            return None
        indices = range(len(self.shard_names)) if shards is None else shards
        return self.cache.prefetch([self.shard_names[i] for i in indices], progress=progress)

    def check_files(self) -> None:
        """Check every shard's ``data.mdb`` size without opening it (see ``format.envcheck``).

        Shards of an archive read from a store are checked when they are fetched instead.

        Raises:
            TruncatedEnvironmentError: a shard's data file is truncated (names the file).
            ArchiveError: a shard has no readable ``data.mdb``.
        """
        if self.cache is not None:
            return
        for p, recorded in zip(self.shard_paths, self.shard_bytes, strict=True):
            check_data_file(p, recorded)

    def environments(self) -> list[lmdb.Environment]:
        """The open environments of this process, one per shard (all opened now)."""
        return [self._env(i) for i in range(len(self.shard_paths))]

    def _shard_of(self, key: str) -> int | None:
        if len(self.shard_paths) == 1:
            return 0
        if self._key_shard is None:
            self._key_shard = self._build_key_index()
        return self._key_shard.get(key)

    def _build_key_index(self) -> dict[str, int]:
        index_of = {name: i for i, name in enumerate(self.shard_names)}
        mapping: dict[str, int] = {}
        if not (self.path / PATCHES_FILE).is_file():  # e.g. an archive of S1-only values: no patch rows
            return mapping
        table = pq.read_table(self.path / PATCHES_FILE, columns=["patch_id", "s1_name", "shard"])
        for pid, s1, shard in zip(
            *(table.column(c).to_pylist() for c in ("patch_id", "s1_name", "shard")), strict=True
        ):
            i = index_of[shard]
            mapping[pid] = i
            mapping[pid + "_reference_map"] = i
            if s1:
                mapping[s1] = i
        return mapping

    def get(self, key: str) -> bytes:
        """The value stored under ``key``.

        Raises:
            KeyError: no shard holds ``key`` (the message names it).
        """
        raw = key.encode("utf-8", "surrogatepass")
        if 0 < len(raw) <= 511:  # longer keys cannot be in LMDB
            shard = self._shard_of(key)
            # a key no patch row names (an S1 patch without S2 partner) may be in any shard
            for i in [shard] if shard is not None else range(len(self.shard_paths)):
                with self._env(i).begin(buffers=False) as txn:
                    value = txn.get(raw)
                if value is not None:
                    return value
        raise KeyError(f"key {key!r} not found in archive {self.path}")

    @contextmanager
    def batch_reader(self) -> Iterator[BatchReader]:
        """Many zero-copy reads under one read transaction per shard.

        Yields a :class:`BatchReader`; each shard's transaction is opened on its first
        use and ended when the block exits. Values are memoryviews into the memory map,
        valid only inside the block: copy what you keep.
        """
        reader = BatchReader(self)
        try:
            yield reader
        finally:
            reader.close()

    def keys(self) -> Iterator[str]:
        """Every key of every shard (shard by shard, sorted within each)."""
        for i in range(len(self.shard_paths)):
            with self._env(i).begin() as txn:
                for key in txn.cursor().iternext(keys=True, values=False):
                    yield bytes(key).decode("utf-8")

    def close(self) -> None:
        """Release this Archive's environments (closed once no other reader of this process uses
        them). Reading again reopens them; closing twice is harmless."""
        if self._pid == os.getpid():
            for p, env in zip(self.shard_paths, self._envs, strict=False):  # _envs is empty before the first read
                if env is not None:
                    _release_environment(p)
        self._envs = []
        self._pid = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_envs"] = []
        state["_pid"] = None
        return state


class BatchReader:
    """Zero-copy gets reusing one ``buffers=True`` read transaction per shard (see :meth:`Archive.batch_reader`)."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._txns: list[lmdb.Transaction | None] = [None] * len(archive.shard_paths)

    def get(self, key: str | bytes, shard: int | None = None) -> memoryview:
        """The value under ``key`` as a memoryview valid until the reader closes.

        Args:
            key: the archive key (str, or its UTF-8 bytes).
            shard: index of the shard holding the key (``Archive.shard_names`` order) when the
                caller knows it; otherwise it is looked up from ``patches.parquet``.

        Raises:
            KeyError: no shard holds ``key`` (the message names it).
        """
        raw = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else bytes(key)
        if not 0 < len(raw) <= 511:  # no LMDB key is empty or longer
            shard = None
        elif shard is None:
            shard = self._archive._shard_of(raw.decode("utf-8", "surrogatepass"))
            if shard is None:  # no patch row names it: it may be in any shard
                for i in range(len(self._txns)):
                    value = self._get(i, raw)
                    if value is not None:
                        return value
        if shard is not None:
            value = self._get(shard, raw)
            if value is not None:
                return value
        raise KeyError(f"key {raw.decode('utf-8', 'replace')!r} not found in archive {self._archive.path}")

    def _get(self, shard: int, raw: bytes) -> memoryview | None:
        txn = self._txns[shard]
        if txn is None:
            txn = self._txns[shard] = self._archive._env(shard).begin(buffers=True)
        return cast("memoryview | None", txn.get(raw))  # a buffers=True transaction gives memoryviews

    def close(self) -> None:
        for txn in self._txns:
            if txn is not None:
                txn.abort()
        self._txns = [None] * len(self._txns)
